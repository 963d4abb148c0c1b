"""Attention cores for MLA: plain einsum (`xla`) and key-blocked online softmax (`chunked`).

Both take queries [B, T, H, D], keys [B, S, H, D] or a single shared key [B, S, D]
(MQA, the absorbed MLA decode path) and values [B, S, H, Dv] or [B, S, Dv], and one
mask rule: query t may see key s iff `k_index[s] <= q_index[t]` (causal) and
`q_segment[t] == k_segment[s]` (packed samples never attend to each other; empty or
padded cache slots carry segment 0). The value head dim may differ from the key's
(MLA: 192 vs 128), which `jax.nn.dot_product_attention` does not allow.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array

_NEG = -1e30  # finite "minus infinity": keeps fully-masked blocks NaN-free


def segment_causal_mask(q_index: Array, k_index: Array, q_segment: Array,
                        k_segment: Array) -> Array:
  """[B, T, S] bool: query t sees key s when k_index[s] <= q_index[t] and both share a segment."""
  causal = k_index[:, None, :] <= q_index[:, :, None]
  same = q_segment[:, :, None] == k_segment[:, None, :]
  return causal & same


def _scores(q: Array, k: Array) -> Array:
  if k.ndim == 3:  # one key shared by all heads
    return jnp.einsum("bthd,bsd->bhts", q, k, preferred_element_type=jnp.float32)
  return jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)


def _weighted(p: Array, v: Array) -> Array:
  if v.ndim == 3:  # heads kept beside the batch in the dot: XLA:CPU has no bf16 x bf16 -> f32
    # dot with them moved after the query axis
    return jnp.moveaxis(jnp.einsum("bhts,bsd->bhtd", p, v, preferred_element_type=jnp.float32), 1, 2)
  # heads beside the batch on both sides, the output transposed after: XLA:CPU ran the
  # "bhts,bshd->bthd" form at ~half the speed (1.5 vs 2.7-3.6 ms at 8x4x256x256x32, Xeon),
  # and the transposes touch only [B, S, H, D]
  out = jnp.einsum("bhts,bhsd->bhtd", p, jnp.swapaxes(v, 1, 2), preferred_element_type=jnp.float32)
  return jnp.swapaxes(out, 1, 2)


def _weighted_t(p: Array, g: Array, shared: bool) -> Array:
  """p^T g: [B, H, T, S] x [B, T, H, D] -> keys' side [B, S, H, D] (or [B, S, D] when the key
  / value is shared by all heads, whose gradient sums the heads)."""
  spec = "bhts,bthd->bsd" if shared else "bhts,bthd->bshd"
  return jnp.einsum(spec, p, g, preferred_element_type=jnp.float32)


def _xla_fwd(q, k, v, mask, scale):
  s = jnp.where(mask, _scores(q, k) * scale, _NEG)
  m = s.max(-1, keepdims=True)
  # a row with no visible key (max still _NEG) gets p = 0 and a zero output, not a uniform
  # average: exp(_NEG - 0) underflows to 0
  m = jnp.where(m > 0.5 * _NEG, m, 0.0)
  p = jnp.exp(s - m)  # unnormalised; masked entries are exactly 0
  l = p.sum(-1)  # [B, H, T]
  l = jnp.moveaxis(jnp.where(l > 0, l, 1.0), 1, 2)[..., None]  # [B, T, H, 1]
  out = _weighted(p.astype(v.dtype), v) / l  # normalised after the matmul: [B, T, H, Dv] pass
  return out.astype(q.dtype), (q, k, v, p, l, out)  # no mask: masked p are 0


def _xla_bwd(scale, res, g):
  """Flash-attention's backward on the materialised scores (P = p / l, O = P V):
  dV = P^T dO = p^T (dO / l);  dP = dO V^T;  dS = P * (dP - rowsum(dO * O));
  dQ = scale dS K;  dK = scale dS^T Q. rowsum(dO * O) is a [B, T, H] reduction over Dv, so
  the softmax backward costs one elementwise pass over the scores instead of autodiff's
  select/divide/exp chain, and the mask needs no pass of its own (masked p are 0)."""
  q, k, v, p, l, out = res
  g = g.astype(jnp.float32)
  delta = jnp.moveaxis((g * out).sum(-1), 1, 2)[..., None]  # [B, H, T, 1]
  dv = _weighted_t(p.astype(v.dtype), (g / l).astype(v.dtype), v.ndim == 3)
  dp = _scores(g.astype(v.dtype), v)  # dO V^T: the same contraction as Q K^T
  ds = (p / jnp.moveaxis(l, 1, 2)) * (dp - delta) * scale
  ds = ds.astype(q.dtype)
  dq = _weighted(ds, k)
  dk = _weighted_t(ds, q, k.ndim == 3)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _xla_core(q, k, v, mask, scale):
  return _xla_fwd(q, k, v, mask, scale)[0]


_xla_core.defvjp(_xla_fwd, _xla_bwd)


CAUSAL_BLOCK = 128  # smallest query block of the causal skip below


def xla_attention(q, k, v, q_index, k_index, q_segment, k_segment, scale: float,
                  causal_aligned: bool = False) -> Array:
  """Materialises the [B, H, T, S] scores in float32. Its gradient is hand-written
  (`_xla_bwd`): the same math as autodiff of a softmax, in fewer passes over the scores.

  causal_aligned (the caller promises q_index == k_index == arange(T) on every row): the
  queries are cut into n = min(8, T // CAUSAL_BLOCK) equal blocks and block i scores only
  the keys up to its end, so (n + 1) / 2n of the scores are computed (3/4 at T 256, 9/16 from
  T 1024) and the ones above the diagonal, all masked, are skipped. Same result."""
  mask = segment_causal_mask(q_index, k_index, q_segment, k_segment)[:, None]
  length = q.shape[1]
  n = min(8, length // CAUSAL_BLOCK)
  if not causal_aligned or n < 2 or length % n or k.shape[1] != length:
    return _xla_core(q, k, v, mask, float(scale))
  size = length // n
  outs = [_xla_core(q[:, i * size:(i + 1) * size], k[:, :(i + 1) * size], v[:, :(i + 1) * size],
                    mask[:, :, i * size:(i + 1) * size, :(i + 1) * size], float(scale))
          for i in range(n)]
  return jnp.concatenate(outs, axis=1)


def chunked_attention(q, k, v, q_index, k_index, q_segment, k_segment, scale: float,
                      chunk_size: int) -> Array:
  """Online softmax over key blocks of `chunk_size`: peak memory is [B, H, T, chunk]."""
  batch, length = k.shape[:2]
  chunk = min(chunk_size, length)
  pad = (-length) % chunk
  if pad:  # padded keys get segment -1, which no query has
    pad_width = [(0, 0), (0, pad)] + [(0, 0)] * (k.ndim - 2)
    k = jnp.pad(k, pad_width)
    v = jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
    k_index = jnp.pad(k_index, ((0, 0), (0, pad)))
    k_segment = jnp.pad(k_segment, ((0, 0), (0, pad)), constant_values=-1)
  nblocks = (length + pad) // chunk

  def blocks(x):  # [B, S, ...] -> [nblocks, B, chunk, ...]
    x = x.reshape(batch, nblocks, chunk, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  heads = q.shape[2]
  tq = q.shape[1]
  dv = v.shape[-1]
  init = (jnp.full((batch, heads, tq), _NEG, jnp.float32),  # running max
          jnp.zeros((batch, heads, tq), jnp.float32),  # running denominator
          jnp.zeros((batch, tq, heads, dv), jnp.float32))  # running numerator

  def step(carry, blk):
    m, l, acc = carry
    kb, vb, kib, ksb = blk
    s = _scores(q, kb) * scale
    mask = segment_causal_mask(q_index, kib, q_segment, ksb)[:, None]
    s = jnp.where(mask, s, _NEG)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    l = l * corr + p.sum(-1)
    acc = acc * jnp.moveaxis(corr, 1, 2)[..., None] + _weighted(p.astype(vb.dtype), vb)
    return (m_new, l, acc), None

  (m, l, acc), _ = jax.lax.scan(step, init, (blocks(k), blocks(v), blocks(k_index),
                                             blocks(k_segment)))
  l = jnp.moveaxis(l, 1, 2)[..., None]
  return (acc / jnp.where(l > 0, l, 1.0)).astype(q.dtype)


def attention(q, k, v, q_index, k_index, q_segment, k_segment, *, scale: float, impl: str,
              chunk_size: int = 512, causal_aligned: bool = False) -> Array:
  # causal_aligned: q_index == k_index == arange(T) (promised by the caller): the fused core
  # lets cuDNN skip the blocks above the diagonal, the xla core skips them by query blocks.
  if impl == "fused":  # jax.nn.dot_product_attention, cuDNN on GPU: attention_fused.py
    from agentic_jax.models import attention_fused  # pylint: disable=import-outside-toplevel
    return attention_fused.fused_attention(q, k, v, q_index, k_index, q_segment, k_segment,
                                           scale=scale, causal_aligned=causal_aligned)
  if impl == "xla":
    return xla_attention(q, k, v, q_index, k_index, q_segment, k_segment, scale, causal_aligned)
  if impl == "chunked":
    return chunked_attention(q, k, v, q_index, k_index, q_segment, k_segment, scale, chunk_size)
  raise ValueError(f"attention impl must be 'xla', 'chunked' or 'fused', got {impl!r}")
