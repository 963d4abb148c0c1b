"""Mid-training from another run's parameters (config.init_from, train/init_from.py).

Run A trains a few steps; run B (init_from = A's WORKDIR) starts from A's final params with a
fresh optimizer at step 0: its first step's loss, and its state after two steps, equal a
reference train step applied to A's final params with a fresh optimizer state. Rerunning B
resumes from B's own checkpoint (init_from ignored, still reported). A model whose shapes differ
and an init_from that is not a run's WORKDIR are ConfigErrors naming config.init_from.
Small model, synthetic data (train_fixtures.small_config).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import init_from as init_from_lib
from agentic_jax.train import input as input_lib
from agentic_jax.train import loop
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from agentic_jax.train import step as step_lib
from tests.train_fixtures import MIDTRAIN, small_config

A_STEPS, B_STEPS = 4, 2
_FAST = {"train.eval_every": 0}  # no held-out eval: one program less to compile


def _state(config, workdir):
  """The TrainState of the latest checkpoint in workdir."""
  model_cfg = config_lib.model_config(config.model)
  abstract = state_lib.abstract_state(model_cfg, optim_lib.make_optimizer(config.optim),
                                      config.seed)
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return ck.restore_latest(abstract)[0]
  finally:
    ck.close()


def _adam_counts(state):
  return [int(x) for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
          if "count" in jax.tree_util.keystr(p)]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  config = small_config(**{"train.num_steps": A_STEPS, **_FAST})
  workdir = str(tmp_path_factory.mktemp("a"))
  return config, workdir, loop.run(config, workdir, handle_signals=False)


@pytest.fixture(scope="module")
def run_b(run_a, tmp_path_factory):
  """B stopped after its first step, then rerun to the end in the same WORKDIR."""
  _, a_dir, _ = run_a
  config = small_config(**{"train.num_steps": B_STEPS, "init_from": a_dir, **_FAST})
  workdir = str(tmp_path_factory.mktemp("b"))
  first = loop.run(config, workdir, stop_after_steps=1, handle_signals=False)
  return config, workdir, first


def test_b_starts_from_a_final_params_with_a_fresh_optimizer(run_a, run_b, tmp_path, capsys):
  a_config, a_dir, a_out = run_a
  config, b_dir, first = run_b
  assert a_out["init_from"] is None and a_out["final_step"] == A_STEPS
  assert first["status"] == "stopped" and first["start_step"] == 0
  assert first["init_from"] == {"path": os.path.abspath(a_dir), "step": A_STEPS}
  with open(os.path.join(b_dir, "summary.json")) as f:
    assert json.load(f)["init_from"] == first["init_from"]

  # the reference: A's final params and router biases, a fresh state otherwise, B's batches
  a_final = _state(a_config, a_dir)
  assert int(a_final.step) == A_STEPS and _adam_counts(a_final) == [A_STEPS]
  model_cfg = config_lib.model_config(config.model)
  tx = optim_lib.make_optimizer(config.optim)
  ref = state_lib.init_state(model_cfg, tx, config.seed)
  ref = ref.replace(params=a_final.params, router_state=a_final.router_state,
                    opt_state=tx.init(a_final.params))
  inp = input_lib.build_input(config, str(tmp_path), vocab_limit=model_cfg.vocab_size)
  step_fn = jax.jit(step_lib.make_train_step(model_cfg, config, num_kinds=len(inp.kind_names),
                                             num_sources=len(inp.source_names)))
  ref1, m1 = step_fn(ref, next(inp.iterator))
  got = dict(first["losses"])[1]
  np.testing.assert_allclose(got, float(m1["loss"]), rtol=1e-5)
  # ... and not what a run from config.seed gives (A's own first step)
  assert abs(got - dict(a_out["losses"])[1]) > 1e-3

  # B's checkpoint after step 1: one fresh Adam step on A's params, the step counter at 1
  b1 = _state(config, b_dir)
  assert int(b1.step) == 1 and _adam_counts(b1) == [1]
  for want, have in zip(jax.tree.leaves(ref1.params), jax.tree.leaves(b1.params)):
    np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=1e-4, atol=1e-6)

  # Rerunning B resumes from B's own checkpoint (step 1), not from A: init_from is ignored
  # but still reported (the checkpoint's meta), and step 2 continues the reference.
  capsys.readouterr()
  second = loop.run(config, b_dir, handle_signals=False)
  said = capsys.readouterr().out
  assert said.count("config.init_from") == 1 and "is ignored" in said
  assert "[init] params and router state from" not in said
  assert second["status"] == "completed" and second["start_step"] == 1
  assert second["final_step"] == B_STEPS
  assert second["init_from"] == first["init_from"]
  _, m2 = step_fn(ref1, next(inp.iterator))
  np.testing.assert_allclose(dict(second["losses"])[2], float(m2["loss"]), rtol=1e-4)
  assert _adam_counts(_state(config, b_dir)) == [B_STEPS]


def test_a_model_of_other_shapes_is_a_clear_error(run_a, tmp_path):
  _, a_dir, _ = run_a
  config = small_config(**{"init_from": a_dir, "model.hidden_size": 48, **_FAST})
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.init_from=.*do not fit config.model; differing fields: "
                           r"hidden_size: 32 \(init_from\) vs 48 \(config.model\) \(to take the "
                           r"model from the checkpoint: --config=configs/FILE\.py:VARIANT,"
                           r"init_from=.+\)$"):
    loop.run(config, str(tmp_path), handle_signals=False)
  assert init_from_lib.checkpoint_steps(str(tmp_path)) == []


def test_init_from_that_is_not_a_run_is_a_config_error(tmp_path):
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  (tmp_path / "nockpt").mkdir()
  for path, why in ((str(tmp_path / "missing"), "is not a directory"),
                    (str(tmp_path / "nockpt"), "has no checkpoints/ directory"),
                    (str(tmp_path / "empty"), "holds no checkpoint")):
    config = small_config(**{"init_from": path})
    with pytest.raises(config_lib.ConfigError) as info:
      config_lib.validate(config)
    assert str(info.value).startswith("config.init_from: ") and why in str(info.value)
    with pytest.raises(config_lib.ConfigError, match="^config.init_from: "):
      loop.run(config, str(tmp_path / "w"), handle_signals=False)
  assert config_lib.load_config(f"{MIDTRAIN}:tiny").init_from == ""   # the default


def test_adopt_tokenizer(tmp_path):
  run, work = tmp_path / "run", tmp_path / "work"
  run.mkdir()
  with pytest.raises(config_lib.ConfigError, match="config.init_from: .* has no tokenizer.model"):
    init_from_lib.adopt_tokenizer(str(run), str(work))
  (run / "tokenizer.model").write_bytes(b"pieces")
  copy = init_from_lib.adopt_tokenizer(str(run), str(work))
  assert copy == str(work / "tokenizer.model")
  assert (work / "tokenizer.model").read_bytes() == b"pieces"
  assert init_from_lib.adopt_tokenizer(str(run), str(work)) == copy  # a resume: kept as it is
  (work / "tokenizer.model").write_bytes(b"other")
  with pytest.raises(config_lib.ConfigError, match="differs from"):
    init_from_lib.adopt_tokenizer(str(run), str(work))
  assert (work / "tokenizer.model").read_bytes() == b"other"   # nothing overwritten
