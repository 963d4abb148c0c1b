"""A new RL loss in one place (issue 12): a REINFORCE-style loss with one typed option is
registered only inside this module, gets an RL config without any file in configs/, runs one
jitted RL step whose loss equals a hand computation, and its bad options are one-line errors
naming the config key."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from agentic_jax.objectives import rl
from agentic_jax.objectives import rl_losses
from agentic_jax.rl import config as rl_config
from agentic_jax.rl import step as step_lib
from agentic_jax.train import config as config_lib
from tests.rl_fixtures import VOCAB, make_batch, np_logp, pack, setup
from tests.train_fixtures import SMALL_MODEL

NAME = "test_reinforce"


@dataclasses.dataclass(frozen=True)
class ReinforceOptions(rl.PolicyOptions):
  """The shared knobs with this loss's defaults (A = R - group mean, token mean, no KL) and
  its one option."""
  advantage: str = "dr_grpo"
  std_norm: bool = False
  agg: str = "token-mean"
  scale: float = rl.option(1.0, check=lambda v: v > 0, expect="a number > 0")


def reinforce_loss(logp, old_logp, advantages, mask, *, options, sample_mask=None,
                   group_id=None, traj_id=None, token_weights=None, **unused):
  """-scale * sum(W * A * logp): the policy gradient without ratios or clipping."""
  del old_logp, unused
  m = jnp.asarray(mask, jnp.float32)
  if sample_mask is not None:
    m = m * jnp.asarray(sample_mask, jnp.float32)[:, None]
  if token_weights is None:
    w = rl.aggregation_weights(m, options.agg, sample_mask=sample_mask, group_id=group_id,
                               traj_id=traj_id, norm_constant=options.norm_constant,
                               norm_over_seqs=options.norm_over_seqs)
  else:
    w = token_weights * m
  a = jnp.asarray(advantages, jnp.float32)[:, None]
  pg = -options.scale * jnp.sum(w * a * jnp.where(m > 0, logp, 0.0))
  return pg, {"pg_loss": pg, "loss": pg, "num_tokens": jnp.sum(m)}


@pytest.fixture
def reinforce():
  spec = rl.register_loss(rl.LossSpec(
      name=NAME, fn=reinforce_loss, options=ReinforceOptions, batch_mode="trajectory",
      default_preset="plain", presets={"plain": {}, "half": {"scale": 0.5}}))
  yield spec
  rl.unregister_loss(NAME)


def _config(**over):
  """The RL config of the test loss, built by the library from a model section alone."""
  model = config_lib.model_section("longcat_flash_tiny", **{**SMALL_MODEL, "layer_type": "dense"})
  config = rl_config.rl_config(NAME, model=model, tokenizer_vocab=VOCAB)
  config.rl.ppo_epochs, config.rl.minibatches = 1, 1
  config.optim.lr = 1e-3
  for k, v in over.items():
    node = config
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return config


def test_registered_loss_gets_config_choices_and_options(reinforce):
  assert NAME in rl_config.losses() and NAME in rl.PRESETS
  config = _config()
  assert config.rl.loss == NAME and config.rl.preset == "plain"
  assert config.rl.batch_mode == reinforce.batch_mode
  assert config.rl.loss_options.scale is None  # a typed placeholder: None = the default
  obj = rl_config.check_rl_config(config, num_devices=1)
  assert isinstance(obj.options, ReinforceOptions) and obj.options.scale == 1.0
  config.rl.preset = "half"
  assert rl_config.check_rl_config(config, num_devices=1).options.scale == 0.5
  config.rl.loss_options.scale = 2  # an int for a float option is stored as a float
  assert rl_config.objective(config).options.scale == 2.0


def test_one_jitted_step_equals_hand_computation(reinforce):
  del reinforce
  config = _config(**{"rl.loss_options.scale": 2.0})
  config.lock()
  objective = rl_config.check_rl_config(config, num_devices=1)
  model_cfg, state, ref = setup(config, seed=2)
  rows = [dict(group=0, traj=0, reward=1.0, mask=[0, 0, 1, 1, 1, 0, 0, 0]),
          dict(group=0, traj=1, reward=0.0, mask=[0, 1, 1, 0, 0, 0, 0, 0]),
          dict(group=1, traj=0, reward=0.5, mask=[0, 0, 0, 1, 1, 1, 1, 0]),
          dict(group=1, traj=1, reward=0.0, mask=[0, 0, 1, 0, 0, 0, 0, 0]),
          dict(group=1, traj=2, reward=1.0, mask=[0, 0, 1, 1, 0, 0, 0, 0], valid=False)]
  b = make_batch(rows, seed=5)
  step = jax.jit(step_lib.make_rl_step(model_cfg, config, objective))
  new_state, metrics = step(state, ref, pack(b, row_bucket=4))
  logp = np_logp(model_cfg, step_lib.variables_of(state.params, state.router_state), b)
  adv = np.array([0.5, -0.5, 0.25, -0.25, 0.0])  # R - group mean over the valid rows
  m = b["mask"].astype(np.float64) * b["sample_mask"][:, None]
  expected = -2.0 * np.sum(m * adv[:, None] * logp) / m.sum()  # scale 2, token mean
  assert abs(expected) > 1e-3  # not vacuous
  assert float(metrics["first_loss"]) == pytest.approx(expected, rel=1e-5, abs=1e-7)
  assert int(metrics["updates"]) == 1 and int(new_state.step) == 1
  assert float(metrics["clip_frac"]) == 0.0 and float(metrics["kl"]) == 0.0  # not reported


def _one_line_error(config, key):
  with pytest.raises(ValueError) as info:
    rl_config.check_rl_config(config, num_devices=1)
  msg = str(info.value)
  assert "\n" not in msg and msg.startswith(f"config.{key}: "), msg
  assert "--" not in msg  # names the config key, never a command-line flag
  return msg


def test_bad_options_are_one_line_errors_naming_the_key(reinforce):
  del reinforce
  config = _config()
  config.rl.loss_options = ml_collections.ConfigDict({"scale": "big"})  # a config file's value
  msg = _one_line_error(config, "rl.loss_options.scale")
  assert "must be a number, got 'big'" in msg
  config = _config(**{"rl.loss_options.scale": -1.0})
  assert "must be a number > 0, got -1.0" in _one_line_error(config, "rl.loss_options.scale")
  config = _config(**{"rl.loss_options.clip_eps_low": 0.1})  # another loss's option
  msg = _one_line_error(config, "rl.loss_options.clip_eps_low")
  assert f"not an option of loss {NAME!r}" in msg and "'scale'" in msg
  config = _config(**{"rl.loss_options.agg": "mean"})
  assert "must be one of" in _one_line_error(config, "rl.loss_options.agg")
  config = _config(**{"rl.preset": "paper"})
  assert "unknown preset 'paper'" in _one_line_error(config, "rl.preset")
  config = _config(**{"rl.loss": "reinforce"})
  _one_line_error(config, "rl.loss")


def test_registration_is_checked():
  def spec(**over):
    kw = dict(name="test_bad", fn=reinforce_loss, options=ReinforceOptions, batch_mode="turn",
              default_preset="plain", presets={"plain": {}})
    return rl.LossSpec(**{**kw, **over})

  with pytest.raises(ValueError, match="default_preset 'paper'"):
    rl.register_loss(spec(default_preset="paper"))
  with pytest.raises(ValueError, match="preset 'bad'.*'scale' must be a number > 0"):
    rl.register_loss(spec(presets={"plain": {}, "bad": {"scale": 0.0}}))
  with pytest.raises(ValueError, match="batch_mode"):
    rl.register_loss(spec(batch_mode="episode"))

  @dataclasses.dataclass(frozen=True)
  class Clash(rl.PolicyOptions):
    clip_eps_low: int = 1  # a float in the clipped losses: one config section cannot hold both

  with pytest.raises(TypeError, match="clip_eps_low"):
    rl.register_loss(spec(options=Clash))
  with pytest.raises(ValueError, match="already registered"):
    rl.register_loss(spec(name="grpo"))
  assert "test_bad" not in rl.registered_losses()
  assert set(rl_losses.BASE_OPTIONS) == set(rl.rl_loss("grpo").options)
