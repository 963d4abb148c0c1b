"""Clipped policy-gradient losses of the GRPO family as registry entries (objectives-spec §0-2).

To add a loss: write the function and its options dataclass, call register_loss (rl_registry;
the entries at the end of this file are the pattern: GRPOOptions + grpo_loss + LossSpec with its
presets, default preset and batch mode). Nothing else lists losses.

    loss, metrics = get_policy_loss("flow_grpo")(logp, old_logp, advantages, mask,
                                                 ref_logp=..., options={...})

Inputs (rows = policy-update samples, see agentic_jax.objectives.rl): logp, old_logp, ref_logp,
entropy float [N, L] per response token; mask [N, L] (1 = token the policy generated and is
trained on; 0 = prompt, observation/tool output, padding); advantages [N] (broadcast to the
row's tokens) or [N, L]. Optional keyword inputs: sample_mask [N], group_id / traj_id [N] (needed
by the paper Flow-GRPO weighting), token_weights [N, L] (precomputed aggregation weights, see below).

Per token (§0): r = exp(clip(logp - old_logp, -log_ratio_clamp, +log_ratio_clamp)),
    l = max(-A r, -A clip(r, 1 - clip_eps_low, 1 + clip_eps_high)),
    dual clip (dual_clip_c = c, only where A < 0): l = min(l, -c A).
loss = agg(l) + kl_coef * agg(k) [kl_where="loss"] - entropy_coef * agg(entropy),
with agg(x) = sum(W * x) for the aggregation weights W of `aggregation_weights`.

Aggregation modes (§0, verl names) over the mask m (already times sample_mask: padding slots
and filtered rows take no part in any count):
  token-mean                  sum m l / sum m                                  (DAPO, Flow-GRPO code)
  seq-mean-token-mean         mean over rows with >= 1 token of (sum_t m l / sum_t m)   (GRPO)
  seq-mean-token-sum          mean over valid rows of sum_t m l
  seq-mean-token-sum-norm     sum m l / L_const, divided by the number of valid TRAJECTORIES when
                              norm_over_seqs (Dr. GRPO's 1/G: a response is a trajectory, so with
                              one row per turn a many-turn trajectory still counts once; rows of
                              one trajectory share group_id and traj_id). verl 0.5 does not divide
                              (core_algos.py agg_loss L709-711: sum / loss_mask.shape[-1]).
                              L_const = norm_constant, default the padded length L; use a fixed
                              constant (max response length) so it does not depend on the data
                              (Dr. GRPO's released code: oat masked_sum(constant_normalizer=
                              generate_max_length), understand-r1-zero train_zero_math.py L286-290).
  group-traj-turn-token-mean  Flow-GRPO paper's (1/G)(1/T_i)(1/|a|) weighting: per-turn token
                              mean, mean over the T_i turns of a trajectory, mean over the G
                              trajectories of a query, mean over the queries of the batch.

Scope of the weights (option agg_scope) when one rollout batch is split into k minibatches:
  "rollout"    W is computed ONCE over the whole rollout batch (after filters) and sliced with the
               minibatches; minibatch b's loss is k * sum_{tokens of b} W x. Counts (Q, G, T_i,
               tokens, rows) are therefore the rollout batch's, never a minibatch's, and over a
               random split each minibatch loss is an unbiased estimate of the rollout batch's
               loss: the k gradients at the same params average to the one-minibatch gradient
               (so loss and gradient scale, and optim.clip_norm, do not depend on k). With
               minibatches of equal row counts the seq-mean modes equal the released codes'
               per-minibatch means (oat ppo.py L567-568: .mean() over a fixed-size minibatch);
               with whole groups split evenly the paper weighting is the paper formula over the
               minibatch's queries; token-mean divides by the rollout batch's tokens / k instead
               of the minibatch's own.
  "minibatch"  W is recomputed inside each minibatch over its own samples, as verl does
               (dp_actor.py L377-381 loops epochs over fixed mini-batches, core_algos.py agg_loss
               per mini-batch), but with the exact mini-batch token mean (below).
Option minibatch_split: "rows" = each epoch a random permutation of the packed forward rows (a
group's sequences may land in different minibatches; a plain-mode transcript is one sequence, so
its turns stay together), "groups" = every group (query) lies in one minibatch (the packer lays
whole groups out in k blocks of forward rows, rl/step.pack_batch(whole_groups=True)).
Line numbers cite: volcengine/verl tag v0.5.0 (verl/trainer/ppo/core_algos.py,
verl/workers/actor/dp_actor.py, recipe/dapo/), sail-sg/oat
c1a074c (oat/algorithms/ppo.py), sail-sg/understand-r1-zero dfca49d, lupantech/AgentFlow
b940064 (agentflow/verl/trainer.py); the papers by section (objectives-spec §1-2).
Deliberate difference from verl (§0): for gradient accumulation compute `aggregation_weights` on
the whole optimizer batch, slice them with the micro-batches and pass them as token_weights; the
micro-batch losses then add up to the exact big-batch loss (verl averages micro-batch means).

KL estimators (§0, x = logp - ref_logp): k1 = x, k2 = x^2/2, k3 = e^-x + x - 1 with x clamped to
+-20 and k3 to [-10, 10] (verl's low_var_kl). As a loss term here; as a reward penalty with
`kl_reward_penalty` (kl_where="reward"; the loss then has no KL term).

Metrics (masked token means over m, plus num_tokens so micro-batches can be re-weighted):
loss, pg_loss, kl_loss (KL term, before kl_coef), clipfrac_low (A<0 and r<1-eps_lo),
clipfrac_high (A>0 and r>1+eps_hi), clipfrac (their sum = verl's pg_clipfrac), dual_clipfrac
(A<0 and r>c), ratio_mean, approx_kl (mean of old_logp - logp, verl's ppo_kl), kl_ref (mean KL
to the reference when ref_logp is given; k3 when kl="none"), entropy (when given), num_tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from agentic_jax.objectives import rl_advantages as adv_lib
from agentic_jax.objectives.rl_registry import (  # noqa: F401  (re-exported)
    AGG_MODES, KL_ESTIMATORS, LossSpec, PolicyOptions, get_spec, option, option_types,
    register_loss, registered_losses)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ClipOptions(PolicyOptions):
  """PolicyOptions + the PPO-clip knobs of `clipped_policy_loss` (the GRPO family's options;
  each loss below subclasses it with its documented defaults)."""
  clip_eps_low: float = option(0.2, check=lambda v: 0 <= v < 1, expect="a number in [0, 1)")
  clip_eps_high: float = option(0.2, check=lambda v: v >= 0, expect="a number >= 0")
  # None or c > 1 (verl default 3)
  dual_clip_c: Optional[float] = option(None, check=lambda v: v > 1, expect="a number > 1")
  log_ratio_clamp: float = option(20.0, check=lambda v: v > 0, expect="a number > 0")


# Every knob of the family with its generic default (derived: the ClipOptions fields).
BASE_OPTIONS: dict[str, Any] = ClipOptions().to_dict()


# --- compatibility entry points (the registry is rl_registry) ------------------------------------

def register_policy_loss(name: str, *, defaults: Mapping[str, Any] | None = None):
  """Decorator: registers fn as loss `name` with ClipOptions whose defaults are `defaults`
  (one preset "default", trajectory rows). New code: register_loss(LossSpec(...))."""
  types_ = option_types(ClipOptions)
  overrides = dict(defaults or {})
  unknown = sorted(set(overrides) - set(types_))
  if unknown:
    raise ValueError(f"policy loss {name!r} defaults: unknown option(s) {unknown}")
  fields = [(k, Optional[types_[k][0]] if types_[k][1] else types_[k][0], dataclasses.field(default=v))
            for k, v in overrides.items()]
  options = dataclasses.make_dataclass(f"{name}_options", fields, bases=(ClipOptions,), frozen=True)

  def wrap(fn):
    register_loss(LossSpec(name=name, fn=fn, options=options, presets={"default": {}},
                           default_preset="default", batch_mode="trajectory"))
    return fn
  return wrap


def registered_policy_losses() -> list[str]:
  return registered_losses()


def policy_loss_defaults(name: str) -> dict[str, Any]:
  """The complete default option dict of a registered loss."""
  return get_spec(name).options().to_dict()


def get_policy_loss(name: str) -> Callable[..., tuple[Array, dict[str, Array]]]:
  """policy_loss(logp, old_logp, advantages, mask, *, ref_logp=None, options=None, **inputs)
  -> (loss, metrics); `options` (a dict) override the loss's defaults (unknown keys raise)."""
  spec = get_spec(name)

  def policy_loss(logp, old_logp, advantages, mask, *, ref_logp=None, options=None, **inputs):
    opts = spec.options.create(dict(options or {}), where=f"policy loss {name!r}")
    return spec.fn(logp, old_logp, advantages, mask, ref_logp=ref_logp, options=opts, **inputs)

  policy_loss.__name__ = f"{name}_policy_loss"
  policy_loss.__doc__ = spec.fn.__doc__
  return policy_loss


# --- building blocks -----------------------------------------------------------------------------

def kl_estimate(logp: Array, ref_logp: Array, estimator: str) -> Array:
  """Per-token KL(pi || pi_ref) estimate from the sampled token's log-probs (§0)."""
  x = jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)
  if estimator == "k1":
    return x
  if estimator == "k2":
    return 0.5 * x * x
  if estimator == "k3":
    x = jnp.clip(x, -20.0, 20.0)
    return jnp.clip(jnp.exp(-x) + x - 1.0, -10.0, 10.0)
  raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def kl_reward_penalty(rewards: Array, logp: Array, ref_logp: Array, mask: Array, *,
                      estimator: str, coef: float, group_id: Array | None = None,
                      traj_id: Array | None = None,
                      sample_mask: Array | None = None) -> tuple[Array, Array]:
  """KL as a reward penalty (kl_where="reward"): R - coef * KL, KL = sum over the masked tokens
  of the row (verl sums the per-token penalty into the outcome), summed over all rows of the
  trajectory when group_id/traj_id are given so every turn keeps one trajectory reward.
  Returns (penalised rewards [N], KL [N])."""
  m = jnp.asarray(mask, jnp.float32)
  safe = m > 0
  k = kl_estimate(jnp.where(safe, logp, 0.0), jnp.where(safe, ref_logp, 0.0), estimator)
  kl = adv_lib.trajectory_sum(jnp.sum(m * k, axis=1), group_id, traj_id, sample_mask)
  return jnp.asarray(rewards, jnp.float32) - coef * kl, kl


def aggregation_weights(mask: Array, mode: str, *, sample_mask: Array | None = None,
                        group_id: Array | None = None, traj_id: Array | None = None,
                        norm_constant: float | None = None, norm_over_seqs: bool = True) -> Array:
  """W [N, L] with agg(x) = sum(W * x); W is 0 wherever mask * sample_mask is 0 (module doc).
  Every count (rows, trajectories, turns, groups, tokens) is over the rows of sample_mask only,
  so padding slots of a packed batch never dilute the weights."""
  m = jnp.asarray(mask, jnp.float32)
  n, length = m.shape
  rows = adv_lib.row_valid(n, sample_mask)
  m = m * rows[:, None].astype(jnp.float32)
  tok = jnp.sum(m, axis=1)  # |a_n|
  has = tok > 0
  per_tok = m / jnp.maximum(tok, 1.0)[:, None]  # row-wise token mean
  if mode == "token-mean":
    return m / jnp.maximum(jnp.sum(m), 1.0)
  if mode == "seq-mean-token-mean":
    return per_tok / jnp.maximum(jnp.sum(has), 1)
  if mode == "seq-mean-token-sum":
    return m / jnp.maximum(jnp.sum(rows), 1)
  if mode == "seq-mean-token-sum-norm":
    w = m / float(length if norm_constant is None else norm_constant)
    if not norm_over_seqs:
      return w
    if group_id is None:  # every row its own trajectory
      trajs = jnp.sum(rows)
    else:  # 1/G counts responses: the trajectories, whatever rows they are split into
      trajs = jnp.sum(adv_lib.first_member(adv_lib.same_trajectory(group_id, traj_id, rows), rows))
    return w / jnp.maximum(trajs, 1)
  if mode == "group-traj-turn-token-mean":
    if group_id is None:
      raise ValueError("aggregation 'group-traj-turn-token-mean' needs group_id (and traj_id)")
    same_t = adv_lib.same_trajectory(group_id, traj_id, has)
    same_g = adv_lib.same_group(group_id, has)
    turns = jnp.sum(same_t, axis=1)  # T_i: turns of the row's trajectory that have tokens
    trajs = jnp.sum(same_g & adv_lib.first_member(same_t, has)[None, :], axis=1)  # G
    queries = jnp.sum(adv_lib.first_member(same_g, has))  # groups in the batch
    denom = jnp.maximum(turns, 1) * jnp.maximum(trajs, 1) * jnp.maximum(queries, 1)
    return per_tok / denom[:, None].astype(jnp.float32)
  raise ValueError(f"aggregation mode must be one of {AGG_MODES}, got {mode!r}")


def _masked_mean(x: Array, m: Array, n_tok: Array) -> Array:
  return jnp.sum(jnp.where(m > 0, x, 0.0)) / jnp.maximum(n_tok, 1.0)


def clipped_policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *,
                        options: Mapping[str, Any], ref_logp: Array | None = None,
                        entropy: Array | None = None, sample_mask: Array | None = None,
                        group_id: Array | None = None, traj_id: Array | None = None,
                        token_weights: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """The shared PPO-clip core of every entry; `options`: a validated ClipOptions (or a
  complete Mapping of its fields)."""
  o = options
  logp = jnp.asarray(logp, jnp.float32)
  m = jnp.asarray(mask, jnp.float32) * adv_lib.row_valid(logp.shape[0], sample_mask)[:, None]
  on = m > 0
  # Zero the masked positions first: padding may hold -inf/nan, and where() after the fact
  # would still send nan gradients through the unselected branch.
  logp = jnp.where(on, logp, 0.0)
  old = jnp.where(on, jnp.asarray(old_logp, jnp.float32), 0.0)
  a = jnp.asarray(advantages, jnp.float32)
  a = jnp.broadcast_to(a[:, None] if a.ndim == 1 else a, logp.shape)
  a = jnp.where(on, a, 0.0)

  log_ratio = jnp.clip(logp - old, -o["log_ratio_clamp"], o["log_ratio_clamp"])
  ratio = jnp.exp(log_ratio)
  lo, hi = 1.0 - o["clip_eps_low"], 1.0 + o["clip_eps_high"]
  pg = jnp.maximum(-a * ratio, -a * jnp.clip(ratio, lo, hi))
  c = o["dual_clip_c"]
  if c is not None:
    pg = jnp.where(a < 0, jnp.minimum(pg, -c * a), pg)

  if token_weights is None:
    # sample_mask too, not only m: the row and trajectory counts must skip padding slots
    w = aggregation_weights(m, o["agg"], sample_mask=sample_mask, group_id=group_id,
                            traj_id=traj_id, norm_constant=o["norm_constant"],
                            norm_over_seqs=o["norm_over_seqs"])
  else:
    w = jnp.asarray(token_weights, jnp.float32) * m
  pg_loss = jnp.sum(w * pg)
  loss = pg_loss

  n_tok = jnp.sum(m)
  low = on & (a < 0) & (ratio < lo)
  high = on & (a > 0) & (ratio > hi)
  dual = on & (a < 0) & (ratio > c) if c is not None else jnp.zeros_like(on)
  metrics = {
      "pg_loss": pg_loss,
      "clipfrac_low": _masked_mean(low.astype(jnp.float32), m, n_tok),
      "clipfrac_high": _masked_mean(high.astype(jnp.float32), m, n_tok),
      "clipfrac": _masked_mean((low | high).astype(jnp.float32), m, n_tok),
      "dual_clipfrac": _masked_mean(dual.astype(jnp.float32), m, n_tok),
      "ratio_mean": _masked_mean(ratio, m, n_tok),
      "approx_kl": _masked_mean(old - logp, m, n_tok),
      "num_tokens": n_tok,
  }
  kl_in_loss = o["kl"] != "none" and o["kl_where"] == "loss"
  if kl_in_loss and ref_logp is None:
    raise ValueError(f"policy loss: kl={o['kl']!r} as a loss term needs ref_logp")
  if ref_logp is not None:
    ref = jnp.where(on, jnp.asarray(ref_logp, jnp.float32), 0.0)
    k = kl_estimate(logp, ref, o["kl"] if o["kl"] != "none" else "k3")
    metrics["kl_ref"] = _masked_mean(k, m, n_tok)
    if kl_in_loss:
      metrics["kl_loss"] = jnp.sum(w * k)
      loss = loss + o["kl_coef"] * metrics["kl_loss"]
  if entropy is not None:
    ent = jnp.where(on, jnp.asarray(entropy, jnp.float32), 0.0)
    metrics["entropy"] = _masked_mean(ent, m, n_tok)
    loss = loss - o["entropy_coef"] * jnp.sum(w * ent)
  elif o["entropy_coef"] != 0:
    raise ValueError(f"policy loss: entropy_coef={o['entropy_coef']} needs the entropy input")
  metrics["loss"] = loss
  return loss, metrics


# --- the entries (defaults per objectives-spec §1-2; presets cite their sources) ------------------
# Unless a preset says otherwise the aggregation weights are the whole rollout batch's (agg_scope
# "rollout", module doc) and minibatches are random sets of packed rows (minibatch_split "rows").

@dataclasses.dataclass(frozen=True)
class GRPOOptions(ClipOptions):
  """GRPO (DeepSeekMath, §2): eps 0.2, seq-mean-token-mean, k3 KL as a loss term, beta 0.04."""
  agg: str = "seq-mean-token-mean"
  kl: str = "k3"
  kl_coef: float = 0.04


@dataclasses.dataclass(frozen=True)
class DAPOOptions(ClipOptions):
  """DAPO (§2): clip-higher 0.2/0.28, token-mean, no KL, overlong shaping 20480/4096 factor 1,
  dynamic sampling."""
  clip_eps_high: float = 0.28
  agg: str = "token-mean"
  overlong: str = "shape"
  overlong_max_len: int = 20480
  overlong_buffer: int = 4096
  overlong_factor: float = 1.0
  dynamic_sampling: bool = True


@dataclasses.dataclass(frozen=True)
class DrGRPOOptions(ClipOptions):
  """Dr. GRPO (§2): A = R - mean (no std), no length normalisation (seq-mean-token-sum-norm over
  the trajectories), beta 0."""
  advantage: str = "dr_grpo"
  std_norm: bool = False
  agg: str = "seq-mean-token-sum-norm"
  norm_over_seqs: bool = True


@dataclasses.dataclass(frozen=True)
class FlowGRPOOptions(ClipOptions):
  """Flow-GRPO paper (§1): trajectory-level group statistics, (1/G)(1/T_i)(1/|a|) weighting, one
  eps. The objective is an expectation over queries of (1/G) sum_i over the query's G
  trajectories, so an update sees whole groups (minibatch_split "groups") with G and T_i of the
  rollout batch. The paper gives no beta or ddof: we take the released code's k3 / 0.001 and
  verl's ddof=1 [recon]."""
  group_by: str = "trajectory"
  agg: str = "group-traj-turn-token-mean"
  kl: str = "k3"
  kl_coef: float = 0.001
  std_ddof: int = 1
  minibatch_split: str = "groups"


def grpo_loss(logp, old_logp, advantages, mask, *, options, **inputs):
  """GRPO: PPO-clip on group-normalised advantages plus beta * KL (loss term)."""
  return clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)


def dapo_loss(logp, old_logp, advantages, mask, *, options, **inputs):
  """DAPO: clip-higher and token-mean; overlong shaping/filtering and dynamic sampling act on
  rewards and rows before the loss (RLObjective.shape_rewards / filter_groups / train_mask)."""
  return clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)


def dr_grpo_loss(logp, old_logp, advantages, mask, *, options, **inputs):
  """Dr. GRPO: no std in the advantage, constant length normaliser (seq-mean-token-sum-norm)."""
  return clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)


def flow_grpo_loss(logp, old_logp, advantages, mask, *, options, **inputs):
  """Flow-GRPO: one row per planner turn, the trajectory's advantage on every turn; pass
  group_id and traj_id for the paper weighting (agg="group-traj-turn-token-mean")."""
  return clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)


register_loss(LossSpec(
    name="grpo", fn=grpo_loss, options=GRPOOptions, batch_mode="trajectory",
    default_preset="deepseekmath",
    presets={
        # the defaults: eps 0.2, seq-mean-token-mean, k3 loss beta 0.04 [§2]
        "deepseekmath": {},
    }))

register_loss(LossSpec(
    name="dapo", fn=dapo_loss, options=DAPOOptions, batch_mode="trajectory",
    default_preset="paper",
    presets={
        # the defaults: eps 0.2/0.28, token-mean over the rollout batch's tokens (the paper's
        # 1 / sum_i |o_i|), overlong shaping 20480/4096 factor 1, dynamic sampling (groups with
        # equal rewards dropped in the step; the RL loop over-samples and refills the batch,
        # config.rl.dapo_max_refill_rounds, rl/refill.py), no KL [§2]
        "paper": {},
        # "Demystifying RL in Agentic Reasoning" script (verl): eps 0.2/0.28, token-mean per
        # minibatch (agg_scope "minibatch", as verl), dual clip c=10, overlong shaping 20480/4096
        # factor 1, NO dynamic sampling, no KL [§2]
        "grpo_tcr": {"dynamic_sampling": False, "dual_clip_c": 10.0, "clip_eps_low": 0.2,
                     "clip_eps_high": 0.28, "agg": "token-mean", "overlong": "shape",
                     "overlong_max_len": 20480, "overlong_buffer": 4096, "overlong_factor": 1.0,
                     "kl": "none", "kl_coef": 0.0, "agg_scope": "minibatch"},
    }))

register_loss(LossSpec(
    name="dr_grpo", fn=dr_grpo_loss, options=DrGRPOOptions, batch_mode="trajectory",
    default_preset="paper",
    presets={
        # the defaults: A = R - mean, seq-mean-token-sum-norm / number of trajectories of the
        # rollout batch (1/G per group), minibatches of random rows as the authors' oat learner
        # (ppo.py L468 permutes the sequences every epoch; L567-568 sum / generate_max_length,
        # then the mean over the minibatch) [§2]
        "paper": {},
        # sum-norm NOT divided by the number of rows and computed per minibatch (verl 0.5
        # core_algos.py agg_loss L709-711; dp_actor.py L377-381) [§0]
        "verl": {"norm_over_seqs": False, "agg_scope": "minibatch"},
    }))

register_loss(LossSpec(
    name="flow_grpo", fn=flow_grpo_loss, options=FlowGRPOOptions, batch_mode="turn",
    default_preset="paper",
    presets={
        # the defaults: trajectory-level stats (ddof 1), turn broadcast, (1/G)(1/T_i)(1/|a|)
        # weighting with Q, G, T_i of the rollout batch, whole groups per minibatch
        # (minibatch_split "groups"), eps 0.2, k3 loss beta 0.001 [§1]
        "paper": {},
        # lupantech/AgentFlow as released: stats over all turn-samples of a query (ddof 1;
        # agentflow/verl/trainer.py L207-208 uid = data id), turn samples shuffled into
        # minibatches (trainer.py L290-298), token-mean per minibatch (verl, agg_scope
        # "minibatch"), eps 0.2 low / 0.3 high, dual clip c=3, k3 loss beta 0.001, no KL in
        # reward [§1 "What the code computes"]. The code computes advantages before dropping
        # over-long prompts: call advantages() on the full batch, then drop rows via
        # sample_mask in loss() only.
        "code": {"group_by": "sample", "std_ddof": 1, "agg": "token-mean", "clip_eps_low": 0.2,
                 "clip_eps_high": 0.3, "dual_clip_c": 3.0, "kl": "k3", "kl_coef": 0.001,
                 "kl_where": "loss", "agg_scope": "minibatch", "minibatch_split": "rows"},
    }))
