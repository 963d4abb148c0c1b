"""Weighted next-token cross-entropy plus the MoE balance terms (the mid-training objective).

    loss = sum_i w_i * CE_i / normalizer                      (token-weighted mean)
         + batch_fraction * (balance_alpha-term + z_loss * router z-loss)

w = batch["weights"] (the pipeline's target weights: mask policy x source weight; 0 on
padding). The CE is also broken down by the mask kind of the target token
(batch["target_kind"], an index into data.render.MASK_KINDS) and by source
(batch["source_id"]) as (sum of w*CE, sum of w) pairs; the caller divides after adding up
micro-batches. Tokens whose kind or source id falls outside [0, num_kinds) / [0, num_sources)
while carrying weight are counted in `kind_/source_unassigned_weight`, never silently lost.

MoE terms use the statistics MoE layers sow into "intermediates" (agentic_jax.models.moe):
  balance_loss "sequence": DeepSeek-V3 complementary sequence-wise loss, summed over layers;
               "device":   LongCat-Flash device-level loss (balance_groups groups), summed;
               "none".
  z_loss:      coefficient of the ST-MoE router z-loss, summed over layers.
Both are means over the sequences / tokens of the batch a call sees, hence the
batch_fraction scale: equal micro-batches then add up to the big-batch value.

A model with an MTP module (ModelConfig.num_mtp_layers = D > 0) adds
  mtp_loss_weight / D * sum_k (w_k * CE_k summed) / normalizer     (objectives/mtp.py)
and reports per depth `mtp_ce_sum` / `mtp_weight` [D] (train metrics `mtp_loss` [D]).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from agentic_jax.data.render import MASK_KINDS
from agentic_jax.models import balance
from agentic_jax.objectives import mtp as mtp_lib
from agentic_jax.objectives import register_loss

Array = jax.Array

DEFAULT_OPTIONS = {
    "balance_loss": "sequence",  # "none" | "sequence" | "device"
    "balance_alpha": 1e-4,
    "balance_groups": 1,  # device groups for balance_loss="device"
    "target_ffn_per_token": -1.0,  # K_e for the device loss; <= 0 means "all K slots"
    "z_loss": 0.0,
    "num_kinds": len(MASK_KINDS),  # follows render's kinds (a new kind is appended there)
    "num_sources": 1,
    "mtp_loss_weight": 0.3,  # lambda of the MTP term (DeepSeek-V3: 0.3, later 0.1); no MTP: unused
}


def _target_mask(logits: Array, targets: Array) -> Array:
  """[..., V] bool, True at each row's target: a compare against an iota that XLA fuses into
  its consumer (a take_along_axis gather would scatter into a [.., V] zero array backward)."""
  vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return vocab == targets[..., None].astype(jnp.int32)


def token_cross_entropy(logits: Array, targets: Array) -> Array:
  """-log softmax(logits)[target] per position, float32 [B, T]."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.sum(jnp.where(_target_mask(logits, targets), logits, 0.0), axis=-1)
  return lse - picked


def argmax_hits(logits: Array, targets: Array) -> Array:
  """float32 [B, T]: 1 where argmax(logits) == target (ties: the first maximum, as argmax).
  Written as a max and a min over single arrays: XLA:CPU runs argmax's two-operand reduce
  one element at a time (4% of the tiny benchmark step), these vectorise and share the max
  with logsumexp."""
  vocab = logits.shape[-1]
  top = jnp.max(logits, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  first = jnp.min(jnp.where(logits == top, iota, vocab), axis=-1)
  return (first == targets.astype(jnp.int32)).astype(jnp.float32)


def _grouped_sums(values: Array, weights: Array, ids: Array, num: int) -> tuple[Array, Array]:
  """(sum of weights*values per id, sum of weights per id) for ids in [0, num)."""
  onehot = jax.nn.one_hot(ids, num, dtype=jnp.float32)  # out-of-range ids -> all zeros
  return (jnp.einsum("bt,btk->k", weights * values, onehot),
          jnp.einsum("bt,btk->k", weights, onehot))


def moe_module_stats(intermediates: Mapping) -> list[dict[str, Array]]:
  """One dict per MoE module of the sown statistics; each array keeps any leading layer
  axis (scanned layers) and, if the module ran several times, a leading call axis."""
  out = []

  def visit(node):
    if not isinstance(node, Mapping):
      return
    if "seq_load" in node:
      stats = {}
      for name, val in node.items():
        if isinstance(val, (tuple, list)):
          stats[name] = val[0] if len(val) == 1 else jnp.stack(val)
      out.append(stats)
      return
    for val in node.values():
      visit(val)

  visit(intermediates.get("intermediates", intermediates))
  return out


def _per_layer(fn, seq_load: Array, seq_prob: Array) -> Array:
  """Sum over layers of fn(seq_load[B, S], seq_prob[B, S]) for inputs [..., B, S]."""
  lead = seq_load.shape[:-2]
  if not lead:
    return fn(seq_load, seq_prob)
  flat = lambda a: a.reshape((-1,) + a.shape[-2:])
  return jnp.sum(jax.vmap(fn)(flat(seq_load), flat(seq_prob)))


def moe_losses(intermediates: Mapping, model_cfg: Any, options: Mapping) -> tuple[Array, Array]:
  """(balance loss incl. alpha, raw router z-loss) summed over MoE layers; zeros if none."""
  mods = moe_module_stats(intermediates)
  zero = jnp.zeros((), jnp.float32)
  if not mods:
    return zero, zero
  kind = options["balance_loss"]
  n = model_cfg.n_routed_experts
  if kind == "sequence":
    fn = lambda l, p: balance.sequence_balance_loss(l, p, n_routed_experts=n,
                                                    alpha=options["balance_alpha"])
  elif kind == "device":
    k = model_cfg.num_experts_per_tok
    target = options["target_ffn_per_token"]
    target = float(k) if target <= 0 else float(target)
    fn = lambda l, p: balance.device_balance_loss(
        l, p, n_routed_experts=n, num_groups=options["balance_groups"], top_k=k,
        target_ffn_per_token=target, alpha=options["balance_alpha"])
  elif kind == "none":
    fn = None
  else:
    raise ValueError(f"objective.balance_loss must be 'none', 'sequence' or 'device', got {kind!r}")
  bal = zero
  z = zero
  for m in mods:
    if fn is not None:
      bal = bal + _per_layer(fn, m["seq_load"], m["seq_router_prob"])
    z = z + jnp.sum(m["router_z_loss"])
  return bal, z


@register_loss("next_token")
def next_token_loss(logits: Array, intermediates: Mapping, batch: Mapping[str, Array], *,
                    model_cfg: Any, options: Mapping, normalizer: Array,
                    batch_fraction: float = 1.0) -> tuple[Array, dict[str, Array]]:
  opts = {**DEFAULT_OPTIONS, **dict(options)}
  unknown = set(options) - set(DEFAULT_OPTIONS)
  if unknown:
    raise ValueError(f"next_token loss: unknown options {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
  w = batch["weights"].astype(jnp.float32)
  ce = token_cross_entropy(logits, batch["targets"])
  ce_sum = jnp.sum(w * ce)
  weight_sum = jnp.sum(w)
  correct = argmax_hits(jax.lax.stop_gradient(logits).astype(jnp.float32), batch["targets"])
  aux = {"ce_sum": ce_sum, "weight_sum": weight_sum, "correct_sum": jnp.sum(w * correct)}
  for key, num in (("target_kind", opts["num_kinds"]), ("source_id", opts["num_sources"])):
    if key in batch:
      ids = batch[key].astype(jnp.int32)
      name = "kind" if key == "target_kind" else "source"
      aux[f"{name}_ce_sum"], aux[f"{name}_weight"] = _grouped_sums(ce, w, ids, num)
      outside = (ids < 0) | (ids >= num)
      aux[f"{name}_unassigned_weight"] = jnp.sum(jnp.where(outside, w, 0.0))
  bal, z = moe_losses(intermediates, model_cfg, opts)
  aux["balance_loss"] = bal * batch_fraction
  aux["router_z_loss"] = z * batch_fraction
  loss = ce_sum / normalizer + batch_fraction * (bal + opts["z_loss"] * z)
  depth_logits = mtp_lib.mtp_logits(intermediates)
  if depth_logits:
    aux["mtp_ce_sum"], aux["mtp_weight"] = mtp_lib.mtp_sums(depth_logits, batch, token_cross_entropy)
    loss = loss + opts["mtp_loss_weight"] / len(depth_logits) * jnp.sum(aux["mtp_ce_sum"]) / normalizer
  return loss, aux
