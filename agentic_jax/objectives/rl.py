"""RL objectives of the GRPO family (GRPO, DAPO, Dr. GRPO, Flow-GRPO): one import point.

Importing this module registers the built-in advantage estimators (rl_advantages) and policy
losses (rl_losses); `rl_loss(name, preset, **options)` (rl_objective) is what a config calls.

To add a loss: write the function and its options dataclass, call register_loss
(rl_registry: one LossSpec carries the function, the typed options, the presets with their
sources, the default preset and the batch mode; configs, choices and checks derive from it).

Batch layout of a policy update (objectives-spec §0-1). One ROW is one policy-update sample:
one turn's response of one rollout (single-turn GRPO: one row per rollout; Flow-GRPO: one row
per planner turn, the prompt being that turn's context). N rows, responses right-padded to L:

  group_id    int   [N]     query the rollout answers (the GRPO group)
  traj_id     int   [N]     rollout within the query; (group_id, traj_id) identifies a trajectory
  turn_index  int   [N]     0 .. T_i - 1 within the trajectory (each exactly once)
  rewards     float [N]     outcome reward of the trajectory, the same on all its rows (broadcast)
  logp        float [N, L]  log pi_theta of each response token (recomputed, differentiable)
  old_logp    float [N, L]  log pi_theta_old (the sampler's, or recomputed before the update)
  ref_logp    float [N, L]  log pi_ref (frozen reference), for KL
  mask        float [N, L]  1 = a token the policy generated and is trained on; 0 = padding,
                            observation/tool-output tokens and anything else never trained on
  sample_mask bool  [N]     optional: False = padding row or a row dropped by a filter
  truncated   bool  [N]     optional: response hit the length limit (overlong filtering)
  entropy     float [N, L]  optional: policy entropy per position (metric / bonus)

`validate_rollout_batch` checks this layout on host (numpy) before the jitted step.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from agentic_jax.objectives.rl_advantages import (  # noqa: F401  (re-exports)
    GROUP_BY, broadcast_to_tokens, broadcast_trajectory_rewards, dynamic_sampling_filter,
    get_advantage, group_reward_stats, overlong_filter_mask, overlong_reward,
    register_advantage, registered_advantages, trajectory_sum)
from agentic_jax.objectives.rl_losses import (  # noqa: F401
    BASE_OPTIONS, ClipOptions, DAPOOptions, DrGRPOOptions, FlowGRPOOptions, GRPOOptions,
    aggregation_weights, clipped_policy_loss, get_policy_loss, kl_estimate, kl_reward_penalty,
    policy_loss_defaults, register_policy_loss, registered_policy_losses)
from agentic_jax.objectives.rl_objective import RLObjective, rl_loss  # noqa: F401
from agentic_jax.objectives.rl_registry import (  # noqa: F401
    AGG_MODES, BATCH_MODES, KL_ESTIMATORS, PRESETS, LossOptions, LossSpec, OptionError,
    PolicyOptions, get_spec, option, register_loss, registered_losses, resolve_options,
    unregister_loss)

_ROW_FIELDS = ("group_id", "traj_id", "turn_index", "rewards")
_TOKEN_FIELDS = ("logp", "old_logp", "mask")
_OPTIONAL_ROW = ("sample_mask", "truncated")
_OPTIONAL_TOKEN = ("ref_logp", "entropy")


def _fail(field: str, reason: str):
  raise ValueError(f"rollout batch: field {field!r}: {reason}")


def validate_rollout_batch(batch: Mapping[str, Any]) -> dict[str, int]:
  """Checks the layout above on host; ValueError naming the field and row. Returns counts
  {"rows", "trajectories", "groups", "tokens", "rows_without_tokens"} (rows whose mask is all
  zero train nothing; they are counted, not dropped)."""
  for f in _ROW_FIELDS + _TOKEN_FIELDS:
    if f not in batch:
      _fail(f, "missing")
  arr = {f: np.asarray(batch[f]) for f in batch}
  n, length = arr["logp"].shape if arr["logp"].ndim == 2 else (None, None)
  if n is None:
    _fail("logp", f"expected shape [N, L], got {arr['logp'].shape}")
  for f in _ROW_FIELDS + _OPTIONAL_ROW:
    if f in arr and arr[f].shape != (n,):
      _fail(f, f"expected shape [{n}] (one value per row), got {arr[f].shape}")
  for f in _TOKEN_FIELDS + _OPTIONAL_TOKEN:
    if f in arr and arr[f].shape != (n, length):
      _fail(f, f"expected shape [{n}, {length}] like logp, got {arr[f].shape}")
  for f in ("group_id", "traj_id", "turn_index"):
    if not np.issubdtype(arr[f].dtype, np.integer):
      _fail(f, f"expected integers, got dtype {arr[f].dtype}")
  mask = arr["mask"].astype(np.float64)
  bad = np.argwhere((mask != 0) & (mask != 1))
  if bad.size:
    _fail("mask", f"row {bad[0][0]} token {bad[0][1]}: expected 0 or 1, got {mask[tuple(bad[0])]}")
  valid = arr["sample_mask"].astype(bool) if "sample_mask" in arr else np.ones(n, bool)
  on = (mask > 0) & valid[:, None]
  for f in ("logp", "old_logp", "ref_logp"):
    if f in arr:
      x = arr[f].astype(np.float64)
      bad = np.argwhere(on & ~(np.isfinite(x) & (x <= 1e-4)))
      if bad.size:
        i, t = bad[0]
        _fail(f, f"row {i} token {t}: expected a finite log-probability <= 0 on a masked-in "
                 f"token, got {x[i, t]}")
  rewards = arr["rewards"].astype(np.float64)
  if not np.all(np.isfinite(rewards[valid])):
    _fail("rewards", f"row {int(np.argmax(~np.isfinite(rewards) & valid))}: expected a finite value")
  trajs: dict[tuple[int, int], list[int]] = {}
  for i in np.flatnonzero(valid):
    trajs.setdefault((int(arr["group_id"][i]), int(arr["traj_id"][i])), []).append(int(i))
  for (g, t), rows in trajs.items():
    turns = sorted(int(arr["turn_index"][i]) for i in rows)
    if turns != list(range(len(rows))):
      _fail("turn_index", f"trajectory (group_id={g}, traj_id={t}) rows {rows}: expected turns "
                          f"0..{len(rows) - 1} once each, got {turns}")
    r = rewards[rows]
    if np.any(r != r[0]):
      _fail("rewards", f"trajectory (group_id={g}, traj_id={t}) rows {rows}: expected one outcome "
                       f"reward on every turn, got {r.tolist()}")
  tokens = on.sum(axis=1)
  return {"rows": int(valid.sum()), "trajectories": len(trajs),
          "groups": len({g for g, _ in trajs}), "tokens": int(tokens.sum()),
          "rows_without_tokens": int((tokens[valid] == 0).sum())}
