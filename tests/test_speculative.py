"""Speculative decoding with the MTP draft (issue 17 item 2; agentic_jax/sampling_speculative.py):
greedy output token for token equal to plain greedy decoding, with drafts that are mostly
rejected (random MTP) and mostly accepted (an MTP built to agree with the model); the sampled
acceptance rule against its analytic statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models, sampling, sampling_speculative

PROMPTS = [[5, 6, 7, 8, 9], [9, 10], [3, 4, 100]]


def _agreeing(cfg, seed=0, noise=0.0):
  """Variables where the main model is a bigram model (every decoder layer zeroed, so the logits
  at t are lm_head(norm(emb(t)))) and the MTP predicts the same bigram one step later (block
  zeroed = identity, eh_proj = [I; 0] on [enorm(emb); hnorm(h)]): depth 1 then drafts exactly
  what the model would say; `noise` on eh_proj makes it disagree sometimes."""
  v = models.init_variables(cfg, jax.random.key(seed))
  p = dict(v["params"])
  for name in list(p):
    if name.startswith("layers_"):
      p[name] = jax.tree.map(jnp.zeros_like, p[name])
  mtp = dict(p["mtp"])
  layer = dict(mtp["layers_0"])
  layer["block"] = jax.tree.map(jnp.zeros_like, layer["block"])
  d = cfg.hidden_size
  eye = jnp.concatenate([jnp.eye(d), jnp.zeros((d, d))], 0)
  rng = np.random.default_rng(seed)
  layer["eh_proj"] = {"kernel": eye + noise * jnp.asarray(rng.standard_normal((2 * d, d)),
                                                          jnp.float32)}
  layer["norm"] = p["norm"]
  mtp["layers_0"] = layer
  if "embed_tokens" in mtp:
    mtp["embed_tokens"] = p["embed_tokens"]
  p["mtp"] = mtp
  return {**v, "params": p}


@pytest.mark.parametrize("preset", ["deepseek_v3_tiny", "longcat_flash_tiny"])
def test_greedy_speculative_equals_plain_greedy(preset):
  cfg = models.presets.get(preset, num_mtp_layers=1)
  cases = [("random", models.init_variables(cfg, jax.random.key(1)), 3),
           ("agreeing", _agreeing(cfg), 4), ("noisy", _agreeing(cfg, noise=0.15), 2)]
  for name, variables, k in cases:
    plain = sampling.generate(cfg, variables, PROMPTS, 14)
    spec = sampling.generate(cfg, variables, PROMPTS, 14, draft="mtp", num_draft_tokens=k)
    assert spec == plain, name
    if name == "noisy":  # the same stop rule: eos at a token plain decoding emits mid-way
      eos = plain[0][6]
      assert (sampling.generate(cfg, variables, PROMPTS, 14, eos_id=eos, draft="mtp",
                                num_draft_tokens=k)
              == sampling.generate(cfg, variables, PROMPTS, 14, eos_id=eos)), name
    tokens, lengths = sampling.pad_prompts(PROMPTS)
    _, logp, _, stats = sampling_speculative.generate_arrays(
        cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(0),
        max_new_tokens=14, num_draft_tokens=k)
    _, plain_logp, _ = sampling.generate_arrays(
        cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(0),
        max_new_tokens=14)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(plain_logp), atol=2e-4)
    rate = int(stats["accepted"]) / int(stats["drafted"])
    if name == "agreeing":
      assert rate == 1.0 and int(stats["rounds"]) == -(-13 // (k + 1))
    if name == "noisy":
      assert 0.0 < rate < 1.0, rate


def test_draft_needs_an_mtp_module():
  cfg = models.presets.get("deepseek_v3_tiny")
  variables = models.init_variables(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match="num_mtp_layers"):
    sampling.generate(cfg, variables, PROMPTS, 4, draft="mtp")
  with pytest.raises(ValueError, match="draft"):
    sampling.generate(cfg, variables, PROMPTS, 4, draft="eagle")


def test_acceptance_rule_statistics_match_the_analytic_rule():
  """k = 2 drafts from q per row, 200k rows: the acceptance rate of draft 1 is
  sum_x min(p(x), q(x)); the first emitted token (draft if accepted, else the residual sample)
  is distributed as p; so is the second given an accepted first (p of position 2 here does not
  depend on the first token); a token-level rule that accepted every draft would give q."""
  rng = np.random.default_rng(0)
  v, n = 6, 200_000
  p1, p2, q1, q2 = (rng.dirichlet(np.ones(v) * 0.7) for _ in range(4))
  key = jax.random.key(0)
  kd1, kd2, ka = jax.random.split(key, 3)
  d1 = jax.random.categorical(kd1, jnp.log(jnp.asarray(q1)), shape=(n,))
  d2 = jax.random.categorical(kd2, jnp.log(jnp.asarray(q2)), shape=(n,))
  drafts = jnp.stack([d1, d2], 1).astype(jnp.int32)
  bonus = rng.dirichlet(np.ones(v))
  p = jnp.broadcast_to(jnp.asarray(np.stack([p1, p2, bonus]), jnp.float32), (n, 3, v))
  q = jnp.broadcast_to(jnp.asarray(np.stack([q1, q2]), jnp.float32), (n, 2, v))
  accepted, fallback = sampling_speculative.accept_drafts(p, q, drafts, ka)
  accepted, fallback, drafts = map(np.asarray, (accepted, fallback, drafts))
  se = lambda prob, m: 5 * np.sqrt(prob * (1 - prob) / m) + 1e-3  # noqa: E731  (5 sigma)
  for j, (pj, qj) in enumerate(((p1, q1), (p2, q2))):
    want = np.minimum(pj, qj).sum()
    assert abs(accepted[:, j].mean() - want) < se(want, n)
    first = np.where(accepted[:, j], drafts[:, j], fallback[:, j])
    freq = np.bincount(first, minlength=v) / n
    assert np.all(np.abs(freq - pj) < se(pj, n)), (j, freq, pj)
    assert np.max(np.abs(freq - qj)) > 0.05  # the test can tell p from q
    # per draft token: P(accept | d = x) = min(1, p(x) / q(x))
    for x in range(v):
      rows = drafts[:, j] == x
      want_x = min(1.0, pj[x] / qj[x])
      assert abs(accepted[rows, j].mean() - want_x) < se(want_x, rows.sum())
  # the second token of rows whose first draft passed
  both = accepted[:, 0]
  second = np.where(accepted[:, 1], drafts[:, 1], fallback[:, 1])[both]
  freq = np.bincount(second, minlength=v) / both.sum()
  assert np.all(np.abs(freq - p2) < se(p2, both.sum()))
  # the bonus column samples p of position k
  freq = np.bincount(fallback[:, 2], minlength=v) / n
  assert np.all(np.abs(freq - bonus) < se(bonus, n))


def test_sampled_speculative_matches_plain_decoding_distribution():
  """End to end at temperature 0.7 on the noisy agreeing model (a bigram model, so the
  marginals of the first two new tokens are exact sums over its matrix): 3000 rows of one
  prompt, decoded in lockstep with k = 2."""
  cfg = models.presets.get("deepseek_v3_tiny", num_mtp_layers=1)
  variables = _agreeing(cfg, noise=0.3)
  params = dict(variables["params"])  # sharper bigram rows, so 3000 samples resolve them
  params["lm_head"] = {"kernel": params["lm_head"]["kernel"] * 25.0}
  variables = {**variables, "params": params}
  temp, rows = 0.7, 3000
  vocab = jnp.arange(cfg.vocab_size)[:, None]
  logits = models.build(cfg).apply(variables, vocab)[:, 0]  # bigram: next-token logits of t
  bigram = np.asarray(jax.nn.softmax(logits / temp, -1), np.float64)
  prompt = [7, 8]
  m1 = bigram[prompt[-1]]
  m2 = m1 @ bigram
  tokens = jnp.asarray(np.tile(prompt, (rows, 1)), jnp.int32)
  lengths = jnp.full((rows,), 2, jnp.int32)
  out, _, _, stats = sampling_speculative.generate_arrays(
      cfg, variables, tokens, lengths, jax.random.key(3), max_new_tokens=3, num_draft_tokens=2,
      temperature=temp)
  out = np.asarray(out)
  assert 0 < int(stats["accepted"]) < int(stats["drafted"])
  for col, want in ((0, m1), (1, m2)):
    freq = np.bincount(out[:, col], minlength=cfg.vocab_size) / rows
    tv = 0.5 * np.abs(freq - want).sum()
    assert tv < 0.06, (col, tv)
    assert 0.5 * np.abs(want - bigram[prompt[0]] if col == 0 else want - m1).sum() > 0.2
