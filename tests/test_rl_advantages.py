"""RL advantages, filters, reward shaping, KL and aggregation (agentic_jax.objectives.rl) against
values computed by hand (tests/rl_reference.py or literals with the arithmetic in a comment)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax.objectives import rl
from tests.rl_reference import (EPS, FLOW_G, FLOW_MASK, FLOW_R, FLOW_T, LN2, NAMES, close,
                                hand_group_adv, hand_k3)


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


def test_sum_modes_count_valid_rows_and_trajectories_only():
  # Rows 0 and 1 are two turns of trajectory (0, 0), row 2 is trajectory (0, 1), row 3 a padding
  # slot (sample_mask False; its ids -1 like the packer's). Token sums: 1 + 2 = 3, 5 + 6 + 7 =
  # 18, 9 + 10 = 19 -> 40.
  mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
  valid = jnp.asarray([True, True, True, False])
  g, t = jnp.asarray([0, 0, 0, -1]), jnp.asarray([0, 0, 1, -1])
  loss = jnp.asarray(AGG_L + [[100.0] * 4])
  agg = lambda mode, **kw: float(jnp.sum(rl.aggregation_weights(  # noqa: E731
      mask, mode, sample_mask=valid, **kw) * loss))
  close(agg("seq-mean-token-sum"), 40 / 3)  # 3 valid rows, not 4 slots
  # Dr. GRPO's 1/G: 2 trajectories (not 3 rows, not 4 slots), L_const 8
  close(agg("seq-mean-token-sum-norm", group_id=g, traj_id=t, norm_constant=8), 40 / 8 / 2)
  close(agg("seq-mean-token-sum-norm", norm_constant=8), 40 / 8 / 3)  # no ids: rows
  close(agg("seq-mean-token-sum-norm", norm_constant=8, norm_over_seqs=False), 40 / 8)
  # through the loss: the sample mask reaches the weights (ratio 1, A = -1: each term is 1)
  obj = rl.rl_loss("dr_grpo", norm_constant=8)
  ones = jnp.zeros((4, 4))
  got, _ = obj.loss(ones, ones, -jnp.ones(4), mask, sample_mask=valid, group_id=g, traj_id=t)
  close(got, 7 / 8 / 2)  # 2 + 3 + 2 valid tokens


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
