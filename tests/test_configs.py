"""configs/midtrain.py: required keys, locking, and a one-step smoke run of every variant
(tiny for real on the built-in data; the full-size ones through jax.eval_shape only, so
nothing of their 2B-671B parameters is allocated). The RL configs (flow_grpo, grpo, dapo,
dr_grpo): every variant loads and passes check_rl_config without compiling anything; the
planner's verdict on their pods is tests/test_planner.py's."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from agentic_jax import models
from agentic_jax.train import config as config_lib
from agentic_jax.train import input as input_lib
from agentic_jax.train import loop
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from agentic_jax.train import step as step_lib
from tests.train_fixtures import MIDTRAIN

VARIANTS = ("tiny", "longcat_flash", "deepseek_v3", "youtu_llm")
FULL = VARIANTS[1:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_required_keys_and_model(variant):
  config = config_lib.load_config(f"{MIDTRAIN}:{variant}")
  config_lib.check_required(config)
  for axis in ("data", "fsdp", "tensor", "expert"):
    assert isinstance(config.mesh[axis], int)
  assert isinstance(config.seed, int) and config.train.num_steps > 0
  assert config.checkpoint.every > 0 and config.train.log_every > 0
  model_cfg = config_lib.model_config(config.model)
  assert model_cfg == models.presets.get(config.model.preset).replace(
      **{k: v for k, v in config.model.items() if k != "preset"})
  assert [s.name for s in input_lib.source_specs(config.data)] == sorted(config.data.mix)


def test_locked_config_rejects_typos_and_checks_types():
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  with pytest.raises(AttributeError, match="lrr"):
    config.optim.lrr = 1.0
  with pytest.raises(TypeError):
    config.train.num_steps = "many"
  config.optim.lr = 1e-3  # existing keys stay writable
  config.model.q_lora_rank = 48  # the Optional field is a typed placeholder, still settable
  assert config_lib.model_config(config.model).q_lora_rank == 48
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    config_lib.load_config(f"{MIDTRAIN}:huge")
  with pytest.raises(ValueError, match=r"ModelConfig.num_experts_per_tok"):
    config.model.num_experts_per_tok = 100
    config_lib.model_config(config.model)


@pytest.mark.parametrize("variant", FULL)
def test_full_size_step_shapes_via_eval_shape(variant):
  config = config_lib.load_config(f"{MIDTRAIN}:{variant}")
  model_cfg = config_lib.model_config(config.model)
  tx = optim_lib.make_optimizer(config.optim)
  abstract = state_lib.abstract_state(model_cfg, tx, config.seed)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  assert n_params == models.count_params(model_cfg)
  assert n_params > 1.9e9  # the smallest of them, Youtu-LLM, has 1.96B
  b, t = config.data.batch_size, config.data.seq_len
  batch = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == "weights" else jnp.int32)
           for k in ("inputs", "targets", "weights", "segment_ids", "positions", "target_kind",
                     "source_id")}
  step_fn = step_lib.make_train_step(model_cfg, config, num_kinds=10,
                                     num_sources=len(config.data.mix))
  new_state, metrics = jax.eval_shape(step_fn, abstract, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(abstract)
  jax.tree.map(lambda a, c: (a.shape, a.dtype) == (c.shape, c.dtype) or pytest.fail(f"{a} != {c}"),
               new_state, abstract)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
  assert metrics["loss"].shape == () and metrics["kind_ce_sum"].shape == (10,)
  if model_cfg.is_moe:
    assert metrics["moe/expert_load"].shape == (model_cfg.num_slots,)
    assert jax.tree.leaves(new_state.router_state)  # correction biases are carried
  else:
    assert not jax.tree.leaves(new_state.router_state)


def test_tiny_one_step_on_builtin_data(tmp_path):
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  config.unlock()
  for name, n in {"calculator": 24, "pyrepo": 8, "stdlib_edits": 16}.items():
    config.data.mix[name].num_samples = n
  config.train.num_steps, config.optim.warmup_steps, config.train.progress = 1, 0, False
  config.lock()
  result = loop.run(config, str(tmp_path), handle_signals=False)
  assert result["status"] == "completed" and result["final_step"] == 1
  (step, loss), = result["losses"]
  # A fresh model predicts roughly uniformly over the 1024-token vocabulary.
  assert step == 1 and abs(float(loss) - math.log(1024)) < 0.3
  rec = result["final_record"]
  assert set(config.data.mix) == {k.split("/")[-1] for k in rec if k.startswith("loss/source/")}
  assert rec["loss/kind/observation"] > 0 and rec["loss/kind/tool_call"] > 0
  assert result["data"]["tokenizer"]["trained"] and result["pipeline"]["batches"] >= 1
  np.testing.assert_allclose(sum(rec["moe/expert_load"]), 1.0, rtol=1e-4)


# ----------------------------------------------- RL configs (issue 18 item 4: full sizes)

RL_FILES = {"flow_grpo": "flow_grpo", "grpo": "grpo", "dapo": "dapo", "dr_grpo": "dr_grpo"}
RL_FULL = ("youtu_llm", "longcat_flash")
RL_CASES = [(f, v) for f in RL_FILES for v in ("tiny",) + RL_FULL] + [("flow_grpo", "tiny_code")]


def _rl_config(name, variant):
  import os  # pylint: disable=import-outside-toplevel
  return config_lib.load_config(os.path.join(os.path.dirname(MIDTRAIN), f"{name}.py:{variant}"))


@pytest.mark.parametrize("name,variant", RL_CASES)
def test_rl_config_loads_and_passes_the_rl_check(name, variant):
  """Every RL config name loads and passes check_rl_config on the device count its mesh names
  (the full-size meshes have no -1 axis), from shapes and values only: nothing compiles."""
  from agentic_jax.rl import config as rl_config_lib  # pylint: disable=import-outside-toplevel
  config = _rl_config(name, variant)
  assert config.job == "rl" and config.rl.loss == RL_FILES[name] and config.variant == variant
  mesh = {a: config.mesh[a] for a in ("data", "fsdp", "tensor", "expert")}
  num_devices = math.prod(v for v in mesh.values() if v > 0)
  objective = rl_config_lib.check_rl_config(config, num_devices=num_devices)
  assert objective.name == RL_FILES[name]
  if variant not in RL_FULL:
    return
  assert -1 not in mesh.values()
  # the real presets, not shrunk, and the mid-training variant's model section (so its
  # WORKDIR restores into the RL run)
  model_cfg = config_lib.model_config(config.model)
  compute = {k: getattr(model_cfg, k) for k in config_lib.COMPUTE_FIELDS}
  assert model_cfg == models.presets.get(variant, **compute)
  shapes = lambda m: {k: v for k, v in m.to_dict().items() if k not in compute}  # noqa: E731
  assert shapes(config.model) == shapes(config_lib.load_config(f"{MIDTRAIN}:{variant}").model)
  assert config.tokenizer.vocab_size == model_cfg.vocab_size and config.init_from == ""
  assert config.optim.lr == 1e-6
  r = config.rl
  assert r.seq_len >= r.max_context_tokens + r.max_new_tokens
  # the rows an RL step packs split evenly: one per device per minibatch at least
  shards = mesh["data"] * mesh["fsdp"] * mesh["expert"]
  assert r.row_bucket % (shards * r.minibatches) == 0
  if model_cfg.is_moe:  # expert parallelism for the 560B MoE, dropping no slot (as decoding)
    assert mesh["expert"] > 1 and model_cfg.moe_dispatch == "expert_parallel"
    assert model_cfg.capacity_factor >= mesh["expert"]


@pytest.mark.parametrize("variant", RL_FULL)
def test_rl_full_variants_share_flow_grpos_pod(variant):
  """grpo / dapo / dr_grpo take flow_grpo's pod (mesh, batch, lengths, optim, schedule) and keep
  their own loss, preset, batch mode and loss options."""
  flow = _rl_config("flow_grpo", variant)
  for name in ("grpo", "dapo", "dr_grpo"):
    c = _rl_config(name, variant)
    for section in ("model", "mesh", "optim", "train", "checkpoint", "tokenizer"):
      assert c[section].to_dict() == flow[section].to_dict(), (name, section)
    own = ("loss", "preset", "loss_options", "batch_mode", "dapo_max_refill_rounds")
    assert ({k: v for k, v in c.rl.to_dict().items() if k not in own}
            == {k: v for k, v in flow.rl.to_dict().items() if k not in own}), name
    assert c.rl.loss == name and c.rl.batch_mode == "trajectory"
  dapo = _rl_config("dapo", variant).rl
  assert dapo.loss_options.overlong_max_len == dapo.max_turns * dapo.max_new_tokens
  assert dapo.dapo_max_refill_rounds == 3
  dr = _rl_config("dr_grpo", variant).rl
  assert dr.loss_options.norm_constant == dr.max_turns * dr.max_new_tokens


def test_rl_config_unknown_variant():
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    _rl_config("grpo", "huge")


@pytest.mark.parametrize("variant", ("tiny", "youtu_llm"))
def test_rl_variant_builds_what_grpo_dapo_dr_grpo_built(variant, monkeypatch):
  """agentic_jax.rl.config.rl_variant, the builder configs/grpo.py, dapo.py and dr_grpo.py call,
  gives what their own builders gave. The expected config is put together here key by key:
  job keys; the model and tokenizer vocabulary of configs/midtrain.py:tiny (tiny) or
  configs/flow_grpo.py:VARIANT (full size); mesh, optim, train, checkpoint and every rl key
  but the loss's own from rl_config's tiny numbers (tiny) or flow_grpo's VARIANT; loss, its
  registered default preset and batch mode, and the file's own loss options."""
  import os  # pylint: disable=import-outside-toplevel
  from agentic_jax.objectives import rl_registry  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import config as rl_config_lib  # pylint: disable=import-outside-toplevel
  flow_path = os.path.join(os.path.dirname(MIDTRAIN), "flow_grpo.py")
  if variant == "tiny":
    mt = config_lib.load_config(f"{MIDTRAIN}:tiny")
    model, vocab = mt.model, mt.data.tokenizer.vocab_size
    pod = rl_config_lib.rl_config("flow_grpo", model=model, tokenizer_vocab=vocab)
  else:
    pod = config_lib.load_config(f"{flow_path}:{variant}")
    model, vocab = pod.model, pod.tokenizer.vocab_size
  r = pod.rl
  own_options = {"grpo": {}, "dr_grpo": {"norm_constant": float(r.max_turns * r.max_new_tokens)},
                 "dapo": {"overlong_max_len": r.max_turns * r.max_new_tokens,
                          "overlong_buffer": r.max_new_tokens}}
  for name in ("grpo", "dapo", "dr_grpo"):
    spec = rl_registry.get_spec(name)
    want = {"job": "rl", "variant": variant, "seed": 0, "init_from": "",
            "model": model.to_dict(), "tokenizer": {"path": "", "vocab_size": vocab}}
    for section in ("mesh", "optim", "train", "checkpoint"):
      want[section] = pod[section].to_dict()
    want["rl"] = dict(r.to_dict(), loss=name, preset=spec.default_preset,
                      batch_mode=spec.batch_mode, dapo_max_refill_rounds=0,
                      loss_options={k: None for k in r.loss_options})
    # the library function alone: no loss options of the file's
    direct = rl_config_lib.rl_variant(name, variant, config_name=f"configs/{name}.py",
                                      variants=(variant,), midtrain_path=MIDTRAIN,
                                      flow_grpo_path=flow_path)
    assert direct.to_dict() == want, name
    # the config file: the same plus its own options
    want["rl"]["loss_options"].update(own_options[name])
    if name == "dapo":
      want["rl"]["dapo_max_refill_rounds"] = 3
    assert _rl_config(name, variant).to_dict() == want, name
  assert want["rl"]["preset"] == "paper" and want["rl"]["batch_mode"] == "trajectory"
  # init_from reaches the loaded config (whose model becomes the checkpoint's) and the result
  seen = []
  def checkpoint_model(path, like):
    seen.append(path)
    section = ml_collections.ConfigDict(like.to_dict())
    section.preset = "init_from"
    return section
  monkeypatch.setattr(config_lib, "model_section_from_checkpoint", checkpoint_model)
  c = _rl_config("dr_grpo", f"{variant},init_from=/ckpt/wd")
  assert seen == ["/ckpt/wd"] and c.init_from == "/ckpt/wd" and c.model.preset == "init_from"
  with pytest.raises(ValueError, match=r"^configs/x\.py: unknown variant 'huge'; choose one of "
                                       r"\('tiny',\)$"):
    rl_config_lib.rl_variant("grpo", "huge", config_name="configs/x.py", variants=("tiny",),
                             midtrain_path=MIDTRAIN, flow_grpo_path=flow_path)
