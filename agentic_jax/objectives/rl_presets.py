"""Config-facing entry point: `rl_loss(name, preset=None, **options) -> RLObjective`.

    obj = rl_loss(config.rl.loss, config.rl.get("preset"), **config.rl.get("loss_options", {}))
    keep, stats = obj.filter_groups(outcome, group_id)            # DAPO dynamic sampling
    rewards, info = obj.shape_rewards(outcome, lengths=..., ...)   # overlong shaping, KL penalty
    adv = obj.advantages(rewards, group_id, traj_id=traj_id, sample_mask=keep)
    loss, metrics = obj.loss(logp, old_logp, adv, obj.train_mask(mask, truncated), ref_logp=...,
                             group_id=group_id, traj_id=traj_id, sample_mask=keep)

Options resolve as: BASE_OPTIONS (rl_losses) <- the loss's registered defaults <- the preset
<- explicit options; the result is a complete dict (`obj.options`) to log with the run.

Presets (objectives-spec section in brackets). Unless a preset says otherwise the aggregation
weights are the whole rollout batch's (agg_scope "rollout", rl_losses module doc) and minibatches
are random sets of packed rows (minibatch_split "rows").
  grpo       deepseekmath  the defaults: eps 0.2, seq-mean-token-mean, k3 loss beta 0.04 [§2]
  dapo       paper         the defaults: eps 0.2/0.28, token-mean over the rollout batch's tokens
                           (the paper's 1 / sum_i |o_i|), overlong shaping 20480/4096 factor 1,
                           dynamic sampling (groups with equal rewards dropped in the step; the
                           RL loop over-samples and refills the batch, config.rl.
                           dapo_max_refill_rounds, rl/refill.py), no KL [§2]
             grpo_tcr      "Demystifying RL in Agentic Reasoning" script (verl): eps 0.2/0.28,
                           token-mean per minibatch (agg_scope "minibatch", as verl), dual clip
                           c=10, overlong shaping 20480/4096 factor 1, NO dynamic sampling, no KL
                           [§2]
  dr_grpo    paper         the defaults: A = R - mean, seq-mean-token-sum-norm / number of
                           trajectories of the rollout batch (1/G per group), minibatches of
                           random rows as the authors' oat learner (ppo.py L468 permutes the
                           sequences every epoch; L567-568 sum / generate_max_length, then the
                           mean over the minibatch) [§2]
             verl          sum-norm NOT divided by the number of rows and computed per minibatch
                           (verl 0.5 core_algos.py agg_loss L709-711; dp_actor.py L377-381) [§0]
  flow_grpo  paper         the defaults: trajectory-level stats (ddof 1), turn broadcast,
                           (1/G)(1/T_i)(1/|a|) weighting with Q, G, T_i of the rollout batch,
                           whole groups per minibatch (minibatch_split "groups"), eps 0.2, k3
                           loss beta 0.001 [§1]
             code          lupantech/AgentFlow as released: stats over all turn-samples of a
                           query (ddof 1; agentflow/verl/trainer.py L207-208 uid = data id),
                           turn samples shuffled into minibatches (trainer.py L290-298), token-mean
                           per minibatch (verl, agg_scope "minibatch"), eps 0.2 low / 0.3 high,
                           dual clip c=3, k3 loss beta 0.001, no KL in reward [§1 "What the code
                           computes"]. The code computes advantages before dropping over-long
                           prompts: call advantages() on the full batch, then drop rows via
                           sample_mask in loss() only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from agentic_jax.objectives import rl_advantages as adv_lib
from agentic_jax.objectives import rl_losses

Array = jax.Array

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "grpo": {"deepseekmath": {}},
    "dapo": {
        "paper": {},
        "grpo_tcr": {"dynamic_sampling": False, "dual_clip_c": 10.0, "clip_eps_low": 0.2,
                     "clip_eps_high": 0.28, "agg": "token-mean", "overlong": "shape",
                     "overlong_max_len": 20480, "overlong_buffer": 4096, "overlong_factor": 1.0,
                     "kl": "none", "kl_coef": 0.0, "agg_scope": "minibatch"},
    },
    "dr_grpo": {"paper": {}, "verl": {"norm_over_seqs": False, "agg_scope": "minibatch"}},
    "flow_grpo": {
        "paper": {},
        "code": {"group_by": "sample", "std_ddof": 1, "agg": "token-mean", "clip_eps_low": 0.2,
                 "clip_eps_high": 0.3, "dual_clip_c": 3.0, "kl": "k3", "kl_coef": 0.001,
                 "kl_where": "loss", "agg_scope": "minibatch", "minibatch_split": "rows"},
    },
}


def resolve_options(name: str, preset: str | None = None, **options: Any) -> dict[str, Any]:
  """The complete option dict of loss `name` under `preset` with `options` on top."""
  defaults = rl_losses.policy_loss_defaults(name)  # raises on an unknown name
  presets = PRESETS.get(name, {})
  if preset is not None and preset not in presets:
    raise ValueError(f"rl loss {name!r}: unknown preset {preset!r}; known: {sorted(presets)}")
  where = f"rl loss {name!r}" + (f" preset {preset!r}" if preset else "")
  unknown = sorted(set(options) - set(rl_losses.BASE_OPTIONS))
  if unknown:
    raise ValueError(f"{where}: unknown option(s) {unknown}; known: {sorted(rl_losses.BASE_OPTIONS)}")
  merged = {**defaults, **(presets[preset] if preset else {}), **options}
  return rl_losses.validate_options(merged, where=where)


@dataclasses.dataclass(frozen=True, eq=False)
class RLObjective:
  """One resolved RL objective: pure jnp methods, options fixed (static under jit)."""
  name: str
  preset: str | None
  options: Mapping[str, Any]

  def advantages(self, rewards: Array, group_id: Array, *, traj_id: Array | None = None,
                 sample_mask: Array | None = None) -> Array:
    """Per-row advantages [N] (the same value on every turn of a trajectory)."""
    o = self.options
    return adv_lib.get_advantage(o["advantage"])(
        rewards, group_id, traj_id=traj_id, sample_mask=sample_mask, group_by=o["group_by"],
        std_norm=o["std_norm"], std_ddof=o["std_ddof"], eps=o["adv_eps"])

  def loss(self, logp: Array, old_logp: Array, advantages: Array, mask: Array,
           **inputs: Any) -> tuple[Array, dict[str, Array]]:
    """rl_losses policy loss with this objective's options (inputs: ref_logp, entropy,
    sample_mask, group_id, traj_id, token_weights)."""
    entry = rl_losses._entry(self.name)  # pylint: disable=protected-access
    return entry.fn(logp, old_logp, advantages, mask, options=self.options, **inputs)

  def token_weights(self, mask: Array, *, sample_mask: Array | None = None,
                    group_id: Array | None = None, traj_id: Array | None = None) -> Array:
    """Aggregation weights of the whole optimizer batch (slice them per micro-batch)."""
    o = self.options
    return rl_losses.aggregation_weights(mask, o["agg"], sample_mask=sample_mask,
                                         group_id=group_id, traj_id=traj_id,
                                         norm_constant=o["norm_constant"],
                                         norm_over_seqs=o["norm_over_seqs"])

  def filter_groups(self, rewards: Array, group_id: Array, *,
                    sample_mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Dynamic sampling when enabled (keep mask, counts); otherwise every valid row is kept."""
    if self.options["dynamic_sampling"]:
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
    if o["overlong"] == "shape":
      if lengths is None:
        raise ValueError(f"rl loss {self.name!r}: overlong='shape' needs lengths")
      y = jnp.asarray(lengths, jnp.float32)
      if o["overlong_counts_tool_tokens"]:
        if tool_lengths is None:
          raise ValueError(f"rl loss {self.name!r}: overlong_counts_tool_tokens needs tool_lengths")
        y = y + jnp.asarray(tool_lengths, jnp.float32)
      y = adv_lib.trajectory_sum(y, group_id, traj_id, sample_mask)
      pen = adv_lib.overlong_reward(y, max_len=o["overlong_max_len"], buffer=o["overlong_buffer"],
                                    factor=o["overlong_factor"])
      info["overlong_penalty"] = pen
      r = r + pen
    if o["kl"] != "none" and o["kl_where"] == "reward":
      if logp is None or ref_logp is None or mask is None:
        raise ValueError(f"rl loss {self.name!r}: kl_where='reward' needs logp, ref_logp and mask")
      r, kl = rl_losses.kl_reward_penalty(r, logp, ref_logp, mask, estimator=o["kl"],
                                          coef=o["kl_coef"], group_id=group_id, traj_id=traj_id,
                                          sample_mask=sample_mask)
      info["kl_penalty"] = o["kl_coef"] * kl
    return r, info

  def train_mask(self, mask: Array, truncated: Array | None = None) -> Array:
    """The loss mask after overlong filtering (truncated rows get no loss) when enabled."""
    if self.options["overlong"] != "filter":
      return mask
    if truncated is None:
      raise ValueError(f"rl loss {self.name!r}: overlong='filter' needs truncated")
    return adv_lib.overlong_filter_mask(mask, truncated)


def rl_loss(name: str, preset: str | None = None, **options: Any) -> RLObjective:
  """The RL objective `name` (a registered policy loss) with `preset` and option overrides.
  Unknown names, presets or options raise ValueError naming them."""
  return RLObjective(name=name, preset=preset, options=resolve_options(name, preset, **options))
