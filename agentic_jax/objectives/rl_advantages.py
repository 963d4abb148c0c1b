"""Group-normalised outcome advantages and reward shaping for the GRPO family (objectives-spec §0-2).

Data layout (one row = one policy-update sample = one turn's response; see agentic_jax.objectives.rl):
  rewards     float [N]  the outcome reward of the row's trajectory (Flow-GRPO broadcast: every
                         turn of trajectory i carries R_i; single-turn GRPO: one row per rollout)
  group_id    int   [N]  the query (GRPO group) of the row
  traj_id     int   [N]  the rollout of the row; rows are the same trajectory iff group_id AND
                         traj_id match, so traj_id may be a rollout index within its group
  sample_mask bool  [N]  optional; False = padding row or a row dropped by a filter: it takes no
                         part in any statistic and gets advantage 0

Everything is jit-able: groups are found with [N, N] id-equality matrices (N = rows in the
batch, a few thousand at most), so no static group count is needed and ids may be arbitrary.

Advantage estimators (registry; `register_advantage(name)` / `get_advantage(name)`), all with
the signature fn(rewards, group_id, *, traj_id=None, sample_mask=None, group_by="sample",
std_norm=True, std_ddof=1, eps=1e-6) -> float [N]:
  grpo     A = (R - mean_g R) / (std_g R + eps), or R - mean_g R with std_norm=False (§0).
  dr_grpo  A = R - mean_g R (Dr. GRPO, §2); ignores std_norm, std_ddof, eps.
  rloo     A = R - mean of the OTHER members of the group (leave-one-out); ignores std_*, eps.
group_by selects the population of the group statistics (§1):
  "sample"      every row of the group counts once (GRPO; Flow-GRPO's released code, where the
                group is all turn-samples of all G rollouts, so a trajectory with T_i turns
                counts T_i times);
  "trajectory"  every trajectory of the group counts once (Flow-GRPO paper: mean/std over the
                G trajectory rewards), and the trajectory's advantage is broadcast to all its turns.
std_ddof: 1 = unbiased std (verl), 0 = population std (jnp.std default). A group with a single
member (one row, or one trajectory under group_by="trajectory") gets mean 0 and std 1, as verl
does (the only case where ddof=1 is undefined); its advantage is then R (or R/(1+eps)).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
AdvantageFn = Callable[..., Array]

GROUP_BY = ("sample", "trajectory")

_REGISTRY: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
  """Decorator: makes `fn` available as `get_advantage(name)`. Names are unique."""
  def wrap(fn: AdvantageFn) -> AdvantageFn:
    if name in _REGISTRY and _REGISTRY[name] is not fn:
      raise ValueError(f"advantage {name!r} is already registered (by {_REGISTRY[name].__module__})")
    _REGISTRY[name] = fn
    return fn
  return wrap


def get_advantage(name: str) -> AdvantageFn:
  if name not in _REGISTRY:
    raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def registered_advantages() -> list[str]:
  return sorted(_REGISTRY)


# --- group bookkeeping ---------------------------------------------------------------------------

def row_valid(n: int, sample_mask: Array | None) -> Array:
  """bool [N]: rows taking part (all rows when sample_mask is None)."""
  if sample_mask is None:
    return jnp.ones((n,), bool)
  return jnp.asarray(sample_mask).astype(bool)


def same_group(group_id: Array, valid: Array) -> Array:
  """bool [N, N]: rows n and k are valid and in the same group."""
  g = jnp.asarray(group_id)
  return (g[:, None] == g[None, :]) & valid[:, None] & valid[None, :]


def same_trajectory(group_id: Array, traj_id: Array | None, valid: Array) -> Array:
  """bool [N, N]: rows n and k are valid and in the same trajectory (same group and traj_id).
  traj_id None: every row is its own trajectory (single-turn data)."""
  n = valid.shape[0]
  if traj_id is None:
    return jnp.eye(n, dtype=bool) & valid[:, None]
  t = jnp.asarray(traj_id)
  return same_group(group_id, valid) & (t[:, None] == t[None, :])


def first_member(same: Array, valid: Array) -> Array:
  """bool [N]: the row is valid and no earlier row belongs to its set (one representative per
  trajectory / group, so trajectory counts are exact integers, not sums of 1/T_i)."""
  n = valid.shape[0]
  earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)  # [n, k]: k < n
  return valid & ~jnp.any(same & earlier, axis=1)


def group_reward_stats(rewards: Array, group_id: Array, *, traj_id: Array | None = None,
                       sample_mask: Array | None = None, group_by: str = "sample",
                       std_ddof: int = 1) -> tuple[Array, Array, Array]:
  """(mean [N], std [N], count [N]) of each row's group; count = members (rows or trajectories).

  Under group_by="trajectory" each trajectory contributes its first row's reward once
  (all rows of a trajectory carry the same reward: rl.validate_rollout_batch checks it).
  Invalid rows and single-member groups get mean 0, std 1 (verl's convention)."""
  if group_by not in GROUP_BY:
    raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
  if std_ddof not in (0, 1):
    raise ValueError(f"std_ddof must be 0 or 1, got {std_ddof!r}")
  r = jnp.asarray(rewards, jnp.float32)
  valid = row_valid(r.shape[0], sample_mask)
  same_g = same_group(group_id, valid)
  if group_by == "trajectory":
    w = first_member(same_trajectory(group_id, traj_id, valid), valid)
  else:
    w = valid
  weight = same_g & w[None, :]  # [n, k]: k counts towards n's group statistics
  wf = weight.astype(jnp.float32)
  count = jnp.sum(wf, axis=1)
  # Elementwise sums rather than matmuls: accelerators may run f32 matmuls at reduced precision.
  mean = jnp.sum(wf * r[None, :], axis=1) / jnp.maximum(count, 1.0)
  var = jnp.sum(wf * (r[None, :] - mean[:, None]) ** 2, axis=1) / jnp.maximum(count - std_ddof, 1.0)
  single = count <= 1.0
  mean = jnp.where(single, 0.0, mean)
  std = jnp.where(single, 1.0, jnp.sqrt(jnp.where(single, 1.0, var)))
  return mean, std, count


# --- estimators ----------------------------------------------------------------------------------

@register_advantage("grpo")
def grpo_advantages(rewards: Array, group_id: Array, *, traj_id: Array | None = None,
                    sample_mask: Array | None = None, group_by: str = "sample",
                    std_norm: bool = True, std_ddof: int = 1, eps: float = 1e-6) -> Array:
  """A = (R - mean_g) / (std_g + eps) (std_norm) or R - mean_g; 0 on invalid rows. §0, §1."""
  r = jnp.asarray(rewards, jnp.float32)
  mean, std, _ = group_reward_stats(r, group_id, traj_id=traj_id, sample_mask=sample_mask,
                                    group_by=group_by, std_ddof=std_ddof)
  adv = r - mean
  if std_norm:
    adv = adv / (std + eps)
  return jnp.where(row_valid(r.shape[0], sample_mask), adv, 0.0)


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: Array, group_id: Array, *, traj_id: Array | None = None,
                       sample_mask: Array | None = None, group_by: str = "sample",
                       std_norm: bool = False, std_ddof: int = 1, eps: float = 1e-6) -> Array:
  """A = R - mean_g (Dr. GRPO, §2): no std division whatever std_norm says."""
  del std_norm, eps
  return grpo_advantages(rewards, group_id, traj_id=traj_id, sample_mask=sample_mask,
                         group_by=group_by, std_norm=False, std_ddof=std_ddof)


@register_advantage("rloo")
def rloo_advantages(rewards: Array, group_id: Array, *, traj_id: Array | None = None,
                    sample_mask: Array | None = None, group_by: str = "sample",
                    std_norm: bool = False, std_ddof: int = 1, eps: float = 1e-6) -> Array:
  """A_i = R_i - (sum_g R - R_i) / (count_g - 1): baseline = mean of the other members (other
  rows, or other trajectories under group_by="trajectory"); a single member keeps A = R."""
  del std_norm, std_ddof, eps
  r = jnp.asarray(rewards, jnp.float32)
  mean, _, count = group_reward_stats(r, group_id, traj_id=traj_id, sample_mask=sample_mask,
                                      group_by=group_by, std_ddof=0)
  loo = (mean * count - r) / jnp.maximum(count - 1.0, 1.0)
  adv = jnp.where(count > 1.0, r - loo, r)
  return jnp.where(row_valid(r.shape[0], sample_mask), adv, 0.0)


# --- broadcasting, filtering, shaping ------------------------------------------------------------

def broadcast_trajectory_rewards(traj_rewards: Array, row_traj_index: Array) -> Array:
  """Per-row rewards [N] from per-trajectory rewards [M]: row n gets traj_rewards[index[n]]
  (the Flow-GRPO broadcast of one outcome to every turn)."""
  return jnp.asarray(traj_rewards, jnp.float32)[jnp.asarray(row_traj_index)]


def broadcast_to_tokens(advantages: Array, mask: Array) -> Array:
  """[N] advantages -> [N, L] token advantages (times the loss mask)."""
  return jnp.asarray(advantages, jnp.float32)[:, None] * jnp.asarray(mask, jnp.float32)


def trajectory_sum(values: Array, group_id: Array | None, traj_id: Array | None,
                   sample_mask: Array | None = None) -> Array:
  """[N]: sum of `values` over the valid rows of each row's trajectory (the row itself when
  group_id/traj_id are None), so per-trajectory quantities reach every turn equally."""
  v = jnp.asarray(values, jnp.float32)
  valid = row_valid(v.shape[0], sample_mask)
  if group_id is None or traj_id is None:
    return jnp.where(valid, v, 0.0)
  same = same_trajectory(group_id, traj_id, valid).astype(jnp.float32)
  return jnp.sum(same * v[None, :], axis=1)


def dynamic_sampling_filter(rewards: Array, group_id: Array, *,
                            sample_mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """DAPO dynamic sampling (§2): drop every group whose valid rewards are all equal (all right or
  all wrong: zero advantage, but they would still dilute token-mean).

  Returns (keep bool [N], {"groups_kept", "groups_dropped", "rows_dropped"} int32). Pass the
  outcome reward before shaping (DAPO filters on accuracy). Refilling the batch with new groups
  is the rollout loop's job; these counts say how many it has to replace."""
  r = jnp.asarray(rewards, jnp.float32)
  valid = row_valid(r.shape[0], sample_mask)
  same = same_group(group_id, valid)
  hi = jnp.max(jnp.where(same, r[None, :], -jnp.inf), axis=1)
  lo = jnp.min(jnp.where(same, r[None, :], jnp.inf), axis=1)
  keep = valid & (hi > lo)
  first = first_member(same, valid)
  stats = {
      "groups_kept": jnp.sum(first & keep).astype(jnp.int32),
      "groups_dropped": jnp.sum(first & ~keep).astype(jnp.int32),
      "rows_dropped": jnp.sum(valid & ~keep).astype(jnp.int32),
  }
  return keep, stats


def overlong_reward(lengths: Array, *, max_len: int, buffer: int, factor: float = 1.0) -> Array:
  """DAPO soft overlong punishment (§2), an extra reward <= 0:
     0                                   if |y| <= max_len - buffer
     factor * ((max_len - buffer) - |y|) / buffer   in the buffer
     -factor                             if |y| >= max_len
  (verl's min(-(|y| - (L_max - L_cache)) / L_cache * factor, 0), floored at -factor as in the paper.)"""
  if not 0 < buffer <= max_len:
    raise ValueError(f"overlong buffer must be in (0, max_len={max_len}], got {buffer}")
  y = jnp.asarray(lengths, jnp.float32)
  frac = ((max_len - buffer) - y) / float(buffer)
  return factor * jnp.clip(frac, -1.0, 0.0)


def overlong_filter_mask(mask: Array, truncated: Array) -> Array:
  """DAPO overlong filtering (§2): loss mask 0 on every token of a truncated row. The row still
  counts in the group statistics (its advantage is computed as usual)."""
  keep = ~jnp.asarray(truncated).astype(bool)
  return jnp.asarray(mask) * keep[:, None].astype(jnp.asarray(mask).dtype)
