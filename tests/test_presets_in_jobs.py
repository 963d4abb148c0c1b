"""Issue 17 item 4: the new presets train through the existing jobs by choosing the preset
(`config.model = model_section(PRESET, ...)`, what configs/midtrain.py's iquest variants do):
mid-training (train/loop.py), Flow-GRPO RL on the calculator from that mid-training run
(rl/loop.py via configs/flow_grpo.py:tiny,init_from=WORKDIR, the documented command) and the RA3
job (rl/ra3.py, one E-step and one M-step).

Presets: iquest_loop_tiny (GQA, two loops, window 4: the rollouts decode through LoopCache's
window rings), iquest_coder_tiny (plain GQA) and longcat_flash_tiny with num_mtp_layers=1 (the
MTP term in the mid-training loss). What would fail if a preset fell back to another model: the
checkpoints hold the preset's own parameters (loop gates, GQA K/V heads, the MTP module), RL
takes exactly the mid-trained model and params, the rollouts' sampled log-probs equal a
no-cache forward of that model (for the Loop on contexts longer than its window, where a model
without the window gives other numbers), and every loss and reward is finite.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from agentic_jax import models
from agentic_jax.rl import loop as rl_loop
from agentic_jax.rl import ra3
from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import init_from as init_from_lib
from agentic_jax.train import loop as mt_loop
from tests.train_fixtures import MIDTRAIN, ROOT

VOCAB = 400  # conftest's tokenizer_path: a 400-piece tokenizer of calculator samples

# name -> (preset, overrides): the presets with one layer (compiling is most of each job's time
# on the CPU), the MoE one with exact (dropless) dispatch, so that the rollouts' log-probs and the
# training forward agree
_SMALL = dict(vocab_size=VOCAB, num_layers=1)
PRESETS = {
    "iquest_loop_tiny": ("iquest_loop_tiny", _SMALL),
    "iquest_coder_tiny": ("iquest_coder_tiny", _SMALL),
    "longcat_flash_tiny_mtp": ("longcat_flash_tiny", dict(_SMALL, num_mtp_layers=1,
                                                          moe_dispatch="dropless",
                                                          dropless_block_size=16)),
}


def _signature(name: str, params: dict) -> None:
  """The parameters only this preset has."""
  flat = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(params).items()}
  layer0 = {k.split("/", 1)[1]: s for k, s in flat.items() if k.startswith("layers_0/")}
  if name.startswith("iquest"):
    assert layer0["self_attn/k_proj/kernel"] == (64, 2, 16)  # 2 K/V heads of 4 query heads
    assert ("loop_gate/weight" in layer0) == (name == "iquest_loop_tiny")
  else:
    assert "self_attn_1/kv_b_proj/kernel" in layer0  # ScMoE: two MLA sublayers
    assert any(k.startswith("mtp/layers_0/eh_proj") for k in flat)


def _records(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


# ------------------------------------------------------------------ mid-training

def _midtrain_config(name: str):
  """configs/midtrain.py:tiny with the preset, on synthetic rows (batch 2 x 64), 3 steps."""
  c = config_lib.load_config(MIDTRAIN + ":tiny")
  c.unlock()
  c.model = config_lib.model_section(PRESETS[name][0], **PRESETS[name][1])
  if PRESETS[name][0].startswith("iquest"):  # no router to balance (as configs/midtrain.py's
    c.moe.bias_update = "none"              # iquest variants)
    c.objective.balance_loss = "none"
  c.data.synthetic = True
  c.data.batch_size, c.data.seq_len = 2, 64
  c.train.num_steps, c.train.log_every, c.train.progress, c.train.eval_every = 3, 1, False, 0
  c.optim.warmup_steps = 1
  c.checkpoint.every = 100
  c.lock()
  return c


@pytest.fixture(scope="module")
def midtrained(tmp_path_factory, tokenizer_path):
  """name -> (config, WORKDIR) of a finished 3-step mid-training run, run once per preset. Its
  data are synthetic rows of the 400-piece tokenizer's ids; that tokenizer is put beside the
  checkpoints, as a run that trains its tokenizer leaves it, for the jobs that start from it."""
  done: dict[str, str] = {}

  def get(name):
    if name not in done:
      wd = str(tmp_path_factory.mktemp(f"mt_{name}"))
      out = mt_loop.run(_midtrain_config(name), wd, handle_signals=False)
      assert out["status"] == "completed" and out["final_step"] == 3, out
      shutil.copy(tokenizer_path, os.path.join(wd, "tokenizer.model"))
      done[name] = wd
    return _midtrain_config(name), done[name]
  return get


@pytest.mark.parametrize("name", list(PRESETS))
def test_midtraining(name, midtrained):
  config, wd = midtrained(name)
  recs = _records(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in recs] == [1, 2, 3]
  for r in recs:
    # an untrained model's loss is about ln V: a finite number near it, not 0 or nan
    assert 0.5 * math.log(VOCAB) < r["loss"] < 2 * math.log(VOCAB), r
    if name.endswith("_mtp"):  # the MTP term's cross-entropy, per depth (one here)
      assert r["mtp_loss"] == r["mtp_loss/depth_1"], r
      assert 0.5 * math.log(VOCAB) < r["mtp_loss"] < 2 * math.log(VOCAB), r
      assert "mtp_loss/depth_2" not in r
    else:
      assert not any(k.startswith("mtp_loss") for k in r), r
  model_cfg = config_lib.model_config(config.model)
  variables, step, _ = init_from_lib.load(wd, model_cfg, config.model.to_dict(),
                                          say=lambda _: None)
  assert step == 3
  _signature(name, variables["params"])


# ------------------------------------------------------------------ RL

def _rl_config(midtrain_wd: str):
  """configs/flow_grpo.py:tiny,init_from=WORKDIR (model, params and tokenizer are the
  mid-training run's), shrunk: 2 tasks x 2 rollouts of up to 2 turns, 1 step, the old
  log-probs recomputed by a forward."""
  c = config_lib.load_config(os.path.join(ROOT, "configs", "flow_grpo.py")
                             + f":tiny,init_from={midtrain_wd}")
  c.unlock()
  r = c.rl
  r.tasks_per_step, r.group_size, r.max_turns, r.eval_max_turns = 2, 2, 2, 2
  r.max_new_tokens, r.max_context_tokens, r.seq_len = 12, 308, 320
  r.row_bucket, r.sample_bucket, r.minibatches, r.eval_tasks = 4, 2, 1, 0
  r.old_logp = "recompute"  # old_logp_diff_max: sampler (cached decode) vs full forward
  c.train.num_steps, c.train.progress = 1, False
  c.checkpoint.every = 100
  c.lock()
  return c


def _logp_no_cache(model_cfg, variables, context, response):
  tokens = np.concatenate([context, response]).astype(np.int32)[None]
  logits = models.build(model_cfg).apply(variables, jnp.asarray(tokens))
  logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), -1)
  at = np.arange(len(context) - 1, tokens.shape[1] - 1)
  return np.asarray(logp)[at, response]


@pytest.mark.parametrize("name", list(PRESETS))
def test_flow_grpo_from_the_midtraining_run(name, midtrained, tmp_path, monkeypatch):
  mt_config, mt_wd = midtrained(name)
  config = _rl_config(mt_wd)
  model_cfg = config_lib.model_config(config.model)
  want = config_lib.model_config(mt_config.model)
  own = {k: getattr(model_cfg, k) for k in config_lib.COMPUTE_FIELDS}
  assert model_cfg == want.replace(**own)  # the mid-trained model, the config's compute fields
  seen = []
  real = rl_loop._episodes  # pylint: disable=protected-access

  def recording(*args, **kwargs):
    eps = real(*args, **kwargs)
    seen.append(eps)
    return eps

  monkeypatch.setattr(rl_loop, "_episodes", recording)
  out = rl_loop.run(config, str(tmp_path), handle_signals=False)
  assert out["status"] == "completed" and out["final_step"] == 1
  init_vars, init_step, _ = init_from_lib.load(mt_wd, model_cfg, config.model.to_dict(),
                                               say=lambda _: None)
  assert init_step == 3
  assert out["init"]["fingerprint"] == [int(x) for x in ckpt_lib.fingerprint(init_vars)]
  (rec,) = _records(os.path.join(str(tmp_path), "metrics.jsonl"))
  assert rec["skipped"] == 0 and rec["updates"] == 1 and np.isfinite(rec["loss"])
  assert rec["samples"] >= 4 and np.isfinite(rec["reward_mean"]) and np.isfinite(rec["kl"])
  # every sampled token's log-prob (cached decode) == a forward of the current params
  assert rec["old_logp_diff_max"] < 1e-3, rec["old_logp_diff_max"]
  (episodes,) = seen
  assert len(episodes) == 4 and all(np.isfinite(e.reward) for e in episodes)
  if name == "iquest_loop_tiny":
    # one rollout turn against a no-cache forward of the mid-trained params, here; the window
    # mattered: a model without it gives other numbers for the same tokens
    turn = episodes[0].turns[0]
    assert len(turn.context) > model_cfg.loop_window_size
    ref = _logp_no_cache(model_cfg, init_vars, turn.context, turn.response)
    np.testing.assert_allclose(turn.logprobs, ref, atol=1e-3)
    wide = _logp_no_cache(model_cfg.replace(loop_window_size=4096), init_vars, turn.context,
                          turn.response)
    assert np.max(np.abs(wide - ref)) > 1e-2


# ------------------------------------------------------------------ RA3

def _ra3_config(midtrain_wd: str):
  """configs/ra3.py:tiny,init_from=WORKDIR (the mid-training run is the base model: its model in
  both sections, its params and tokenizer), shrunk: the ra3 arm only, one round of one E-step
  (2 proposals) and one M-step; evaluation: action NLL on 2 held-out programs (the model writes
  its own rationales on the cached decoder)."""
  c = config_lib.load_config(os.path.join(ROOT, "configs", "ra3.py")
                             + f":tiny,init_from={midtrain_wd}")
  c.unlock()
  d = c.ra3_data
  d.num_programs, d.num_base_programs, d.num_heldout, d.min_ops, d.max_ops = 2, 0, 2, 2, 2
  for m in (c.base, c.mstep):
    m.data.batch_size, m.data.seq_len = 2, 128
    m.train.log_every, m.train.progress = 1, False
    m.optim.warmup_steps = 1
  c.mstep.train.num_steps = 1
  r = c.ra3
  r.arms, r.rounds, r.estep_steps, r.proposals, r.max_rationale_len = ("ra3",), 1, 1, 2, 3
  c.estep.rl.seq_len = 256
  c.estep.rl.minibatches = 1
  v = c.eval
  v.tasks, v.humaneval = 0, False  # action NLL only: the sandbox's pass@1 is not the model's
  c.lock()
  return c


@pytest.mark.parametrize("name", list(PRESETS))
def test_ra3_job_from_the_midtraining_run(name, midtrained, tmp_path):
  mt_config, mt_wd = midtrained(name)
  config = _ra3_config(mt_wd)
  model_cfg = config_lib.model_config(config.mstep.model)
  want = config_lib.model_config(mt_config.model)
  assert model_cfg == want.replace(**{k: getattr(model_cfg, k) for k in config_lib.COMPUTE_FIELDS})
  wd = str(tmp_path)
  s = ra3.run(config, wd, handle_signals=False)
  assert s["status"] == "completed" and s["job"] == "ra3"
  for arm in ("base", "ra3"):
    assert np.isfinite(s[arm]["action_nll"]) and s[arm]["action_nll"] > 0, (arm, s[arm])
  (rnd,) = s["ra3"]["rounds"]
  es = rnd["estep"]  # the E-step's means: every program annotated, scored and trained on
  assert es["programs_too_long"] == 0 and es["skipped"] == 0, es
  assert np.isfinite(es["return"]) and np.isfinite(es["rl/loss"]), es
  recs = _records(os.path.join(wd, "ra3", "round_1", "mstep", "metrics.jsonl"))
  assert [r["step"] for r in recs] == [1] and np.isfinite(recs[0]["loss"])
  if name.endswith("_mtp"):
    assert np.isfinite(recs[0]["mtp_loss"]) and recs[0]["mtp_loss"] > 0
  variables, _, _ = init_from_lib.load(os.path.join(wd, "ra3", "round_1", "mstep"), model_cfg,
                                       config.mstep.model.to_dict(), say=lambda _: None)
  _signature(name, variables["params"])
