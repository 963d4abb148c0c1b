"""Training-time MoE load balancing: bias updates, balance losses, router z-loss, and a
collector for the statistics `agentic_jax.models.moe.MoE` sows into "intermediates".

All functions are pure jnp and accept extra leading (layer) dims where noted, so they work
on one layer's statistics or on a stack of scanned layers. Notation: N FFN experts,
Z zero experts, K slots per token, K_e target FFN experts per token, load_i = fraction of
all routed slots that went to slot i (the sown `expert_load`, sums to 1 over N+Z).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

MOE_STAT_NAMES = ("expert_load", "zero_expert_share", "dropped_slots", "ffn_experts_per_token",
                  "expert_rows", "seq_load", "seq_router_prob", "router_z_loss")
_BASE_RANK = {"expert_load": 1, "seq_load": 2, "seq_router_prob": 2}  # others: scalars


# ------------------------------------------------------------------ bias updates


def deepseek_bias_update(bias: Array, expert_load: Array, *, n_routed_experts: int,
                         rate: float) -> Array:
  """Aux-loss-free balancing (DeepSeek-V3, arXiv 2412.19437 §2.1.2):
  b_i <- b_i - rate * sign(load_i - mean_{j<N} load_j) for FFN experts i < N; zero-expert
  slots (i >= N) are left untouched. bias, expert_load: [..., N+Z]."""
  n = n_routed_experts
  load = expert_load[..., :n].astype(jnp.float32)
  delta = -rate * jnp.sign(load - load.mean(-1, keepdims=True))
  return bias.at[..., :n].add(delta.astype(bias.dtype))


def longcat_bias_update(bias: Array, expert_load: Array, *, n_routed_experts: int, top_k: int,
                        target_ffn_per_token: float, rate: float) -> Array:
  """LongCat-Flash budget controller (arXiv 2509.01322, as quoted in model-spec §3.4):
  Δb_i = rate * (K_e / (K·N) - load_i) for FFN experts i < N, Δb_i = 0 for zero experts.
  load_i = T_i / (K·T_all) is the share of ALL slots; pinning every FFN expert at
  K_e/(K·N) leaves (K-K_e)/K of the slots to zero experts, i.e. K_e FFN experts per token."""
  n = n_routed_experts
  target = target_ffn_per_token / (top_k * n)
  delta = rate * (target - expert_load[..., :n].astype(jnp.float32))
  return bias.at[..., :n].add(delta.astype(bias.dtype))


# ------------------------------------------------------------------ losses


def sequence_balance_loss(seq_load: Array, seq_router_prob: Array, *, n_routed_experts: int,
                          alpha: float) -> Array:
  """Complementary sequence-wise balance loss (DeepSeek-V3 eqs. 17-20):
  L = alpha * mean_b sum_{i<N} f_i P_i with f_i = N/(K·T) * count_i = N * seq_load_i and
  P_i = (1/T) sum_t s_i,t / sum_j s_j,t = seq_router_prob_i. Uniform routing gives alpha.
  Inputs [..., B, N+Z] as sown; only the N FFN slots enter."""
  n = n_routed_experts
  f = n * jax.lax.stop_gradient(seq_load[..., :n].astype(jnp.float32))
  p = seq_router_prob[..., :n].astype(jnp.float32)
  return alpha * jnp.mean(jnp.sum(f * p, axis=-1))


def device_balance_loss(seq_load: Array, seq_router_prob: Array, *, n_routed_experts: int,
                        num_groups: int, top_k: int, target_ffn_per_token: float,
                        alpha: float) -> Array:
  """LongCat-Flash device-level balance loss (model-spec §3.4; constants from secondary
  sources, see spec §8). FFN experts split into D = num_groups contiguous groups of N/D,
  all zero experts form group D+1. Per sequence
    L = alpha * ( sum_{j<=D} f_j P_j + f_0 P_0 ),
    f_j = count_j / (T·K_e/D) = group_load_j · K·D / K_e     (FFN groups, normalised by K_e)
    f_0 = count_0 / (T·(K-K_e)) = zero_load · K / (K - K_e)  (zero group, by K - K_e)
    P_j = sum of the mean router probabilities of the slots in group j,
  averaged over sequences. At the target split every f is 1 and L = alpha. Without zero
  experts the zero-group term is omitted."""
  n, d = n_routed_experts, num_groups
  if n % d:
    raise ValueError(f"num_groups={d} must divide n_routed_experts={n}")
  load = jax.lax.stop_gradient(seq_load.astype(jnp.float32))
  prob = seq_router_prob.astype(jnp.float32)
  lead = load.shape[:-1]
  group_load = load[..., :n].reshape(lead + (d, n // d)).sum(-1)
  group_prob = prob[..., :n].reshape(lead + (d, n // d)).sum(-1)
  per_seq = jnp.sum(group_load * top_k * d / target_ffn_per_token * group_prob, axis=-1)
  if load.shape[-1] > n:
    if not target_ffn_per_token < top_k:
      raise ValueError("the zero-expert group needs target_ffn_per_token < top_k")
    zero_f = load[..., n:].sum(-1) * top_k / (top_k - target_ffn_per_token)
    per_seq = per_seq + zero_f * prob[..., n:].sum(-1)
  return alpha * jnp.mean(per_seq)


def router_z_loss(logits: Array) -> Array:
  """ST-MoE router z-loss (Zoph et al. 2022, arXiv 2202.08906 eq. 5):
  mean over tokens of logsumexp_i(logits_i)^2. logits [..., N+Z]."""
  lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(lse * lse)


# ------------------------------------------------------------------ sown statistics


def _iter_stats(tree: Mapping, path: tuple = ()):
  """Yields (module_path, name, array) for every sown MoE statistic in an intermediates tree."""
  for key, val in tree.items():
    if key in MOE_STAT_NAMES and isinstance(val, (tuple, list)):
      for arr in val:
        yield path, key, arr
    elif isinstance(val, Mapping):
      yield from _iter_stats(val, path + (key,))


def collect_moe_stats(intermediates: Mapping) -> dict[str, Array]:
  """Totals/means across all MoE layers of an `intermediates` tree (for training metrics).

  Accepts the tree with or without a top-level "intermediates" key; scanned layers (stats
  with an extra leading layer axis) count as one layer per row. Returns {} if no MoE
  layer sowed. Keys: moe_layers (count), dropped_slots and expert_rows (sums over layers),
  zero_expert_share, ffn_experts_per_token, router_z_loss (means over layers),
  expert_load [N+Z] (mean over layers), max_load_ratio (mean over layers of
  max_i load_i / mean_i load_i over all slots; 1 = perfectly even).
  """
  if "intermediates" in intermediates and isinstance(intermediates["intermediates"], Mapping):
    intermediates = intermediates["intermediates"]
  per_name: dict[str, list[Array]] = {}
  for _, name, arr in _iter_stats(intermediates):
    base = _BASE_RANK.get(name, 0)
    arr = jnp.asarray(arr)
    per_name.setdefault(name, []).append(arr.reshape((-1,) + arr.shape[arr.ndim - base:]))
  if not per_name:
    return {}
  stacked = {k: jnp.concatenate(v, axis=0) for k, v in per_name.items()}
  out: dict[str, Array] = {}
  any_key = next(iter(stacked))
  out["moe_layers"] = jnp.asarray(stacked[any_key].shape[0], jnp.int32)
  for name in ("dropped_slots", "expert_rows"):
    if name in stacked:
      out[name] = stacked[name].sum()
  for name in ("zero_expert_share", "ffn_experts_per_token", "router_z_loss"):
    if name in stacked:
      out[name] = stacked[name].mean()
  if "expert_load" in stacked:
    load = stacked["expert_load"]
    out["expert_load"] = load.mean(0)
    out["max_load_ratio"] = jnp.mean(load.max(-1) / load.mean(-1))
  return out


def update_router_biases(router_state: Any, intermediates: Mapping,
                         update: Callable[[Array, Array], Array]) -> Any:
  """Applies `update(bias, expert_load)` (e.g. a functools.partial of one of the bias
  updates above) to every `router/e_score_correction_bias` in `router_state`, using the
  `expert_load` sown by the MoE module that owns that router. Keeps logical-partitioning
  boxes. Layers that sowed nothing keep their bias. Module paths must match, i.e. pass the
  trees of the same `apply`.
  """
  if "intermediates" in intermediates and isinstance(intermediates["intermediates"], Mapping):
    intermediates = intermediates["intermediates"]
  if "router_state" in router_state:  # a full variables dict: update just that collection
    return {**router_state, "router_state": update_router_biases(
        router_state["router_state"], intermediates, update)}
  loads = {}
  for path, name, arr in _iter_stats(intermediates):
    if name == "expert_load":
      loads.setdefault(path, []).append(jnp.asarray(arr))

  def visit(node, path):
    if not isinstance(node, Mapping):
      return node
    new = {}
    for key, val in node.items():
      if key == "e_score_correction_bias" and len(path) >= 1 and path[-1] == "router":
        found = loads.get(path[:-1])
        if found:
          load = found[0] if len(found) == 1 else jnp.mean(jnp.stack(found), axis=0)
          if isinstance(val, nn.meta.AxisMetadata):
            val = val.replace_boxed(update(val.unbox(), load))
          else:
            val = update(val, load)
        new[key] = val
      else:
        new[key] = visit(val, path + (key,))
    return type(node)(new) if not isinstance(node, dict) else new

  return visit(router_state, ())
