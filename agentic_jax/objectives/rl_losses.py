"""Clipped policy-gradient losses of the GRPO family as registry entries (objectives-spec §0-2).

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
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from agentic_jax.objectives import rl_advantages as adv_lib

Array = jax.Array

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
             "group-traj-turn-token-mean")
KL_ESTIMATORS = ("k1", "k2", "k3")

# Every knob of the family with its generic default; each registry entry overrides some
# (its documented defaults), presets override further (rl_presets).
BASE_OPTIONS: dict[str, Any] = {
    # advantages (rl_advantages)
    "advantage": "grpo",         # registered estimator: grpo | dr_grpo | rloo
    "group_by": "sample",        # "sample" | "trajectory": population of the group statistics
    "std_norm": True,            # grpo: divide by the group std
    "std_ddof": 1,               # 1 = unbiased (verl), 0 = population std
    "adv_eps": 1e-6,
    # reward shaping and filtering
    "overlong": "none",          # "none" | "shape" (soft penalty) | "filter" (mask truncated rows)
    "overlong_max_len": 20480,   # L_max
    "overlong_buffer": 4096,     # L_cache
    "overlong_factor": 1.0,
    "overlong_counts_tool_tokens": False,  # multi-turn: do observation tokens count in |y|?
    "dynamic_sampling": False,   # drop groups whose rewards are all equal
    # policy loss
    "clip_eps_low": 0.2,
    "clip_eps_high": 0.2,
    "dual_clip_c": None,         # None or c > 1 (verl default 3)
    "log_ratio_clamp": 20.0,
    "agg": "token-mean",
    "norm_constant": None,       # L_const of seq-mean-token-sum-norm; None = padded length
    "norm_over_seqs": True,      # seq-mean-token-sum-norm: also divide by the trajectories
    "agg_scope": "rollout",      # "rollout" | "minibatch": population of the aggregation weights
    "minibatch_split": "rows",   # "rows" | "groups": what a minibatch keeps whole
    "kl": "none",                # "none" | "k1" | "k2" | "k3"
    "kl_coef": 0.0,
    "kl_where": "loss",          # "loss" | "reward"
    "entropy_coef": 0.0,
}

_CHOICES = {"group_by": adv_lib.GROUP_BY, "overlong": ("none", "shape", "filter"),
            "agg": AGG_MODES, "kl": ("none",) + KL_ESTIMATORS, "kl_where": ("loss", "reward"),
            "std_ddof": (0, 1), "agg_scope": ("rollout", "minibatch"),
            "minibatch_split": ("rows", "groups")}
_BOOLS = ("std_norm", "overlong_counts_tool_tokens", "dynamic_sampling", "norm_over_seqs")


def _num(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_options(options: Mapping[str, Any], *, where: str = "rl loss") -> dict[str, Any]:
  """A complete, checked copy of `options`; ValueError naming the offending option."""
  opts = dict(options)
  unknown = sorted(set(opts) - set(BASE_OPTIONS))
  if unknown:
    raise ValueError(f"{where}: unknown option(s) {unknown}; known: {sorted(BASE_OPTIONS)}")
  missing = sorted(set(BASE_OPTIONS) - set(opts))
  if missing:
    raise ValueError(f"{where}: missing option(s) {missing}")
  for key, choices in _CHOICES.items():
    if opts[key] not in choices or isinstance(opts[key], bool):
      raise ValueError(f"{where}: option {key!r} must be one of {choices}, got {opts[key]!r}")
  for key in _BOOLS:
    if not isinstance(opts[key], bool):
      raise ValueError(f"{where}: option {key!r} must be a bool, got {opts[key]!r}")
  if opts["advantage"] not in adv_lib.registered_advantages():
    raise ValueError(f"{where}: option 'advantage' must be a registered estimator "
                     f"{adv_lib.registered_advantages()}, got {opts['advantage']!r}")
  checks = {
      "adv_eps": lambda v: _num(v) and v >= 0, "overlong_factor": lambda v: _num(v) and v >= 0,
      "clip_eps_low": lambda v: _num(v) and 0 <= v < 1, "clip_eps_high": lambda v: _num(v) and v >= 0,
      "dual_clip_c": lambda v: v is None or (_num(v) and v > 1),
      "log_ratio_clamp": lambda v: _num(v) and v > 0, "kl_coef": lambda v: _num(v) and v >= 0,
      "entropy_coef": lambda v: _num(v),
      "norm_constant": lambda v: v is None or (_num(v) and v > 0),
      "overlong_max_len": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
      "overlong_buffer": lambda v: (isinstance(v, int) and not isinstance(v, bool)
                                    and 0 < v <= opts["overlong_max_len"]),
  }
  expected = {"adv_eps": "a number >= 0", "overlong_factor": "a number >= 0",
              "clip_eps_low": "a number in [0, 1)", "clip_eps_high": "a number >= 0",
              "dual_clip_c": "None or a number > 1", "log_ratio_clamp": "a number > 0",
              "kl_coef": "a number >= 0", "entropy_coef": "a number",
              "norm_constant": "None or a number > 0", "overlong_max_len": "an int > 0",
              "overlong_buffer": "an int in (0, overlong_max_len]"}
  for key, ok in checks.items():
    if not ok(opts[key]):
      raise ValueError(f"{where}: option {key!r} must be {expected[key]}, got {opts[key]!r}")
  if opts["kl"] == "none" and opts["kl_coef"] != 0:
    raise ValueError(f"{where}: option 'kl_coef'={opts['kl_coef']} needs 'kl' in {KL_ESTIMATORS}, "
                     "got 'none'")
  return opts


# --- registry ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: Callable[..., tuple]
  defaults: Mapping[str, Any]


_REGISTRY: dict[str, _Entry] = {}


def register_policy_loss(name: str, *, defaults: Mapping[str, Any] | None = None):
  """Decorator: registers fn(logp, old_logp, advantages, mask, *, options, **inputs) under
  `name` with its default options (overrides of BASE_OPTIONS). Names are unique."""
  overrides = dict(defaults or {})
  full = validate_options({**BASE_OPTIONS, **overrides}, where=f"policy loss {name!r} defaults")

  def wrap(fn):
    if name in _REGISTRY and _REGISTRY[name].fn is not fn:
      raise ValueError(f"policy loss {name!r} is already registered (by {_REGISTRY[name].fn.__module__})")
    _REGISTRY[name] = _Entry(fn, full)
    return fn
  return wrap


def registered_policy_losses() -> list[str]:
  return sorted(_REGISTRY)


def policy_loss_defaults(name: str) -> dict[str, Any]:
  """The complete default option dict of a registered loss."""
  return dict(_entry(name).defaults)


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    raise ValueError(f"unknown policy loss {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def get_policy_loss(name: str) -> Callable[..., tuple[Array, dict[str, Array]]]:
  """policy_loss(logp, old_logp, advantages, mask, *, ref_logp=None, options=None, **inputs)
  -> (loss, metrics); `options` override the entry's defaults (unknown keys raise)."""
  entry = _entry(name)

  def policy_loss(logp, old_logp, advantages, mask, *, ref_logp=None, options=None, **inputs):
    opts = validate_options({**entry.defaults, **dict(options or {})}, where=f"policy loss {name!r}")
    return entry.fn(logp, old_logp, advantages, mask, ref_logp=ref_logp, options=opts, **inputs)

  policy_loss.__name__ = f"{name}_policy_loss"
  policy_loss.__doc__ = entry.fn.__doc__
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
  """The shared PPO-clip core of every entry; `options` must be complete (validate_options)."""
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


# --- the entries (defaults per objectives-spec §1-2) ---------------------------------------------

# GRPO (DeepSeekMath, §2): eps 0.2, seq-mean-token-mean, k3 KL as a loss term with beta 0.04.
GRPO_DEFAULTS = {"agg": "seq-mean-token-mean", "kl": "k3", "kl_coef": 0.04}
# DAPO (§2): clip-higher 0.2/0.28, token-mean, no KL, overlong shaping 20480/4096, dynamic sampling.
DAPO_DEFAULTS = {"clip_eps_high": 0.28, "agg": "token-mean", "overlong": "shape",
                 "overlong_max_len": 20480, "overlong_buffer": 4096, "overlong_factor": 1.0,
                 "dynamic_sampling": True}
# Dr. GRPO (§2): A = R - mean, no length normalisation (seq-mean-token-sum-norm), beta 0.
DR_GRPO_DEFAULTS = {"advantage": "dr_grpo", "std_norm": False, "agg": "seq-mean-token-sum-norm",
                    "norm_over_seqs": True}
# Flow-GRPO paper (§1): trajectory-level group statistics, (1/G)(1/T_i)(1/|a|) weighting, one eps.
# The objective is an expectation over queries of (1/G) sum_i over the query's G trajectories,
# so an update sees whole groups (minibatch_split "groups") with G and T_i of the rollout batch.
# The paper gives no beta or ddof: we take the released code's k3 / 0.001 and verl's ddof=1 [recon].
FLOW_GRPO_DEFAULTS = {"group_by": "trajectory", "agg": "group-traj-turn-token-mean",
                      "kl": "k3", "kl_coef": 0.001, "std_ddof": 1, "minibatch_split": "groups"}


@register_policy_loss("grpo", defaults=GRPO_DEFAULTS)
def grpo_loss(logp, old_logp, advantages, mask, *, options, **inputs):
  """GRPO: PPO-clip on group-normalised advantages plus beta * KL (loss term)."""
  return clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)


@register_policy_loss("dapo", defaults=DAPO_DEFAULTS)
def dapo_loss(logp, old_logp, advantages, mask, *, options, **inputs):
  """DAPO: clip-higher and token-mean; overlong shaping/filtering and dynamic sampling act on
  rewards and rows before the loss (RLObjective.shape_rewards / filter_groups / train_mask)."""
  return clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)


@register_policy_loss("dr_grpo", defaults=DR_GRPO_DEFAULTS)
def dr_grpo_loss(logp, old_logp, advantages, mask, *, options, **inputs):
  """Dr. GRPO: no std in the advantage, constant length normaliser (seq-mean-token-sum-norm)."""
  return clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)


@register_policy_loss("flow_grpo", defaults=FLOW_GRPO_DEFAULTS)
def flow_grpo_loss(logp, old_logp, advantages, mask, *, options, **inputs):
  """Flow-GRPO: one row per planner turn, the trajectory's advantage on every turn; pass
  group_id and traj_id for the paper weighting (agg="group-traj-turn-token-mean")."""
  return clipped_policy_loss(logp, old_logp, advantages, mask, options=options, **inputs)
