"""RL policy losses, presets and registries (agentic_jax.objectives.rl) against values computed by
hand (tests/rl_reference.py or literals with the arithmetic in a comment), never taken from the
implementation's output."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax.objectives import rl
from tests.rl_reference import (FLOW_G, FLOW_MASK, FLOW_R, FLOW_T, FLOW_TURN, LN2, close,
                                hand_group_adv, hand_k3, hand_token_loss)


# --- policy losses ------------------------------------------------------------------------------

# 2 groups x 2 samples x 3 tokens; the last token of rows 2 and 3 is padding.
RATIO = [[1.5, 1.1, 1.0], [0.5, 0.9, 1.3], [1.25, 0.7, 1.0], [4.0, 1.0, 1.0]]
MASK = [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]]
OLD = [[-1.0, -2.0, -0.5], [-1.5, -1.0, -2.0], [-0.3, -1.0, -0.7], [-2.0, -1.0, -0.9]]
XREF = [[0.0, LN2, 0.0], [-LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]  # logp - ref_logp
ADV = [1.0, -1.0, 2.0, -0.5]
LOGP = [[o + math.log(r) for o, r in zip(orow, rrow)] for orow, rrow in zip(OLD, RATIO)]
REF = [[lp - x for lp, x in zip(lrow, xrow)] for lrow, xrow in zip(LOGP, XREF)]
J = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731


def hand_loss_matrix(eps_lo, eps_hi, c=None, ratio=RATIO, adv=ADV):
  return [[hand_token_loss(r, a, eps_lo, eps_hi, c) for r in row] for row, a in zip(ratio, adv)]


def hand_agg(mat, mask, mode):
  if mode == "token-mean":
    num = sum(v * m for row, mrow in zip(mat, mask) for v, m in zip(row, mrow))
    return num / sum(sum(mrow) for mrow in mask)
  if mode == "seq-mean-token-mean":
    means = [sum(v * m for v, m in zip(row, mrow)) / sum(mrow) for row, mrow in zip(mat, mask)]
    return sum(means) / len(means)
  raise AssertionError(mode)


def test_hand_loss_matrix_literal():
  # eps 0.2: row0 A=1: r 1.5 clipped to 1.2 -> -1.2; -1.1; -1. row1 A=-1: r 0.5 clipped to
  # 0.8 -> 0.8; 0.9; r 1.3 (A<0 takes the larger -A r) -> 1.3. row2 A=2: r 1.25 -> -2.4;
  # r 0.7 -> max(-1.4, -1.6) = -1.4. row3 A=-0.5: r 4 -> max(2, 0.6) = 2; r 1 -> 0.5.
  want = [[-1.2, -1.1, -1.0], [0.8, 0.9, 1.3], [-2.4, -1.4, -1.0 * 2], [2.0, 0.5, 0.5]]
  close(hand_loss_matrix(0.2, 0.2), want)
  # dual clip c=3 caps row3's r=4 token at -c A = 1.5.
  assert hand_loss_matrix(0.2, 0.2, c=3.0)[3][0] == 1.5


def test_grpo_loss_by_hand():
  obj = rl.rl_loss("grpo")
  assert obj.options["agg"] == "seq-mean-token-mean" and obj.options["kl_coef"] == 0.04
  loss, metrics = jax.jit(obj.loss)(J(LOGP), J(OLD), J(ADV), J(MASK), ref_logp=J(REF))
  mat = hand_loss_matrix(0.2, 0.2)
  pg = hand_agg(mat, MASK, "seq-mean-token-mean")
  # row means -1.1, 1.0, -1.9, 1.25 -> -0.75 / 4
  close(pg, -0.1875)
  kl = hand_agg([[hand_k3(x) for x in row] for row in XREF], MASK, "seq-mean-token-mean")
  close(metrics["pg_loss"], pg)
  close(metrics["kl_loss"], kl)
  close(loss, pg + 0.04 * kl)
  # Clipped tokens among the 10 masked: high row0 t0 (1.5) and row2 t0 (1.25); low row1 t0.
  close(metrics["clipfrac_high"], 0.2)
  close(metrics["clipfrac_low"], 0.1)
  close(metrics["clipfrac"], 0.3)
  close(metrics["dual_clipfrac"], 0.0)
  close(metrics["ratio_mean"], (1.5 + 1.1 + 1 + 0.5 + 0.9 + 1.3 + 1.25 + 0.7 + 4 + 1) / 10)
  close(metrics["approx_kl"], -sum(math.log(r) for row, mrow in zip(RATIO, MASK)
                                   for r, m in zip(row, mrow) if m) / 10)
  close(metrics["kl_ref"], sum(hand_k3(x) for row in XREF for x in row) / 10)
  assert float(metrics["num_tokens"]) == 10


def test_dapo_clip_higher_token_mean():
  obj = rl.rl_loss("dapo")
  loss, metrics = obj.loss(J(LOGP), J(OLD), J(ADV), J(MASK), ref_logp=J(REF))
  # eps_hi 0.28: row0's r=1.5 clips at 1.28 (-1.28) and row2's r=1.25 is no longer clipped
  # (-2.5). Token sum over the 10 tokens:
  # (-1.28-1.1-1) + (0.8+0.9+1.3) + (-2.5-1.4) + (2+0.5) = -1.78 -> -0.178. No KL term.
  close(hand_agg(hand_loss_matrix(0.2, 0.28), MASK, "token-mean"), -0.178)
  close(loss, -0.178)
  close(metrics["clipfrac_high"], 0.1)
  assert "kl_loss" not in metrics
  assert obj.options["dynamic_sampling"] and obj.options["overlong"] == "shape"


def test_dr_grpo_sum_norm_and_advantages():
  obj = rl.rl_loss("dr_grpo", norm_constant=5)
  # Row sums (eps 0.2): -3.3, 3.0, -3.8, 2.5 -> -1.6; / L_const 5 / 4 rows.
  loss, _ = obj.loss(J(LOGP), J(OLD), J(ADV), J(MASK))
  close(loss, -1.6 / 5 / 4)
  loss_pad, _ = rl.rl_loss("dr_grpo").loss(J(LOGP), J(OLD), J(ADV), J(MASK))
  close(loss_pad, -1.6 / 3 / 4)  # default L_const = padded length 3
  loss_verl, _ = rl.rl_loss("dr_grpo", "verl").loss(J(LOGP), J(OLD), J(ADV), J(MASK))
  close(loss_verl, -1.6 / 3)
  # Advantages: R - group mean, no std.
  adv = obj.advantages(jnp.asarray([1.0, 0.0, 0.0, 0.0]), jnp.asarray([0, 0, 1, 1]))
  close(adv, [0.5, -0.5, 0.0, 0.0])


def test_dual_clip_and_other_aggregations_through_options():
  opts = {"dual_clip_c": 3.0, "kl": "none", "kl_coef": 0.0}
  mat = hand_loss_matrix(0.2, 0.2, c=3.0)
  for mode in ("token-mean", "seq-mean-token-mean"):
    loss, metrics = rl.get_policy_loss("grpo")(J(LOGP), J(OLD), J(ADV), J(MASK),
                                              options={**opts, "agg": mode})
    close(loss, hand_agg(mat, MASK, mode))
    close(metrics["dual_clipfrac"], 0.1)
  with pytest.raises(ValueError, match="'clip_eps'"):
    rl.get_policy_loss("grpo")(J(LOGP), J(OLD), J(ADV), J(MASK), options={"clip_eps": 0.1})


def test_gradient_wrt_logp_by_hand():
  obj = rl.rl_loss("grpo", agg="token-mean", kl="none", kl_coef=0.0)
  grad = jax.jit(jax.grad(lambda lp: obj.loss(lp, J(OLD), J(ADV), J(MASK))[0]))(J(LOGP))
  # d/dlogp of -A r is -A r (dr/dlogp = r); clipped tokens have zero gradient; /10 tokens.
  want = [[0.0, -1.1, -1.0], [0.0, 0.9, 1.3], [0.0, -1.4, 0.0], [2.0, 0.5, 0.0]]
  close(grad, np.asarray(want) / 10)
  dual = rl.rl_loss("grpo", agg="token-mean", kl="none", kl_coef=0.0, dual_clip_c=3.0)
  grad = jax.jit(jax.grad(lambda lp: dual.loss(lp, J(OLD), J(ADV), J(MASK))[0]))(J(LOGP))
  want[3][0] = 0.0  # the dual-clipped token is constant
  close(grad, np.asarray(want) / 10)


def test_masked_tokens_do_not_matter():
  obj = rl.rl_loss("grpo", entropy_coef=0.01)
  ent = J([[1.0, 2.0, 3.0]] * 4)
  base, m0 = obj.loss(J(LOGP), J(OLD), J(ADV), J(MASK), ref_logp=J(REF), entropy=ent)
  off = np.asarray(MASK) == 0
  junk = lambda a, v: jnp.where(jnp.asarray(off), v, J(a))  # noqa: E731
  tok_adv = jnp.where(jnp.asarray(off), jnp.nan, J(np.asarray(ADV)[:, None] * np.ones((4, 3))))
  fn = lambda lp: obj.loss(lp, junk(OLD, jnp.inf), tok_adv, J(MASK), ref_logp=junk(REF, -jnp.inf),  # noqa: E731
                           entropy=junk(ent, jnp.nan))
  loss, m1 = fn(junk(LOGP, jnp.nan))
  close(loss, base)
  for k in m0:
    close(m1[k], m0[k])
  grad = jax.grad(lambda lp: fn(lp)[0])(junk(LOGP, jnp.nan))
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[off] == 0)
  # Entropy: masked mean (1+2+3)*2+(1+2)*2 = 18 over 10 tokens, bonus -0.01*agg(entropy).
  close(m0["entropy"], 1.8)
  plain, _ = rl.rl_loss("grpo").loss(J(LOGP), J(OLD), J(ADV), J(MASK), ref_logp=J(REF))
  close(base, plain - 0.01 * (2.0 + 2.0 + 1.5 + 1.5) / 4)


# Masked ratios hold junk on purpose (FLOW_MASK: tests/rl_reference.py).
FLOW_RATIO = [[1.1, 1.5, 9.0, 1.0], [0.9, 0.6, 1.25, 1.0], [1.35, 7.0, 0.75, 1.0],
              [1.0, 1.1, 0.5, 1.0], [0.8, 1.0, 1.0, 1.0], [1.2, 0.95, 1.0, 1.0],
              [1.4, 0.7, 1.05, 1.0], [3.0, 0.85, 1.5, 1.0]]
FLOW_X = [[0.1 * ((i + t) % 3 - 1) for t in range(4)] for i in range(8)]


def _flow_inputs():
  old = [[-1.0 - 0.1 * t for t in range(4)] for _ in range(8)]
  logp = [[o + math.log(r) for o, r in zip(orow, rrow)] for orow, rrow in zip(old, FLOW_RATIO)]
  ref = [[lp - x for lp, x in zip(lrow, xrow)] for lrow, xrow in zip(logp, FLOW_X)]
  return J(logp), J(old), J(ref)


def test_flow_grpo_paper_by_hand():
  obj = rl.rl_loss("flow_grpo", "paper")
  g, t = jnp.asarray(FLOW_G), jnp.asarray(FLOW_T)
  adv = obj.advantages(jnp.asarray(FLOW_R), g, traj_id=t)
  logp, old, ref = _flow_inputs()
  loss_fn = jax.jit(obj.loss)  # one compile per shape is cheaper than eager dispatch here
  loss, metrics = loss_fn(logp, old, adv, J(FLOW_MASK), ref_logp=ref, group_id=g, traj_id=t)
  # (1/Q) sum_q (1/G) sum_i (1/T_i) sum_t (1/|a|) sum_j [l + beta k3], with trajectory stats.
  hadv = hand_group_adv(FLOW_R, FLOW_G, FLOW_T, by="trajectory", ddof=1)
  groups = sorted(set(FLOW_G))
  total = 0.0
  for q in groups:
    trajs = sorted({FLOW_T[i] for i in range(8) if FLOW_G[i] == q})
    per_traj = 0.0
    for tr in trajs:
      rows = [i for i in range(8) if FLOW_G[i] == q and FLOW_T[i] == tr]
      per_turn = 0.0
      for i in rows:
        toks = [j for j in range(4) if FLOW_MASK[i][j]]
        per_turn += sum(hand_token_loss(FLOW_RATIO[i][j], hadv[i], 0.2, 0.2)
                        + 0.001 * hand_k3(FLOW_X[i][j]) for j in toks) / len(toks)
      per_traj += per_turn / len(rows)
    total += per_traj / len(trajs)
  close(loss, total / len(groups))
  # Micro-batches with the whole batch's weights add up to the same loss.
  w = obj.token_weights(J(FLOW_MASK), group_id=g, traj_id=t)
  parts = [loss_fn(logp[s], old[s], adv[s], J(FLOW_MASK)[s], ref_logp=ref[s],
                   token_weights=w[s])[0] for s in (slice(0, 3), slice(3, 8))]
  close(parts[0] + parts[1], loss)
  assert float(metrics["num_tokens"]) == sum(map(sum, FLOW_MASK))


def test_flow_grpo_code_by_hand():
  obj = rl.rl_loss("flow_grpo", "code")
  o = obj.options
  assert (o["group_by"], o["agg"], o["clip_eps_low"], o["clip_eps_high"], o["dual_clip_c"],
          o["kl"], o["kl_coef"], o["kl_where"]) == ("sample", "token-mean", 0.2, 0.3, 3.0, "k3",
                                                    0.001, "loss")
  g, t = jnp.asarray(FLOW_G), jnp.asarray(FLOW_T)
  adv = obj.advantages(jnp.asarray(FLOW_R), g, traj_id=t)
  hadv = hand_group_adv(FLOW_R, FLOW_G, by="sample", ddof=1)
  close(adv, hadv)
  logp, old, ref = _flow_inputs()
  loss, _ = obj.loss(logp, old, adv, J(FLOW_MASK), ref_logp=ref, group_id=g, traj_id=t)
  num, den = 0.0, 0
  for i in range(8):
    for j in range(4):
      if FLOW_MASK[i][j]:
        num += hand_token_loss(FLOW_RATIO[i][j], hadv[i], 0.2, 0.3, 3.0) + 0.001 * hand_k3(FLOW_X[i][j])
        den += 1
  close(loss, num / den)
  paper, _ = rl.rl_loss("flow_grpo").loss(logp, old, adv, J(FLOW_MASK), ref_logp=ref,
                                          group_id=g, traj_id=t)
  assert abs(float(paper) - float(loss)) > 1e-3  # the two weightings really differ here


def test_jit_matches_eager():
  obj = rl.rl_loss("flow_grpo")
  g, t = jnp.asarray(FLOW_G), jnp.asarray(FLOW_T)
  logp, old, ref = _flow_inputs()

  def step(r, lp):
    adv = obj.advantages(r, g, traj_id=t)
    return obj.loss(lp, old, adv, J(FLOW_MASK), ref_logp=ref, group_id=g, traj_id=t)

  eager, _ = step(jnp.asarray(FLOW_R), logp)
  jitted, metrics = jax.jit(step)(jnp.asarray(FLOW_R), logp)
  close(jitted, eager)
  assert set(metrics) >= {"loss", "pg_loss", "kl_loss", "clipfrac_low", "clipfrac_high",
                          "approx_kl", "ratio_mean", "kl_ref", "num_tokens"}


# --- config entry point and registries ----------------------------------------------------------

def test_rl_loss_resolution_and_errors():
  for name in ("grpo", "dapo", "dr_grpo", "flow_grpo"):
    for preset in [None] + sorted(rl.PRESETS[name]):
      assert set(rl.rl_loss(name, preset).options) == set(rl.BASE_OPTIONS)
  # preset < explicit option
  assert rl.rl_loss("flow_grpo", "code", clip_eps_high=0.25).options["clip_eps_high"] == 0.25
  tcr = rl.rl_loss("dapo", "grpo_tcr").options
  assert tcr["dual_clip_c"] == 10.0 and not tcr["dynamic_sampling"] and tcr["kl"] == "none"
  paper = rl.rl_loss("flow_grpo").options
  assert paper["group_by"] == "trajectory" and paper["agg"] == "group-traj-turn-token-mean"
  with pytest.raises(ValueError, match="'ppo'"):
    rl.rl_loss("ppo")
  with pytest.raises(ValueError, match="'nope'"):
    rl.rl_loss("flow_grpo", "nope")
  with pytest.raises(ValueError, match="clip_ratio"):
    rl.rl_loss("grpo", clip_ratio=0.2)
  with pytest.raises(ValueError, match="'agg'.*'token_mean'"):
    rl.rl_loss("grpo", agg="token_mean")
  with pytest.raises(ValueError, match="'std_ddof'"):
    rl.rl_loss("grpo", std_ddof=2)
  with pytest.raises(ValueError, match="kl_coef"):
    rl.rl_loss("dapo", kl_coef=0.1)  # dapo has kl="none"
  with pytest.raises(ValueError, match="'advantage'"):
    rl.rl_loss("grpo", advantage="gae")
  with pytest.raises(ValueError, match="ref_logp"):
    rl.rl_loss("grpo").loss(J(LOGP), J(OLD), J(ADV), J(MASK))
  with pytest.raises(ValueError, match="entropy"):
    rl.rl_loss("dapo", entropy_coef=0.1).loss(J(LOGP), J(OLD), J(ADV), J(MASK))


def test_registries_accept_new_entries():
  @rl.register_advantage("test_only_raw")
  def raw(rewards, group_id, **kwargs):
    del group_id, kwargs
    return jnp.asarray(rewards, jnp.float32)

  @rl.register_policy_loss("test_only_loss", defaults={"agg": "token-mean", "advantage": "test_only_raw"})
  def mine(logp, old_logp, advantages, mask, *, options, **inputs):
    return rl.clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)

  obj = rl.rl_loss("test_only_loss")
  close(obj.advantages(jnp.asarray([3.0, 4.0]), jnp.asarray([0, 0])), [3.0, 4.0])
  with pytest.raises(ValueError, match="already registered"):
    rl.register_advantage("grpo")(raw)
  with pytest.raises(ValueError, match="already registered"):
    rl.register_policy_loss("grpo")(mine)


def _valid_batch():
  n = len(FLOW_G)
  return {"group_id": np.asarray(FLOW_G), "traj_id": np.asarray(FLOW_T),
          "turn_index": np.asarray(FLOW_TURN), "rewards": np.asarray(FLOW_R),
          "logp": np.full((n, 4), -1.0), "old_logp": np.full((n, 4), -1.0),
          "mask": np.asarray(FLOW_MASK, np.float32)}


def test_validate_rollout_batch():
  stats = rl.validate_rollout_batch(_valid_batch())
  assert stats == {"rows": 8, "trajectories": 5, "groups": 2, "tokens": 19,
                   "rows_without_tokens": 0}
  bad = _valid_batch()
  bad["turn_index"] = np.asarray([0, 0, 2, 0, 3, 0, 1, 0])
  with pytest.raises(ValueError, match=r"'turn_index'.*group_id=0, traj_id=0.*\[0, 2, 3\]"):
    rl.validate_rollout_batch(bad)
  bad = _valid_batch()
  bad["rewards"] = np.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
  with pytest.raises(ValueError, match="'rewards'.*one outcome reward"):
    rl.validate_rollout_batch(bad)
  bad = _valid_batch()
  bad["mask"][2, 1] = 0.5
  with pytest.raises(ValueError, match="'mask': row 2 token 1"):
    rl.validate_rollout_batch(bad)
  bad = _valid_batch()
  bad["old_logp"][1, 3] = np.nan
  with pytest.raises(ValueError, match="'old_logp': row 1 token 3"):
    rl.validate_rollout_batch(bad)
  bad = _valid_batch()
  bad["logp"][0, 2] = np.nan  # masked-out token: allowed
  bad["ref_logp"] = np.zeros((8, 3))
  with pytest.raises(ValueError, match=r"'ref_logp'.*\[8, 4\]"):
    rl.validate_rollout_batch(bad)
  bad = _valid_batch()
  del bad["traj_id"]
  with pytest.raises(ValueError, match="'traj_id': missing"):
    rl.validate_rollout_batch(bad)
