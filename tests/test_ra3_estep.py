"""RA3's E-step machinery (issue 13): the annotation decoder keeps the expert's tokens and
records q's log-probs exactly as the RL step recomputes them (the "continue" decision as
log(1 - p(<|think|>))); per-boundary terms cut by hand; rewards and the continue/new choice;
one E-step update through the registry's loss; the annotated text renders back to the tokens."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models
from agentic_jax.data.tokenizer import SPECIALS
from agentic_jax.rl import ra3_annotate as ra
from agentic_jax.rl import ra3_estep
from agentic_jax.rl import step as step_lib
from tests.train_fixtures import SMALL_MODEL

THINK, END = SPECIALS["<|think|>"][0], SPECIALS["<|end_think|>"][0]
BANNED = tuple(i for i in range(16) if i != END)
VOCAB = 40  # small, so that a flat policy writes rationales often enough to test them


@pytest.fixture(scope="module")
def model():
  cfg = models.ModelConfig(**{**SMALL_MODEL, "vocab_size": VOCAB, "layer_type": "dense"})
  return cfg, models.init_variables(cfg, jax.random.key(0))


def _rows(n=24, seed=0):
  rng = np.random.RandomState(seed)
  prompts = [rng.randint(16, VOCAB, size=rng.randint(3, 9)).astype(np.int32) for _ in range(n)]
  experts = [rng.randint(16, VOCAB, size=rng.randint(8, 20)).astype(np.int32) for _ in range(n)]
  bds = [np.sort(rng.choice(len(e), size=3, replace=False)).astype(np.int32) for e in experts]
  return prompts, experts, bds


def _annotate(cfg, variables, rows, temperature, seed=1, max_len=3, **kw):
  return ra.annotate(cfg, variables, *rows, jax.random.key(seed), think_id=THINK,
                     end_think_id=END, banned_ids=BANNED, max_rationale_len=max_len,
                     temperature=temperature, **kw)


def test_annotations_keep_the_expert_and_record_q_exactly(model):
  cfg, variables = model
  # nearly flat: p(<|think|>) ~ 1/40 per decision; 96 rows x 3 decisions expect ~7 rationales
  # (fewer than 2 has probability < 1%, whatever the draws)
  rows = _rows(96)
  t = 20.0
  anns = _annotate(cfg, variables, rows, t)
  kinds = np.concatenate([a.kind for a in anns])
  assert (kinds == ra.KIND_NEW).sum() >= 2 and (kinds == ra.KIND_CONTINUE).sum() > 10
  for a, e, bd in zip(anns, rows[1], rows[2]):
    np.testing.assert_array_equal(a.tokens[a.src >= 0], e)  # expert tokens, in order
    np.testing.assert_array_equal(a.src[a.src >= 0], np.arange(len(e)))
    # one decision per boundary: a continue at the boundary or a <|think|> right before it
    decided = [int(a.src[k]) if a.kind[k] == ra.KIND_CONTINUE else
               int(a.src[np.flatnonzero((np.arange(len(a.src)) > k) & (a.src >= 0))[0]])
               for k in np.flatnonzero(np.isin(a.kind, (ra.KIND_CONTINUE, ra.KIND_NEW)))]
    assert decided == list(bd)
    for k in np.flatnonzero(a.kind == ra.KIND_NEW):  # bounded rationale, closed by the marker
      m = k + 1
      while a.kind[m] == ra.KIND_RATIONALE:
        assert a.tokens[m] not in BANNED
        m += 1
      assert m - k - 1 <= 3 and a.tokens[m] == END
      assert a.kind[m] in (ra.KIND_END, ra.KIND_END_FORCED)
      if a.kind[m] == ra.KIND_END_FORCED:  # forced only at the length limit
        assert m - k - 1 == 3
  # the sampler's log q equals what rl/step.token_logp recomputes, continue decisions included
  batch = ra.policy_rows(anns, np.zeros(len(anns)), np.arange(len(anns)), think_id=THINK,
                         seq_len=64)
  lp, _ = step_lib.token_logp(models.build(cfg), variables,
                              {k: jnp.asarray(batch[k]) for k in step_lib.TOKEN_KEYS}, t)
  on = batch["mask"] > 0
  np.testing.assert_allclose(np.asarray(lp)[on], batch["old_logp"][on], atol=1e-5)
  cont = batch["targets"] < 0
  assert cont.sum() == (kinds == ra.KIND_CONTINUE).sum() and np.all(on[cont])
  # hand check of one continue: log(1 - softmax(logits / t)[think]) at that position
  i, p = np.argwhere(cont)[0]
  logits = models.build(cfg).apply(variables, jnp.asarray(batch["inputs"][i:i + 1]),
                                   jnp.asarray(batch["segment_ids"][i:i + 1]),
                                   jnp.asarray(batch["positions"][i:i + 1]))[0, p]
  probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float64) / t))
  assert batch["old_logp"][i, p] == pytest.approx(math.log1p(-probs[THINK]), abs=1e-5)


def test_greedy_annotation_is_deterministic_and_no_boundary_means_the_expert(model):
  cfg, variables = model
  rows = _rows(8, seed=3)
  a = _annotate(cfg, variables, rows, 0.0, seed=1)
  b = _annotate(cfg, variables, rows, 0.0, seed=9)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.tokens, y.tokens)
  plain = _annotate(cfg, variables, (rows[0], rows[1], [np.zeros(0, np.int32)] * 8), 1.0)
  for x, e in zip(plain, rows[1]):
    np.testing.assert_array_equal(x.tokens, e)
    assert np.all(x.kind == ra.KIND_EXPERT)


def test_annotation_in_chunks_equals_one_call(model):
  """config.estep.decode_batch: rows annotated a few per decoder call get exactly the
  annotations of one call over all rows (row i draws from fold_in(key, i), whatever the
  call's other rows), sampled decisions and rationales included."""
  cfg, variables = model
  rows = _rows(90, seed=4)
  whole = _annotate(cfg, variables, rows, 20.0)
  kinds = np.concatenate([a.kind for a in whole])
  assert (kinds == ra.KIND_NEW).sum() >= 2  # ~7 expected: the draws matter here
  # 7 rows per call (batch bucket 8: one padded row), 40 (the last call 10 rows + 30 padded)
  for max_rows in (7, 40):
    parts = _annotate(cfg, variables, rows, 20.0, max_rows=max_rows)
    assert len(parts) == len(whole)
    for x, y in zip(whole, parts):
      for f in ("tokens", "kind", "src", "boundaries"):
        np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f"{max_rows} {f}")
      np.testing.assert_allclose(x.logp, y.logp, rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="max_rows"):
    _annotate(cfg, variables, rows, 20.0, max_rows=0)


def _hand_annotation():
  # prompt [20, 21]; expert [30, 31, 32, 33, 34]; boundaries at 1 and 3; a rationale [25, 26]
  # before expert 3; a continue at 1
  kind = [ra.KIND_EXPERT, ra.KIND_CONTINUE, ra.KIND_EXPERT, ra.KIND_NEW, ra.KIND_RATIONALE,
          ra.KIND_RATIONALE, ra.KIND_END, ra.KIND_EXPERT, ra.KIND_EXPERT]
  tokens = [30, 31, 32, THINK, 25, 26, END, 33, 34]
  src = [0, 1, 2, -1, -1, -1, -1, 3, 4]
  logp = [0.0, -0.1, 0.0, -2.0, -0.5, -0.25, -0.125, 0.0, 0.0]
  return ra.Annotation(np.array([20, 21], np.int32), np.array(tokens, np.int32),
                       np.array(logp, np.float32), np.array(kind, np.int32),
                       np.array(src, np.int32), np.array([1, 3], np.int32))


def test_boundary_terms_by_hand():
  a = _hand_annotation()
  scores = [np.array([-1.0, -2.0, -3.0, -9.0, -9.0, -9.0, -9.0, -4.0, -5.0], np.float32)]
  t = ra.boundary_terms([a], scores)
  # segment 0 = expert 1..2 (-2 - 3), segment 1 = expert 3..4 (-4 - 5); expert 0 precedes both
  np.testing.assert_allclose(t["action_logp"][0], [-5.0, -9.0])
  np.testing.assert_array_equal(t["action_tokens"][0], [2, 2])
  np.testing.assert_array_equal(t["is_new"][0], [False, True])
  np.testing.assert_allclose(t["q_logp"][0], [-0.1, -2.0 - 0.5 - 0.25 - 0.125])
  np.testing.assert_array_equal(t["rationale_len"][0], [0, 2])
  assert t["prefix_logp"][0] == -1.0
  assert a.rationales() == [(3, [25, 26])]
  # rewards: r = log π(a) - c·1[new]; c = inf makes the new proposal -inf, the continue stays
  np.testing.assert_allclose(ra3_estep.rewards(t, 0.5)[0], [-5.0, -9.5])
  r_inf = ra3_estep.rewards(t, math.inf)[0]
  assert r_inf[0] == -5.0 and r_inf[1] == -math.inf


def test_policy_rows_mark_decisions_and_rationales_only():
  a = _hand_annotation()
  b = ra.policy_rows([a], np.array([1.5]), np.array([7]), think_id=THINK, seq_len=16)
  seq = a.sequence
  np.testing.assert_array_equal(b["inputs"][0, :len(seq) - 1], seq[:-1])
  # emitted token t is the target of input position len(prompt) - 1 + t = 1 + t
  on = np.flatnonzero(b["mask"][0])
  np.testing.assert_array_equal(on, 1 + np.array([1, 3, 4, 5, 6]))
  assert b["targets"][0, 2] == -(THINK + 1)  # the continue decision
  np.testing.assert_array_equal(b["targets"][0, [4, 5, 6, 7]], [THINK, 25, 26, END])
  np.testing.assert_allclose(b["old_logp"][0, on], [-0.1, -2.0, -0.5, -0.25, -0.125])
  assert b["rewards"][0] == 1.5 and b["group_id"][0] == 7 and b["response_len"][0] == 5


def test_sample_boundaries():
  rng = np.random.default_rng(0)
  starts = np.array([0, 4, 9, 13, 20], np.int32)
  np.testing.assert_array_equal(ra3_estep.sample_boundaries(starts, 0, rng), starts)
  np.testing.assert_array_equal(ra3_estep.sample_boundaries(starts, 9, rng), starts)
  got = ra3_estep.sample_boundaries(starts, 3, rng)
  assert len(got) == 3 and set(got) <= set(starts) and list(got) == sorted(got)


def test_log1mexp_is_accurate_and_its_gradient_finite():
  x = np.array([-1e-9, -1e-4, -0.1, -0.69, -0.7, -5.0, -30.0], np.float32)
  want = np.log(-np.expm1(x.astype(np.float64)))
  np.testing.assert_allclose(np.asarray(step_lib.log1mexp(jnp.asarray(x))), want, rtol=1e-5,
                             atol=1e-15)
  # a complement target on a token the model is sure of, and ordinary targets at logp ~ 0:
  # value and gradient stay finite (no inf * 0 through the unselected branch)
  g = jax.grad(lambda v: jnp.sum(step_lib.log1mexp(v)))(jnp.asarray([0.0, -1e-12, -3.0]))
  assert np.all(np.isfinite(np.asarray(g)))
