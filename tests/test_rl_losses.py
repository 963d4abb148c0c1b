"""RL advantages and losses (agentic_jax.objectives.rl) against values computed by hand.

Every expected value is derived here with plain Python loops (or written out as literals with
the arithmetic in a comment), never taken from the implementation's output."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax.objectives import rl

EPS = 1e-6
LN2 = math.log(2.0)


# --- hand reference (independent of the implementation) -----------------------------------------

def hand_token_loss(r, a, eps_lo, eps_hi, c=None):
  """max(-A r, -A clip(r)), then min(., -c A) where A < 0 (objectives-spec §0)."""
  clipped = min(max(r, 1.0 - eps_lo), 1.0 + eps_hi)
  loss = max(-a * r, -a * clipped)
  if c is not None and a < 0:
    loss = min(loss, -c * a)
  return loss


def hand_k3(x):
  x = min(max(x, -20.0), 20.0)
  return min(max(math.exp(-x) + x - 1.0, -10.0), 10.0)


def hand_mean_std(values, ddof):
  mean = sum(values) / len(values)
  if len(values) == 1:
    return 0.0, 1.0  # verl's singleton rule
  var = sum((v - mean) ** 2 for v in values) / (len(values) - ddof)
  return mean, math.sqrt(var)


def hand_group_adv(rewards, groups, trajs=None, by="sample", ddof=1, std_norm=True):
  """Per-row advantages: population = rows of the group, or one reward per trajectory."""
  out = []
  for r, g in zip(rewards, groups):
    if by == "sample":
      pop = [rewards[k] for k in range(len(rewards)) if groups[k] == g]
    else:
      seen = {}
      for k in range(len(rewards)):
        if groups[k] == g and trajs[k] not in seen:
          seen[trajs[k]] = rewards[k]
      pop = list(seen.values())
    mean, std = hand_mean_std(pop, ddof)
    out.append((r - mean) / (std + EPS) if std_norm else r - mean)
  return out


def close(actual, expected, tol=1e-5):
  np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                             rtol=tol, atol=tol)


# --- advantages ---------------------------------------------------------------------------------

# Two interleaved groups: group 0 rows hold rewards 0, 2, 4; group 1 rows hold 1, 1, 3, 3.
ADV_R = [0.0, 1.0, 2.0, 1.0, 4.0, 3.0, 3.0]
ADV_G = [0, 1, 0, 1, 0, 1, 1]


def test_grpo_advantages_ddof_1_and_0():
  # Group 0: mean 2, deviations -2, 0, 2, sum of squares 8 -> std 2 (ddof 1), sqrt(8/3) (ddof 0).
  # Group 1: mean 2, deviations -1, -1, 1, 1, sum of squares 4 -> sqrt(4/3) (ddof 1), 1 (ddof 0).
  s1 = math.sqrt(4 / 3)
  want1 = [-2 / (2 + EPS), -1 / (s1 + EPS), 0.0, -1 / (s1 + EPS), 2 / (2 + EPS), 1 / (s1 + EPS),
           1 / (s1 + EPS)]
  s0 = math.sqrt(8 / 3)
  want0 = [-2 / (s0 + EPS), -1 / (1 + EPS), 0.0, -1 / (1 + EPS), 2 / (s0 + EPS), 1 / (1 + EPS),
           1 / (1 + EPS)]
  close(want1, hand_group_adv(ADV_R, ADV_G, ddof=1))
  close(want0, hand_group_adv(ADV_R, ADV_G, ddof=0))
  grpo = rl.get_advantage("grpo")
  close(grpo(jnp.asarray(ADV_R), jnp.asarray(ADV_G), std_ddof=1), want1)
  close(grpo(jnp.asarray(ADV_R), jnp.asarray(ADV_G), std_ddof=0), want0)


def test_mean_only_estimators_and_rloo():
  r, g = jnp.asarray(ADV_R), jnp.asarray(ADV_G)
  dev = [-2.0, -1.0, 0.0, -1.0, 2.0, 1.0, 1.0]  # R - group mean (both means are 2)
  close(rl.get_advantage("grpo")(r, g, std_norm=False), dev)
  close(rl.get_advantage("dr_grpo")(r, g, std_norm=True), dev)  # never divides by std
  # RLOO: group 0 baselines (2+4)/2=3, (0+4)/2=2, (0+2)/2=1 -> -3, 0, 3;
  # group 1: a "1" sees (1+3+3)/3 = 7/3 -> -4/3, a "3" sees (1+1+3)/3 = 5/3 -> 4/3.
  close(rl.get_advantage("rloo")(r, g), [-3.0, -4 / 3, 0.0, -4 / 3, 3.0, 4 / 3, 4 / 3])


def test_singleton_group_and_sample_mask():
  r = jnp.asarray([5.0, 1.0, 3.0, 7.0])
  g = jnp.asarray([9, 4, 4, 4])
  keep = jnp.asarray([True, True, True, False])
  # Group 9 has one member: mean 0, std 1 -> 5/(1+eps). Group 4 without the masked row: [1, 3],
  # mean 2, ddof-1 std sqrt(2) -> -+1/sqrt(2); the masked row gets 0 and does not move the stats.
  s = math.sqrt(2.0)
  close(rl.get_advantage("grpo")(r, g, sample_mask=keep),
        [5 / (1 + EPS), -1 / (s + EPS), 1 / (s + EPS), 0.0])
  close(rl.get_advantage("grpo")(r, g, sample_mask=keep, std_ddof=0),
        [5 / (1 + EPS), -1 / (1 + EPS), 1 / (1 + EPS), 0.0])
  close(rl.get_advantage("rloo")(r, g, sample_mask=keep), [5.0, -2.0, 2.0, 0.0])


# Multi-turn batch, rows interleaved. Group 0: trajectory 0 ("a", 3 turns, R=1), trajectory 1
# ("b", 1 turn, R=0). Group 1: trajectory 0 ("c", 1 turn, R=0; same traj_id as "a" but another
# group), trajectory 1 ("d", 2 turns, R=1), trajectory 2 ("e", 1 turn, R=0).
FLOW_G = [0, 0, 0, 1, 0, 1, 1, 1]
FLOW_T = [0, 1, 0, 0, 0, 1, 1, 2]
FLOW_TURN = [0, 0, 1, 0, 2, 0, 1, 0]
FLOW_R = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
NAMES = ["a", "b", "a", "c", "a", "d", "d", "e"]


def test_turn_broadcast_trajectory_vs_sample_statistics():
  g, t, r = jnp.asarray(FLOW_G), jnp.asarray(FLOW_T), jnp.asarray(FLOW_R)
  grpo = rl.get_advantage("grpo")
  # Trajectory statistics (paper). Group 0 over trajectories [1, 0]: mean 1/2, ddof-1 std
  # sqrt(1/2) -> a: +0.7071, b: -0.7071. Group 1 over [0, 1, 0]: mean 1/3, ddof-1 variance
  # (1/9 + 4/9 + 1/9)/2 = 1/3 -> c, e: -(1/3)/sqrt(1/3) = -0.5774, d: (2/3)/sqrt(1/3) = 1.1547.
  h = math.sqrt(0.5)
  s = math.sqrt(1 / 3)
  by_name = {"a": 0.5 / (h + EPS), "b": -0.5 / (h + EPS), "c": -(1 / 3) / (s + EPS),
             "d": (2 / 3) / (s + EPS), "e": -(1 / 3) / (s + EPS)}
  want = [by_name[n] for n in NAMES]
  close(want, hand_group_adv(FLOW_R, FLOW_G, FLOW_T, by="trajectory", ddof=1))
  got = grpo(r, g, traj_id=t, group_by="trajectory", std_ddof=1)
  close(got, want)
  # Every turn of a trajectory carries the same advantage.
  for n in "ad":
    rows = [i for i, x in enumerate(NAMES) if x == n]
    assert len({float(got[i]) for i in rows}) == 1
  # ddof 0: group 0 std 1/2 -> +-1; group 1 variance (6/9)/3 = 2/9.
  s0 = math.sqrt(2 / 9)
  by_name0 = {"a": 0.5 / (0.5 + EPS), "b": -0.5 / (0.5 + EPS), "c": -(1 / 3) / (s0 + EPS),
              "d": (2 / 3) / (s0 + EPS), "e": -(1 / 3) / (s0 + EPS)}
  close(grpo(r, g, traj_id=t, group_by="trajectory", std_ddof=0), [by_name0[n] for n in NAMES])
  # Turn-sample statistics (released code): group 0 rows [1,1,1,0]: mean 3/4, ddof-1 variance
  # (3/16 + 9/16)/3 = 1/4, std 1/2 -> a: 0.5, b: -1.5. Group 1 rows [0,1,1,0]: mean 1/2,
  # variance 1/3 -> c, e: -0.866, d: +0.866. A 3-turn trajectory weighs 3x in the baseline.
  by_sample = {"a": 0.25 / (0.5 + EPS), "b": -0.75 / (0.5 + EPS), "c": -0.5 / (s + EPS),
               "d": 0.5 / (s + EPS), "e": -0.5 / (s + EPS)}
  want_s = [by_sample[n] for n in NAMES]
  close(want_s, hand_group_adv(FLOW_R, FLOW_G, by="sample", ddof=1))
  close(grpo(r, g, traj_id=t, group_by="sample"), want_s)
  # Per-trajectory rewards broadcast to rows, and per-row advantages to tokens.
  close(rl.broadcast_trajectory_rewards(jnp.asarray([1.0, 0.0, 0.0, 1.0, 0.0]),
                                        jnp.asarray([0, 1, 0, 2, 0, 3, 3, 4])), FLOW_R)
  close(rl.broadcast_to_tokens(jnp.asarray([2.0, -1.0]), jnp.asarray([[1, 0, 1], [0, 1, 1]])),
        [[2.0, 0.0, 2.0], [0.0, -1.0, -1.0]])


def test_rloo_over_trajectories():
  # Group 0: a's baseline is b's reward 0 -> 1; b's is a's 1 -> -1. Group 1 (c 0, d 1, e 0):
  # c, e see (1+0)/2 -> -1/2; d sees 0 -> 1.
  got = rl.get_advantage("rloo")(jnp.asarray(FLOW_R), jnp.asarray(FLOW_G),
                                 traj_id=jnp.asarray(FLOW_T), group_by="trajectory")
  close(got, [{"a": 1.0, "b": -1.0, "c": -0.5, "d": 1.0, "e": -0.5}[n] for n in NAMES])


# --- filters and reward shaping -----------------------------------------------------------------

def test_dynamic_sampling_filter():
  # g0 all 1, g1 mixed (kept), g2 all 0, g3 a singleton, g4 mixed but its 0 is masked out.
  rewards = jnp.asarray([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
  groups = jnp.asarray([0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 4])
  valid = jnp.asarray([True] * 10 + [False])
  keep, stats = rl.dynamic_sampling_filter(rewards, groups, sample_mask=valid)
  assert keep.tolist() == [False, False, False, True, True, True, False, False, False, False, False]
  assert int(stats["groups_kept"]) == 1 and int(stats["groups_dropped"]) == 4
  assert int(stats["rows_dropped"]) == 3 + 2 + 1 + 1
  # Through the objective: on for DAPO, off (everything kept and counted) for GRPO.
  keep2, _ = rl.rl_loss("dapo").filter_groups(rewards, groups, sample_mask=valid)
  assert keep2.tolist() == keep.tolist()
  keep3, stats3 = rl.rl_loss("grpo").filter_groups(rewards, groups, sample_mask=valid)
  assert keep3.tolist() == valid.tolist() and int(stats3["groups_kept"]) == 5


def test_overlong_shaping_values():
  # L_max 10, buffer 4: free up to 6; (6 - |y|)/4 inside the buffer; -1 at and beyond 10.
  lengths = jnp.asarray([5, 6, 7, 8, 10, 12])
  close(rl.overlong_reward(lengths, max_len=10, buffer=4), [0, 0, -0.25, -0.5, -1, -1])
  close(rl.overlong_reward(lengths, max_len=10, buffer=4, factor=0.5),
        [0, 0, -0.125, -0.25, -0.5, -0.5])
  with pytest.raises(ValueError, match="buffer"):
    rl.overlong_reward(lengths, max_len=10, buffer=11)
  obj = rl.rl_loss("dapo", overlong_max_len=10, overlong_buffer=4)
  shaped, info = obj.shape_rewards(jnp.asarray([1.0, 0.0, 1.0]), lengths=jnp.asarray([3, 8, 4]))
  close(info["overlong_penalty"], [0.0, -0.5, 0.0])
  close(shaped, [1.0, -0.5, 1.0])
  # Multi-turn: rows 0 and 2 are one trajectory, 3 + 4 = 7 tokens -> -0.25 on both turns.
  g, t = jnp.asarray([0, 0, 0]), jnp.asarray([0, 1, 0])
  shaped, _ = obj.shape_rewards(jnp.asarray([1.0, 0.0, 1.0]), lengths=jnp.asarray([3, 8, 4]),
                                group_id=g, traj_id=t)
  close(shaped, [0.75, -0.5, 0.75])
  # Counting tool tokens too: 3+4 policy + 1+1 tool = 9 -> -0.75; row 1: 8 + 1 = 9 -> -0.75.
  obj_tool = rl.rl_loss("dapo", overlong_max_len=10, overlong_buffer=4,
                        overlong_counts_tool_tokens=True)
  shaped, _ = obj_tool.shape_rewards(jnp.asarray([1.0, 0.0, 1.0]), lengths=jnp.asarray([3, 8, 4]),
                                     tool_lengths=jnp.asarray([1, 1, 1]), group_id=g, traj_id=t)
  close(shaped, [0.25, -0.75, 0.25])
  with pytest.raises(ValueError, match="tool_lengths"):
    obj_tool.shape_rewards(jnp.asarray([1.0]), lengths=jnp.asarray([3]))


def test_overlong_filtering_masks_truncated_rows():
  obj = rl.rl_loss("dapo", overlong="filter")
  mask = jnp.asarray([[1, 1, 0], [1, 1, 1]])
  out = obj.train_mask(mask, jnp.asarray([False, True]))
  assert np.asarray(out).tolist() == [[1, 1, 0], [0, 0, 0]]
  assert obj.shape_rewards(jnp.asarray([1.0, 0.0]))[0].tolist() == [1.0, 0.0]  # no shaping
  assert rl.rl_loss("dapo").train_mask(mask, jnp.asarray([False, True])) is mask
  with pytest.raises(ValueError, match="truncated"):
    obj.train_mask(mask)


# --- KL -----------------------------------------------------------------------------------------

def test_kl_estimators():
  x = [0.0, LN2, -LN2, 25.0, -25.0]
  logp = jnp.asarray(x) - 1.0
  ref = jnp.full((5,), -1.0)
  close(rl.kl_estimate(logp, ref, "k1"), x)
  close(rl.kl_estimate(logp, ref, "k2"), [v * v / 2 for v in x])
  # k3 = e^-x + x - 1: 0; 1/2 + ln2 - 1; 2 - ln2 - 1; x clamped to +-20 then the value to 10.
  close(rl.kl_estimate(logp, ref, "k3"), [0.0, 0.5 + LN2 - 1, 2 - LN2 - 1, 10.0, 10.0])
  close([hand_k3(v) for v in x], [0.0, 0.5 + LN2 - 1, 2 - LN2 - 1, 10.0, 10.0])
  with pytest.raises(ValueError, match="k4"):
    rl.kl_estimate(logp, ref, "k4")


def test_kl_reward_penalty_per_trajectory():
  # x = logp - ref per token; mask drops the third token of row 0 (an observation) and padding.
  x = [[0.5, 1.0, 9.0], [0.25, 0.0, 0.0], [1.0, 2.0, 0.0]]
  mask = jnp.asarray([[1, 1, 0], [1, 0, 0], [1, 1, 0]])
  logp = jnp.asarray(x) - 2.0
  ref = jnp.full((3, 3), -2.0)
  r = jnp.asarray([1.0, 1.0, 0.0])
  # k1 sums: row0 1.5, row1 0.25, row2 3.0; penalty 0.1 * sum.
  out, kl = rl.kl_reward_penalty(r, logp, ref, mask, estimator="k1", coef=0.1)
  close(kl, [1.5, 0.25, 3.0])
  close(out, [1 - 0.15, 1 - 0.025, -0.3])
  # Rows 0 and 1 are one trajectory: both get 1 - 0.1 * 1.75.
  g, t = jnp.asarray([0, 0, 0]), jnp.asarray([0, 0, 1])
  out, _ = rl.kl_reward_penalty(r, logp, ref, mask, estimator="k1", coef=0.1, group_id=g,
                                traj_id=t)
  close(out, [1 - 0.175, 1 - 0.175, -0.3])
  obj = rl.rl_loss("grpo", kl_where="reward", kl="k2", kl_coef=0.5)
  shaped, info = obj.shape_rewards(r, logp=logp, ref_logp=ref, mask=mask)
  # k2 sums: 0.125 + 0.5 = 0.625; 0.03125; 0.5 + 2 = 2.5; times 0.5.
  close(info["kl_penalty"], [0.3125, 0.015625, 1.25])
  close(shaped, [1 - 0.3125, 1 - 0.015625, -1.25])
  # KL in the reward means no KL term in the loss.
  _, metrics = obj.loss(logp, logp, jnp.ones(3), mask, ref_logp=ref)
  assert "kl_loss" not in metrics


# --- aggregation --------------------------------------------------------------------------------

AGG_L = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]]
AGG_M = [[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("mode,kwargs,want", [
    ("token-mean", {}, (1 + 2 + 5 + 6 + 7) / 5),
    ("seq-mean-token-mean", {}, (1.5 + 6.0) / 2),        # the empty row has no token mean
    ("seq-mean-token-sum", {}, (3 + 18 + 0) / 3),        # the empty row sums to 0 and counts
    ("seq-mean-token-sum-norm", {}, 21 / 4 / 3),         # L_const = padded length 4, / rows
    ("seq-mean-token-sum-norm", {"norm_constant": 7}, 21 / 7 / 3),
    ("seq-mean-token-sum-norm", {"norm_over_seqs": False}, 21 / 4),  # verl 0.5
])
def test_aggregation_modes(mode, kwargs, want):
  w = rl.aggregation_weights(jnp.asarray(AGG_M), mode, **kwargs)
  close(jnp.sum(w * jnp.asarray(AGG_L)), want)
  # sample_mask drops row 1 everywhere: token-mean becomes (1+2)/2.
  if mode == "token-mean":
    w = rl.aggregation_weights(jnp.asarray(AGG_M), mode, sample_mask=jnp.asarray([1, 0, 1]))
    close(jnp.sum(w * jnp.asarray(AGG_L)), 1.5)


def test_paper_flow_weights():
  # (1/Q)(1/G)(1/T_i) per row, split evenly over the row's tokens: Q=2 queries, group 0 has
  # G=2 (a: 3 turns, b: 1), group 1 has G=3 (c: 1, d: 2, e: 1).
  row_w = {"a": 1 / (2 * 2 * 3), "b": 1 / (2 * 2 * 1), "c": 1 / (2 * 3 * 1), "d": 1 / (2 * 3 * 2),
           "e": 1 / (2 * 3 * 1)}
  mask = jnp.asarray(FLOW_MASK)
  w = rl.aggregation_weights(mask, "group-traj-turn-token-mean", group_id=jnp.asarray(FLOW_G),
                             traj_id=jnp.asarray(FLOW_T))
  close(jnp.sum(w, axis=1), [row_w[n] for n in NAMES])
  close(jnp.sum(w), 1.0)
  assert float(jnp.sum(jnp.where(mask == 0, w, 0.0))) == 0.0
  with pytest.raises(ValueError, match="group_id"):
    rl.aggregation_weights(mask, "group-traj-turn-token-mean")
  with pytest.raises(ValueError, match="aggregation mode"):
    rl.aggregation_weights(mask, "token_mean")


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


# Multi-turn Flow-GRPO batch (rows as FLOW_*; L = 4; zeros in the mask are observation tokens
# inside a turn or padding). Masked ratios hold junk on purpose.
FLOW_MASK = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 0],
             [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0]]
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
