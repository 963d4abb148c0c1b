"""Held-out evaluation (train/eval.py, train/input.py, the loop): the eval step against an
independent numpy recomputation and against the train step's own loss, summing over batches,
held-out data that never overlaps the training samples (also when the generator repeats
one), and a run with evaluation training exactly like one without."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from agentic_jax import models, objectives, parallel
from agentic_jax.data import builtin
from agentic_jax.data.render import render
from agentic_jax.train import config as config_lib
from agentic_jax.train import eval as eval_lib
from agentic_jax.train import input as input_lib
from agentic_jax.train import loop
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from agentic_jax.train import step as step_lib
from tests.train_fixtures import MIDTRAIN, small_config
from tests import data_fixtures


@pytest.fixture(scope="module")
def setup():
  """The initial state exactly as the loop creates it (same program: the runs below load it
  from the compilation cache)."""
  config = small_config()
  model_cfg = config_lib.model_config(config.model)
  tx = optim_lib.make_optimizer(config.optim)
  mesh = parallel.make_mesh(config.mesh)
  shardings = state_lib.state_shardings(state_lib.abstract_state(model_cfg, tx, config.seed),
                                        model_cfg, mesh)
  state = state_lib.init_sharded_state(model_cfg, tx, config.seed, shardings)
  return config, model_cfg, state


def _hand_batch(vocab: int, rows: int = 2, length: int = 32, seed: int = 0) -> dict:
  """Two packed segments per row; kinds 0..3 and sources 0/1 mixed, some targets out of range
  (kind -1 / source 5 with weight: left out of every group), weights of 0, 0.5, 1 and 2."""
  rng = np.random.default_rng(seed)
  half = length // 2
  seg = np.concatenate([np.ones(half, np.int32), np.full(length - half, 2, np.int32)])
  batch = {
      "inputs": rng.integers(1, vocab, (rows, length)).astype(np.int32),
      "targets": rng.integers(1, vocab, (rows, length)).astype(np.int32),
      "weights": rng.choice([0.0, 0.5, 1.0, 2.0], (rows, length)).astype(np.float32),
      "segment_ids": np.tile(seg, (rows, 1)),
      "positions": np.tile(np.concatenate([np.arange(half), np.arange(length - half)]),
                           (rows, 1)).astype(np.int32),
      "target_kind": rng.integers(-1, 4, (rows, length)).astype(np.int32),
      "source_id": rng.choice([0, 1, 5], (rows, length)).astype(np.int32),
  }
  return batch


def _numpy_reference(logits: np.ndarray, batch: dict, num_kinds: int, num_sources: int) -> dict:
  logits = logits.astype(np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  t = batch["targets"]
  ce = -np.take_along_axis(logp, t[..., None], -1)[..., 0]
  w = batch["weights"].astype(np.float64)
  ref = {"loss": (w * ce).sum() / w.sum(),
         "accuracy": (w * (logits.argmax(-1) == t)).sum() / w.sum()}
  for name, key, num in (("kind", "target_kind", num_kinds), ("source", "source_id", num_sources)):
    ids = batch[key]
    ref[f"loss_by_{name}"] = np.array(
        [(w * ce)[ids == k].sum() / w[ids == k].sum() if w[ids == k].sum() > 0 else np.nan
         for k in range(num)])
  return ref


def test_eval_step_equals_independent_recomputation(setup):
  config, model_cfg, state = setup
  batch = _hand_batch(model_cfg.vocab_size)
  num_kinds, num_sources = 5, 2  # kind 4 never occurs: NaN, not 0
  eval_step = jax.jit(eval_lib.make_eval_step(model_cfg, num_kinds=num_kinds, num_sources=num_sources))
  got = jax.device_get(eval_step(state.params, state.router_state, batch))
  variables = {"params": state.params, "router_state": state.router_state}
  logits = np.asarray(jax.jit(models.build(model_cfg).apply)(
      variables, batch["inputs"], batch["segment_ids"], batch["positions"]))
  ref = _numpy_reference(logits, batch, num_kinds, num_sources)
  np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], ref["accuracy"], rtol=1e-5)
  np.testing.assert_allclose(got["loss_by_kind"], ref["loss_by_kind"], rtol=1e-5)
  np.testing.assert_allclose(got["loss_by_source"], ref["loss_by_source"], rtol=1e-5)
  assert np.isnan(got["loss_by_kind"][4]) and np.isfinite(got["loss_by_kind"][:4]).all()
  # Out-of-range ids carry weight but belong to no group: group weights add up to less.
  assert got["source_weight"].sum() < got["weight_sum"] == pytest.approx(batch["weights"].sum())

  # The training objective's metric terms (objectives/next_token.py, what train_step logs as
  # loss / accuracy / per-kind sums) agree on the same logits.
  opts = step_lib.loss_options(config, num_kinds=num_kinds, num_sources=num_sources)
  _, aux = objectives.get_loss("next_token")(jnp.asarray(logits), {}, batch, model_cfg=model_cfg,
                                             options=opts, normalizer=jnp.float32(1.0))
  np.testing.assert_allclose(aux["ce_sum"] / aux["weight_sum"], got["loss"], rtol=1e-5)
  np.testing.assert_allclose(aux["correct_sum"] / aux["weight_sum"], got["accuracy"], rtol=1e-5)
  np.testing.assert_allclose(aux["kind_ce_sum"], got["kind_ce_sum"], rtol=1e-5)


def test_evaluate_is_token_weighted_over_all_batches(setup):
  _, model_cfg, state = setup
  a, b = _hand_batch(model_cfg.vocab_size, seed=1), _hand_batch(model_cfg.vocab_size, seed=2)
  b["weights"] = b["weights"] * 3.0  # unequal batch weights: a mean of batch means would differ
  eval_step = jax.jit(eval_lib.make_eval_step(model_cfg, num_kinds=4, num_sources=2))
  out = eval_lib.evaluate(eval_step, state.params, state.router_state, [a, b],
                          ("k0", "k1", "k2", "k3"), ("src_a", "src_b"))
  joined = {k: np.concatenate([a[k], b[k]]) for k in a}
  one = jax.device_get(eval_step(state.params, state.router_state, joined))
  np.testing.assert_allclose(out["eval_loss"], one["loss"], rtol=1e-5)
  np.testing.assert_allclose(out["eval_accuracy"], one["accuracy"], rtol=1e-5)
  np.testing.assert_allclose(out["eval_loss/source/src_b"], one["loss_by_source"][1], rtol=1e-5)
  np.testing.assert_allclose(out["eval_loss/kind/k3"], one["loss_by_kind"][3], rtol=1e-5)
  assert out["eval_batches"] == 2
  assert out["eval_weight"] == pytest.approx(a["weights"].sum() + b["weights"].sum())
  mean_of_means = np.mean([jax.device_get(eval_step(state.params, state.router_state, x))["loss"]
                           for x in (a, b)])
  assert abs(mean_of_means - out["eval_loss"]) > 1e-4  # the test can tell the two apart


# ------------------------------------------------------------------ held-out data


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  return data_fixtures.builtin_tokenizer_512(tmp_path_factory.mktemp("tok"))


COUNTS = {"calculator": (24, 8), "pyrepo": (6, 3), "stdlib_edits": (12, 6)}  # train, eval


def _builtin_config(tokenizer_path, **overrides):
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  config.unlock()
  for name, (n, n_eval) in COUNTS.items():
    config.data.mix[name].num_samples, config.data.mix[name].eval_num_samples = n, n_eval
  config.data.seq_len = 2048
  config.data.overlong = "drop"  # every packed segment is one whole sample
  config.data.batch_size = 2
  config.data.tokenizer.path = tokenizer_path
  for k, v in overrides.items():
    config.data[k] = v
  config.lock()
  return config


def _segments(batches) -> list[tuple[bytes, int]]:
  """(tokens of every packed segment, its source id) over a list of batches."""
  out = []
  for b in batches:
    for row in range(b["inputs"].shape[0]):
      for seg in set(b["segment_ids"][row].tolist()) - {0}:
        sel = b["segment_ids"][row] == seg
        out.append((b["inputs"][row][sel].astype(np.int32).tobytes(), int(b["source_id"][row][sel][0])))
  return out


def _rendered(config, tok, seed, counts) -> list[set]:
  """Per source, in source_id order: the rendered token sequences of `counts[i]` samples."""
  return [{render(s, tok, config.data.mask_policy).tokens.astype(np.int32).tobytes()
           for s in builtin.generate(name, seed=seed, num_samples=n)}
          for name, n in zip(sorted(COUNTS), counts)]


def _counts(eval_counts=False):
  return [COUNTS[name][int(eval_counts)] for name in sorted(COUNTS)]


def test_held_out_batches_never_overlap_training_samples(tokenizer_path, tmp_path):
  config = _builtin_config(tokenizer_path)
  inp = input_lib.build_input(config, str(tmp_path), vocab_limit=1024, eval_batches=3)
  assert len(inp.eval_batches) == 3
  train = _rendered(config, inp.tokenizer, config.seed, _counts())
  held = _rendered(config, inp.tokenizer, config.seed + input_lib.EVAL_SEED_OFFSET,
                   _counts(eval_counts=True))
  segs = _segments(inp.eval_batches)
  assert {src for _, src in segs} == {0, 1, 2}  # every source is represented
  for tokens, src in segs:
    assert tokens not in train[src], f"eval segment of source {src} is a training sample"
    assert tokens in held[src]  # and it is one of the held-out samples
  # The training batches are unaffected by eval: the same as without held-out data.
  plain = input_lib.build_input(config, str(tmp_path), vocab_limit=1024)
  for _ in range(2):
    x, y = next(inp.iterator), next(plain.iterator)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  rep = inp.report["eval"]["sources"]
  assert all(r["dropped_overlap"] == 0 for r in rep.values())


def test_held_out_samples_equal_to_training_ones_are_dropped_and_counted(
    tokenizer_path, tmp_path, monkeypatch):
  """A generator that repeats training samples under the eval seed: those are dropped,
  counted per source, and the rest is still used."""
  config = _builtin_config(tokenizer_path)
  real = builtin.generate

  def repeating(name, *, seed, num_samples, stats=None):
    if seed != config.seed + input_lib.EVAL_SEED_OFFSET or name != "calculator":
      return real(name, seed=seed, num_samples=num_samples, stats=stats)
    # 5 training samples (indices 0..4 of the training set) + 3 new ones
    return real(name, seed=config.seed, num_samples=5) + real(name, seed=seed, num_samples=3)

  monkeypatch.setattr(builtin, "generate", repeating)
  inp = input_lib.build_input(config, str(tmp_path), vocab_limit=1024, eval_batches=3)
  rep = inp.report["eval"]["sources"]
  assert rep["calculator"] == {"samples": 3, "dropped_overlap": 5}
  train = _rendered(config, inp.tokenizer, config.seed, _counts())
  for tokens, src in _segments(inp.eval_batches):
    assert tokens not in train[src]


def test_file_source_holds_out_its_last_records(tokenizer_path, tmp_path):
  """A JSONL source gives up its last eval_num_samples records to eval, eval on or off."""
  src = os.path.join(os.path.dirname(__file__), "data", "adp_good.jsonl")
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  config.unlock()
  config.data.mix = ml_collections.ConfigDict(
      {"agent": input_lib.mix_source("adp", path=src, eval_num_samples=1)})
  config.data.batch_size, config.data.seq_len = 1, 4096
  config.data.tokenizer.path = tokenizer_path
  config.lock()
  inp = input_lib.build_input(config, str(tmp_path), vocab_limit=1024, eval_batches=1)
  rep = inp.report["sources"]["agent"]
  assert rep["kept"] == 4 and rep["held_out_for_eval"] == 1
  assert inp.iterator._sources[0].samples.__len__() == 3  # pylint: disable=protected-access
  no_eval = input_lib.build_input(config, str(tmp_path), vocab_limit=1024)
  assert no_eval.report["sources"]["agent"]["held_out_for_eval"] == 1  # independent of eval
  assert no_eval.eval_batches == []
  with pytest.raises(ValueError, match=r"config.data.mix.agent.eval_num_samples=4 holds out all 4"):
    config.unlock()
    config.data.mix.agent.eval_num_samples = 4
    input_lib.build_input(config, str(tmp_path), vocab_limit=1024)


# ------------------------------------------------------------------ in the loop


def test_eval_changes_neither_state_nor_data(tmp_path):
  """Losses and final state of a run with evaluation every 2 steps equal (bitwise) those of a
  run without; eval results land in metrics.jsonl and summary.json."""
  with_eval = loop.run(small_config(**{"train.eval_every": 2, "train.eval_batches": 2}),
                       str(tmp_path / "eval"), handle_signals=False)
  without = loop.run(small_config(**{"train.eval_every": 0}), str(tmp_path / "plain"),
                     handle_signals=False)
  assert [s for s, _ in with_eval["losses"]] == list(range(1, 7))
  for (s1, a), (s2, b) in zip(with_eval["losses"], without["losses"]):
    assert s1 == s2 and a.tobytes() == b.tobytes(), (s1, a, b)
  recs = [json.loads(line) for line in open(tmp_path / "eval" / "metrics.jsonl")]
  assert [r["step"] for r in recs] == [2, 4, 6]
  evals = [r["eval_loss"] for r in recs]
  assert all(np.isfinite(evals)) and evals[-1] < evals[0]  # the model learns the sequences
  assert all(r["eval_loss/source/synthetic"] == pytest.approx(r["eval_loss"]) for r in recs)
  summary = json.load(open(tmp_path / "eval" / "summary.json"))
  assert summary["eval_loss"] == pytest.approx(evals[-1]) and summary["eval"]["eval_step"] == 6
  assert "eval_loss" not in json.loads(open(tmp_path / "plain" / "metrics.jsonl").readline())
  assert without["eval_loss"] is None
  from agentic_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  config = small_config()
  abstract = state_lib.abstract_state(config_lib.model_config(config.model),
                                      optim_lib.make_optimizer(config.optim), config.seed)
  final = [ckpt_lib.Checkpointer(str(tmp_path / d / "checkpoints")).restore_latest(abstract)[0]
           for d in ("eval", "plain")]
  jax.tree.map(np.testing.assert_array_equal, *final)


def test_eval_config_errors(tmp_path):
  # config.validate rejects both before anything is built (a ConfigError, a ValueError)
  with pytest.raises(ValueError, match="config.train.eval_every: expected an int >= 0, got -1"):
    loop.run(small_config(**{"train.eval_every": -1}), str(tmp_path), handle_signals=False)
  with pytest.raises(ValueError, match="config.train.eval_batches: expected an int >= 1, got 0"):
    loop.run(small_config(**{"train.eval_every": 2, "train.eval_batches": 0}), str(tmp_path),
             handle_signals=False)
