"""RA3 math (agentic_jax/objectives/ra3.py) on a toy example with hand-written probabilities.

Toy: one sequence, 2 boundaries, 3 proposals per boundary (proposal 0 = continue, 1 and 2 = new
rationales). Per-token log-probs of the expert action under each proposal are chosen by hand; every
expected value below is worked out with plain Python floats, never by calling the code under test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax.objectives import ra3

NEG_INF = float("-inf")
# [T=2 boundaries, G=3 proposals, L=3 action tokens]; boundary 0's action has 2 tokens (3rd padded
# with -inf, which the mask must ignore without producing NaN), boundary 1's action has 3.
TOKEN_LOGP = [
    [[-1.0, -2.0, NEG_INF], [-0.5, -1.0, NEG_INF], [-2.0, -2.5, NEG_INF]],
    [[-0.2, -0.3, -0.5], [-0.1, -0.1, -0.1], [-0.4, -0.4, -0.4]],
]
TOKEN_MASK = [[[1, 1, 0]] * 3, [[1, 1, 1]] * 3]
IS_NEW = [[False, True, True], [False, True, True]]
C = 0.5
# by hand: action log-probs
ACTION_LOGP = [[-3.0, -1.5, -4.5], [-1.0, -0.3, -1.2]]
# rewards: continue pays nothing, a new rationale pays c = 0.5
REWARDS = [[-3.0, -2.0, -5.0], [-1.0, -0.8, -1.7]]


def arr(x, dtype=jnp.float32):
  return jnp.asarray(x, dtype)


def test_action_logprob_sums_masked_tokens():
  got = ra3.action_logprob(arr(TOKEN_LOGP), arr(TOKEN_MASK, jnp.int32))
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(np.asarray(got), ACTION_LOGP, atol=1e-6)


def test_estep_reward_continue_free_new_pays_c():
  got = ra3.estep_reward(arr(ACTION_LOGP), jnp.asarray(IS_NEW), C)
  np.testing.assert_allclose(np.asarray(got), REWARDS, atol=1e-6)
  # continue semantics: a continue's reward does not depend on c at all
  for c in (0.0, 3.0, 1e9):
    r = np.asarray(ra3.estep_reward(arr(ACTION_LOGP), jnp.asarray(IS_NEW), c))
    assert r[0, 0] == pytest.approx(-3.0) and r[1, 0] == pytest.approx(-1.0)
    assert r[0, 1] == pytest.approx(-1.5 - c, rel=1e-6)


def test_estep_reward_infinite_cost():
  r = np.asarray(ra3.estep_reward(arr(ACTION_LOGP), jnp.asarray(IS_NEW), jnp.inf))
  assert not np.any(np.isnan(r))
  assert r[0, 0] == pytest.approx(-3.0) and r[1, 0] == pytest.approx(-1.0)
  assert np.all(r[:, 1:] == -np.inf)


def test_group_advantages_mean_centred():
  # boundary 0: mean of (-3, -2, -5) = -10/3; boundary 1: mean of (-1, -0.8, -1.7) = -3.5/3
  m0, m1 = -10.0 / 3.0, -3.5 / 3.0
  want = [[-3.0 - m0, -2.0 - m0, -5.0 - m0], [-1.0 - m1, -0.8 - m1, -1.7 - m1]]
  got = np.asarray(ra3.group_advantages(arr(REWARDS)))
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(got.sum(axis=-1), [0.0, 0.0], atol=1e-6)


def test_group_advantages_std_options():
  m0 = -10.0 / 3.0
  dev = [-3.0 - m0, -2.0 - m0, -5.0 - m0]
  ss = sum(d * d for d in dev)  # 42/9
  unbiased = math.sqrt(ss / 2.0)
  population = math.sqrt(ss / 3.0)
  got_u = np.asarray(ra3.group_advantages(arr(REWARDS[0]), std="unbiased"))
  got_p = np.asarray(ra3.group_advantages(arr(REWARDS[0]), std="population"))
  np.testing.assert_allclose(got_u, [d / (unbiased + 1e-6) for d in dev], rtol=1e-5)
  np.testing.assert_allclose(got_p, [d / (population + 1e-6) for d in dev], rtol=1e-5)
  # identical rewards (all-continue group): advantages 0, no blow-up
  np.testing.assert_allclose(np.asarray(ra3.group_advantages(arr([-2.0] * 3), std="unbiased")),
                             [0.0] * 3, atol=1e-6)
  # a group of one: the registry's convention (mean 0, std 1), as in every RL loss here
  np.testing.assert_allclose(np.asarray(ra3.group_advantages(arr([[4.0]]), std="unbiased")),
                             [[4.0 / (1.0 + 1e-6)]], rtol=1e-6)
  with pytest.raises(ValueError):
    ra3.group_advantages(arr(REWARDS), std="mad")


def test_choose_latents():
  # boundary 0: rewards (-3, -2, -5) -> new rationale 1; boundary 1: (-1, -0.8, -1.7) -> 1
  assert np.asarray(ra3.choose_latents(arr(REWARDS))).tolist() == [1, 1]
  # with c = 1.0: boundary 0's new rationale (-1.5 - 1 = -2.5) beats continue (-3.0), boundary 1's
  # (-0.3 - 1 = -1.3) loses to continue (-1.0)
  r = ra3.estep_reward(arr(ACTION_LOGP), jnp.asarray(IS_NEW), 1.0)
  assert np.asarray(ra3.choose_latents(r)).tolist() == [1, 0]
  # with c = 1.5, boundary 0 ties (-1.5 - 1.5 = -3.0 = continue): the tie goes to the continue
  r = ra3.estep_reward(arr(ACTION_LOGP), jnp.asarray(IS_NEW), 1.5)
  assert np.asarray(ra3.choose_latents(r)).tolist() == [0, 0]
  # ties go to the first (continue) proposal
  assert int(ra3.choose_latents(arr([-1.0, -1.0, -2.0]))) == 0


def test_latent_log_prior():
  lp = np.asarray(ra3.latent_log_prior(jnp.asarray([False, True]), 0.8))
  np.testing.assert_allclose(lp, [math.log(0.8), math.log(0.2)], rtol=1e-6)
  lp = np.asarray(ra3.latent_log_prior(jnp.asarray([False, True]), 0.8, arr([7.0, 3.0]), 10))
  # the length term applies to new rationales only
  np.testing.assert_allclose(lp, [math.log(0.8), math.log(0.2) - 3 * math.log(10)], rtol=1e-6)
  lp = np.asarray(ra3.latent_log_prior(jnp.asarray([False, True]), 1.0))
  assert lp[0] == 0.0 and lp[1] == -np.inf
  with pytest.raises(ValueError):
    ra3.latent_log_prior(jnp.asarray([True]), 1.5)


def test_bound_terms_by_hand():
  # chosen: new rationale 1 at both boundaries (lengths 2 and 3 tokens), a padded third boundary
  action_logp = arr([[-1.5, -0.3, 123.0]])
  is_new = jnp.asarray([[True, True, True]])
  q_logp = arr([[-1.2, -0.7, 55.0]])
  mask = jnp.asarray([[1, 1, 0]])
  lens = arr([[2.0, 3.0, 9.0]])
  p_keep = 0.8
  ll = -1.5 + -0.3
  lprior = 2 * math.log(0.2)
  lpost = -1.2 + -0.7
  kl = lpost - lprior
  want = {"log_likelihood": ll, "log_prior": lprior, "log_posterior": lpost, "kl": kl,
          "elbo": ll - kl, "num_new": 2.0, "cost": 1.0, "surrogate": (-1.5 - 0.5) + (-0.3 - 0.5)}
  got = ra3.bound_terms(action_logp, is_new, q_logp, mask, c=C, p_keep=p_keep)
  assert set(got) == set(want)
  for k, v in want.items():
    assert float(got[k][0]) == pytest.approx(v, rel=1e-5, abs=1e-6), k
  # with a uniform-token prior over V = 10 tokens, new rationales cost n*log(10) more prior mass
  got = ra3.bound_terms(action_logp, is_new, q_logp, mask, c=C, p_keep=p_keep,
                        rationale_len=lens, prior_vocab_size=10)
  lprior_v = 2 * math.log(0.2) - (2 + 3) * math.log(10)
  assert float(got["log_prior"][0]) == pytest.approx(lprior_v, rel=1e-5)
  assert float(got["elbo"][0]) == pytest.approx(ll - (lpost - lprior_v), rel=1e-5)


def test_bound_terms_mixed_continue_new():
  # continue at boundary 0 (log q(continue) = log 0.9), new at boundary 1 (log q = -0.7)
  got = ra3.bound_terms(arr([[-3.0, -0.3]]), jnp.asarray([[False, True]]),
                        arr([[math.log(0.9), -0.7]]), jnp.asarray([[1, 1]]), c=C, p_keep=0.8)
  ll = -3.3
  lprior = math.log(0.8) + math.log(0.2)
  lpost = math.log(0.9) - 0.7
  assert float(got["log_prior"][0]) == pytest.approx(lprior, rel=1e-5)
  assert float(got["elbo"][0]) == pytest.approx(ll - (lpost - lprior), rel=1e-5)
  assert float(got["num_new"][0]) == 1.0
  assert float(got["cost"][0]) == pytest.approx(0.5)
  assert float(got["surrogate"][0]) == pytest.approx(-3.0 + (-0.3 - 0.5), rel=1e-5)


def test_mstep_loss_by_hand():
  # V = 2, logits (0, log 3): p(token 1) = 3/4, p(token 0) = 1/4
  logits = arr([[[0.0, math.log(3.0)]] * 4])
  targets = jnp.asarray([[1, 0, 1, 1]])
  action = jnp.asarray([[1, 1, 0, 0]])
  rationale = jnp.asarray([[0, 0, 1, 0]])  # last position: padding
  want_actions = (-math.log(0.75) - math.log(0.25)) / 2
  want_all = (-math.log(0.75) - math.log(0.25) - math.log(0.75)) / 3
  got_a = float(ra3.mstep_loss(logits, targets, action, rationale, train_rationale=False))
  got_b = float(ra3.mstep_loss(logits, targets, action, rationale, train_rationale=True))
  assert got_a == pytest.approx(want_actions, rel=1e-5)
  assert got_b == pytest.approx(want_all, rel=1e-5)
  got_n = float(ra3.mstep_loss(logits, targets, action, rationale, train_rationale=False,
                               normalizer=4.0))
  assert got_n == pytest.approx(want_actions * 2 / 4, rel=1e-5)


# ---- c -> infinity: RA3 is next-token training ---------------------------------------------

V, D = 7, 5
TOKENS = [3, 1, 4, 1, 5, 2, 6, 0, 2]  # an expert sequence (no rationale tokens)
ACTION_MASK = [0, 1, 1, 1, 1, 1, 1, 1]  # target mask: the first target is prompt


def toy_logits(params, tokens):
  emb, out = params
  return emb[tokens] @ out  # [L, V]


def independent_ntp_loss(params, tokens, target_mask):
  """Next-token cross-entropy written without the code under test."""
  logits = toy_logits(params, tokens[:-1])
  z = logits - jnp.max(logits, axis=-1, keepdims=True)
  logsm = z - jnp.log(jnp.sum(jnp.exp(z), axis=-1, keepdims=True))
  nll = -jnp.take_along_axis(logsm, tokens[1:, None], axis=-1)[:, 0]
  return jnp.sum(nll * target_mask) / jnp.sum(target_mask)


def annotate(tokens, chosen_new, rationales):
  """Inserts each chosen new rationale before its action (here one action = one token) and
  returns (tokens, action target mask, rationale target mask)."""
  out, act, rat = [tokens[0]], [], []
  for t, tok in enumerate(tokens[1:]):
    if chosen_new[t]:
      for r in rationales[t]:
        out.append(r)
        act.append(0)
        rat.append(1)
    out.append(tok)
    act.append(ACTION_MASK[t])
    rat.append(0)
  return out, act, rat


@pytest.mark.parametrize("train_rationale", [False, True])
def test_infinite_cost_reduces_to_next_token(train_rationale):
  key1, key2, key3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = (jax.random.normal(key1, (V, D)), jax.random.normal(key2, (D, V)))
  T, G = len(TOKENS) - 1, 4
  # E-step at every boundary: proposal 0 continues (empty rationale), 1..3 propose new ones whose
  # action log-likelihoods are far better than the continue's.
  cont = jax.random.uniform(key3, (T, 1), minval=-5.0, maxval=-1.0)
  action_logp = jnp.concatenate([cont, jnp.zeros((T, G - 1))], axis=-1)
  is_new = jnp.asarray([[False] + [True] * (G - 1)] * T)
  # with finite c the new rationales win...
  assert np.all(np.asarray(ra3.choose_latents(ra3.estep_reward(action_logp, is_new, 0.1))) > 0)
  # ...with c = inf the continue wins everywhere
  chosen = np.asarray(ra3.choose_latents(ra3.estep_reward(action_logp, is_new, jnp.inf)))
  assert chosen.tolist() == [0] * T
  chosen_new = [bool(np.asarray(is_new)[t, chosen[t]]) for t in range(T)]
  seq, act, rat = annotate(TOKENS, chosen_new, {t: [6, 6] for t in range(T)})
  assert seq == TOKENS and sum(rat) == 0

  tokens = jnp.asarray(seq)

  def ra3_loss(p):
    logits = toy_logits(p, tokens[:-1])[None]
    return ra3.mstep_loss(logits, tokens[None, 1:], jnp.asarray([act]), jnp.asarray([rat]),
                          train_rationale=train_rationale)

  mask = jnp.asarray(ACTION_MASK, jnp.float32)
  want_loss, want_grad = jax.value_and_grad(independent_ntp_loss)(params, tokens, mask)
  got_loss, got_grad = jax.value_and_grad(ra3_loss)(params)
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
  for g, w in zip(got_grad, want_grad):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)

  # the bound: p_keep = 1 and a deterministic continue (log q = 0) leave exactly the NTP
  # log-likelihood of the actions
  chosen_logp = jnp.take_along_axis(action_logp, jnp.asarray(chosen)[:, None], axis=-1)[:, 0]
  terms = ra3.bound_terms(chosen_logp[None], jnp.zeros((1, T), bool), jnp.zeros((1, T)),
                          jnp.ones((1, T)), c=jnp.inf, p_keep=1.0)
  assert float(terms["kl"][0]) == 0.0 and float(terms["cost"][0]) == 0.0
  ntp_ll = float(np.sum(np.asarray(cont)))
  assert float(terms["elbo"][0]) == pytest.approx(ntp_ll, rel=1e-6)
  assert float(terms["surrogate"][0]) == pytest.approx(ntp_ll, rel=1e-6)


def test_finite_cost_rationale_mask_flag():
  """With rationales inserted, train_rationale decides whether their tokens are trained."""
  key1, key2 = jax.random.split(jax.random.PRNGKey(1))
  params = (jax.random.normal(key1, (V, D)), jax.random.normal(key2, (D, V)))
  chosen_new = [t in (1, 4) for t in range(len(TOKENS) - 1)]
  seq, act, rat = annotate(TOKENS, chosen_new, {1: [6, 6], 4: [6]})
  assert sum(rat) == 3 and len(seq) == len(TOKENS) + 3
  tokens = jnp.asarray(seq)
  logits = toy_logits(params, tokens[:-1])[None]
  act_m, rat_m = jnp.asarray([act], jnp.float32), jnp.asarray([rat], jnp.float32)
  only_actions = float(ra3.mstep_loss(logits, tokens[None, 1:], act_m, rat_m,
                                      train_rationale=False))
  both = float(ra3.mstep_loss(logits, tokens[None, 1:], act_m, rat_m, train_rationale=True))
  assert only_actions == pytest.approx(float(independent_ntp_loss(params, tokens, act_m[0])),
                                       rel=1e-6)
  assert both == pytest.approx(float(independent_ntp_loss(params, tokens, act_m[0] + rat_m[0])),
                               rel=1e-6)
  assert only_actions != pytest.approx(both)
