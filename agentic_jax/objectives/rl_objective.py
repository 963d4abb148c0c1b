"""Config-facing entry point: `rl_loss(name, preset=None, **options) -> RLObjective`.

    obj = rl_loss("dapo", "grpo_tcr", clip_eps_high=0.3)   # or RLObjective(name, preset, options)
    keep, stats = obj.filter_groups(outcome, group_id)            # DAPO dynamic sampling
    rewards, info = obj.shape_rewards(outcome, lengths=..., ...)   # overlong shaping, KL penalty
    adv = obj.advantages(rewards, group_id, traj_id=traj_id, sample_mask=keep)
    loss, metrics = obj.loss(logp, old_logp, adv, obj.train_mask(mask, truncated), ref_logp=...,
                             group_id=group_id, traj_id=traj_id, sample_mask=keep)

Options resolve as: the loss's options dataclass defaults (its registration, rl_registry) <- the
preset <- explicit options; the result is one validated, typed instance (`obj.options`, also a
read-only Mapping; dict(obj.options) to log with the run).

The presets (name -> option overrides, with their sources) live in each loss's registration
(rl_losses; PRESETS here is a read-only view of the registry).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from agentic_jax.objectives import rl_advantages as adv_lib
from agentic_jax.objectives import rl_losses  # noqa: F401  (registers the built-in losses)
from agentic_jax.objectives import rl_registry
from agentic_jax.objectives.rl_registry import PRESETS, resolve_options  # noqa: F401

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class RLObjective:
  """One resolved RL objective: pure jnp methods, options fixed (static under jit)."""
  name: str
  preset: str | None
  options: rl_registry.PolicyOptions  # the loss's validated options dataclass instance

  def advantages(self, rewards: Array, group_id: Array, *, traj_id: Array | None = None,
                 sample_mask: Array | None = None) -> Array:
    """Per-row advantages [N] (the same value on every turn of a trajectory)."""
    o = self.options
    return adv_lib.get_advantage(o.advantage)(
        rewards, group_id, traj_id=traj_id, sample_mask=sample_mask, group_by=o.group_by,
        std_norm=o.std_norm, std_ddof=o.std_ddof, eps=o.adv_eps)

  def loss(self, logp: Array, old_logp: Array, advantages: Array, mask: Array,
           **inputs: Any) -> tuple[Array, dict[str, Array]]:
    """rl_losses policy loss with this objective's options (inputs: ref_logp, entropy,
    sample_mask, group_id, traj_id, token_weights)."""
    return rl_registry.get_spec(self.name).fn(logp, old_logp, advantages, mask,
                                              options=self.options, **inputs)

  def token_weights(self, mask: Array, *, sample_mask: Array | None = None,
                    group_id: Array | None = None, traj_id: Array | None = None) -> Array:
    """Aggregation weights of the whole optimizer batch (slice them per micro-batch)."""
    o = self.options
    return rl_losses.aggregation_weights(mask, o.agg, sample_mask=sample_mask,
                                         group_id=group_id, traj_id=traj_id,
                                         norm_constant=o.norm_constant,
                                         norm_over_seqs=o.norm_over_seqs)

  def filter_groups(self, rewards: Array, group_id: Array, *,
                    sample_mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Dynamic sampling when enabled (keep mask, counts); otherwise every valid row is kept."""
    if self.options.dynamic_sampling:
      return adv_lib.dynamic_sampling_filter(rewards, group_id, sample_mask=sample_mask)
    keep = adv_lib.row_valid(jnp.asarray(rewards).shape[0], sample_mask)
    groups = jnp.sum(adv_lib.first_member(adv_lib.same_group(group_id, keep), keep))
    zero = jnp.zeros((), jnp.int32)
    return keep, {"groups_kept": groups.astype(jnp.int32), "groups_dropped": zero,
                  "rows_dropped": zero}

  def shape_rewards(self, rewards: Array, *, lengths: Array | None = None,
                    tool_lengths: Array | None = None, logp: Array | None = None,
                    ref_logp: Array | None = None, mask: Array | None = None,
                    group_id: Array | None = None, traj_id: Array | None = None,
                    sample_mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Outcome rewards [N] -> shaped rewards [N] and {"overlong_penalty", "kl_penalty"} [N].

    overlong="shape": + overlong_reward(|y|), |y| = lengths (policy tokens of the row) plus
    tool_lengths when overlong_counts_tool_tokens, summed over the trajectory's rows when
    group_id/traj_id are given (every turn gets the trajectory's penalty).
    kl_where="reward" (kl != none): - kl_coef * KL summed over the trajectory's tokens."""
    o = self.options
    r = jnp.asarray(rewards, jnp.float32)
    info = {}
    if o.overlong == "shape":
      if lengths is None:
        raise ValueError(f"rl loss {self.name!r}: overlong='shape' needs lengths")
      y = jnp.asarray(lengths, jnp.float32)
      if o.overlong_counts_tool_tokens:
        if tool_lengths is None:
          raise ValueError(f"rl loss {self.name!r}: overlong_counts_tool_tokens needs tool_lengths")
        y = y + jnp.asarray(tool_lengths, jnp.float32)
      y = adv_lib.trajectory_sum(y, group_id, traj_id, sample_mask)
      pen = adv_lib.overlong_reward(y, max_len=o.overlong_max_len, buffer=o.overlong_buffer,
                                    factor=o.overlong_factor)
      info["overlong_penalty"] = pen
      r = r + pen
    if o.kl != "none" and o.kl_where == "reward":
      if logp is None or ref_logp is None or mask is None:
        raise ValueError(f"rl loss {self.name!r}: kl_where='reward' needs logp, ref_logp and mask")
      r, kl = rl_losses.kl_reward_penalty(r, logp, ref_logp, mask, estimator=o.kl,
                                          coef=o.kl_coef, group_id=group_id, traj_id=traj_id,
                                          sample_mask=sample_mask)
      info["kl_penalty"] = o.kl_coef * kl
    return r, info

  def train_mask(self, mask: Array, truncated: Array | None = None) -> Array:
    """The loss mask after overlong filtering (truncated rows get no loss) when enabled."""
    if self.options.overlong != "filter":
      return mask
    if truncated is None:
      raise ValueError(f"rl loss {self.name!r}: overlong='filter' needs truncated")
    return adv_lib.overlong_filter_mask(mask, truncated)


def rl_loss(name: str, preset: str | None = None, **options: Any) -> RLObjective:
  """The RL objective `name` (a registered loss) with `preset` (None: the options dataclass's
  defaults) and option overrides. Unknown names, presets or options raise ValueError naming
  them (OptionError, with .key, for an option)."""
  return RLObjective(name=name, preset=preset, options=resolve_options(name, preset, **options))
