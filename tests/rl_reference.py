"""Hand references for the RL objective tests: plain-Python loops written from
objectives-spec §0-2, independent of agentic_jax.objectives."""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-6
LN2 = math.log(2.0)

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


# Multi-turn batch, rows interleaved. Group 0: trajectory 0 ("a", 3 turns, R=1), trajectory 1
# ("b", 1 turn, R=0). Group 1: trajectory 0 ("c", 1 turn, R=0; same traj_id as "a" but another
# group), trajectory 1 ("d", 2 turns, R=1), trajectory 2 ("e", 1 turn, R=0).
FLOW_G = [0, 0, 0, 1, 0, 1, 1, 1]
FLOW_T = [0, 1, 0, 0, 0, 1, 1, 2]
FLOW_TURN = [0, 0, 1, 0, 2, 0, 1, 0]
FLOW_R = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
NAMES = ["a", "b", "a", "c", "a", "d", "d", "e"]

# Multi-turn Flow-GRPO batch (rows as FLOW_*; L = 4; zeros in the mask are observation tokens
# inside a turn or padding). Masked ratios hold junk on purpose.
FLOW_MASK = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 0],
             [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0]]
