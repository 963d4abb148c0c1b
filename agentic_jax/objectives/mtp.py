"""The multi-token-prediction term of the next-token objective (DeepSeek-V3 §2.2, model-spec §2).

Depth k's logits at position i (sown by models/mtp.py as `intermediates/mtp_logits[k-1]`)
predict the token k positions after the main model's target there, i.e. targets[i + k]. Its
weight is the main weight of that target, and 0 when position i + k is past the end of the row
or in another packed sequence (segment_ids differ: the MTP input there came from the next
document). Per depth (sum of w * CE, sum of w) go out as metrics; the objective adds

    mtp_loss_weight / D * sum_k (sum_i w_k,i * CE_k,i) / normalizer

(DeepSeek's lambda / D * sum_k L_MTP^k, with the main term's token normaliser so micro-batches
add up like the main CE). DeepSeek-V3 trained with lambda = 0.3, then 0.1.
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def mtp_logits(intermediates: Mapping) -> tuple[Array, ...]:
  """The sown per-depth MTP logits, () when the model has no MTP module (or did not run it)."""
  tree = intermediates.get("intermediates", intermediates)
  return tuple(tree.get("mtp_logits", ()))


def shifted_weights(weights: Array, segment_ids: Optional[Array], k: int) -> Array:
  """w_k[i] = w[i + k] if position i + k exists and is in position i's sequence, else 0."""
  w = weights.astype(jnp.float32)
  pad = jnp.zeros_like(w[:, :k])
  out = jnp.concatenate([w[:, k:], pad], axis=1)
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    same = jnp.concatenate([seg[:, k:] == seg[:, :-k], jnp.zeros_like(seg[:, :k], bool)], axis=1)
    out = jnp.where(same, out, 0.0)
  return out


def mtp_sums(depth_logits: tuple[Array, ...], batch: Mapping[str, Array], ce_fn
             ) -> tuple[Array, Array]:
  """(sum of w_k * CE_k, sum of w_k) per depth, float32 [D] each; ce_fn(logits, targets)."""
  targets = batch["targets"]
  ce_sums, weights = [], []
  for k, logits in enumerate(depth_logits, start=1):
    tk = jnp.concatenate([targets[:, k:], jnp.zeros_like(targets[:, :k])], axis=1)
    wk = shifted_weights(batch["weights"], batch.get("segment_ids"), k)
    ce_sums.append(jnp.sum(wk * ce_fn(logits, tk)))
    weights.append(jnp.sum(wk))
  return jnp.stack(ce_sums), jnp.stack(weights)
