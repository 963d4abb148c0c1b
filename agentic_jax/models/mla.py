"""Multi-head Latent Attention (DeepSeek-V2/V3, Youtu-LLM, LongCat-Flash).

Two mathematically equal paths (model-spec §1.1):
  * expanded (training / full forward): per-head k_nope and v are decompressed from the
    latent with kv_b_proj, the single rope key is broadcast to all heads;
  * absorbed (decoding with a cache): kv_b_proj's key half is folded into the query and its
    value half applied after attention, so attention runs as MQA over the cached
    [normed latent | rotated rope key] (rkv + dr values per token) and values = latent.
The softmax scale is (dn + dr)^-0.5 (× YaRN mscale²) on both paths, not (rkv + dr)^-0.5.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from agentic_jax.models import attention as attn_lib
from agentic_jax.models.config import ModelConfig
from agentic_jax.models.layers import Dense, RMSNorm, apply_rope, constrain, dtype_of

Array = jax.Array


class AttentionContext(NamedTuple):
  """What every attention sublayer of one forward pass shares (computed once per call)."""
  cos: Array  # [B, T, dr/2]
  sin: Array
  # Without a cache, q_index == k_index == arange(T) on every row (models/model.py, mtp.py):
  # MLA passes that promise on as causal_aligned (the fused core's cuDNN causal skip).
  q_index: Array  # [B, T] absolute slot of each query (causal order)
  q_segment: Array  # [B, T]
  k_index: Array  # [B, S]
  k_segment: Array  # [B, S]
  cache_index: Optional[Array] = None  # scalar write offset into the cache; None = no cache


class LayerCache(NamedTuple):
  """Compressed MLA cache of one attention sublayer: only what the absorbed path reads."""
  latent: Array  # [B, S, kv_lora_rank]  normed (and LongCat-scaled) latent c
  k_rope: Array  # [B, S, qk_rope_head_dim]  rotated shared rope key


class MLA(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, ctx: AttentionContext,
               cache: Optional[LayerCache] = None) -> tuple[Array, Optional[LayerCache]]:
    cfg = self.cfg
    H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    d, rkv = cfg.hidden_size, cfg.kv_lora_rank
    cdt = dtype_of(cfg.dtype)

    # ---- query
    if cfg.q_lora_rank is not None:
      cq = Dense((cfg.q_lora_rank,), ("embed", "q_lora"), cfg, cfg.attention_bias, name="q_a_proj")(x)
      cq = RMSNorm(cfg.latent_norm_eps, "q_lora", cfg.param_dtype, name="q_a_layernorm")(cq)
      q = Dense((H, cfg.qk_head_dim), ("q_lora", "heads", "qk_head_dim"), cfg, name="q_b_proj")(cq)
    else:
      q = Dense((H, cfg.qk_head_dim), ("embed", "heads", "qk_head_dim"), cfg, name="q_proj")(x)
    if cfg.mla_scale_q_lora:
      q = q * math.sqrt(d / cfg.q_lora_rank)
    q_nope, q_rope = q[..., :dn], q[..., dn:]
    q_rope = apply_rope(q_rope, ctx.cos, ctx.sin, cfg.rope_interleave)

    # ---- compressed kv: latent c and the single shared rope key
    z = Dense((rkv + dr,), ("embed", "kv_lora"), cfg, cfg.attention_bias, name="kv_a_proj_with_mqa")(x)
    c = RMSNorm(cfg.latent_norm_eps, "kv_lora", cfg.param_dtype, name="kv_a_layernorm")(z[..., :rkv])
    if cfg.mla_scale_kv_lora:
      c = c * math.sqrt(d / rkv)
    k_rope = apply_rope(z[..., rkv:], ctx.cos, ctx.sin, cfg.rope_interleave)
    c = constrain(c, ("activation_batch", "activation_length", "activation_kv_lora"))

    kv_b = Dense((H, dn + dv), ("kv_lora", "heads", "kv_head_dim"), cfg, name="kv_b_proj")
    kw = dict(scale=cfg.softmax_scale, impl=cfg.attention_impl, chunk_size=cfg.attention_chunk_size)
    if cache is None:
      kv = kv_b(c)  # [B, T, H, dn + dv]
      k = jnp.concatenate([kv[..., :dn], jnp.broadcast_to(k_rope[:, :, None, :], (*kv.shape[:3], dr))], -1)
      query = jnp.concatenate([q_nope, q_rope], -1).astype(cdt)
      query = constrain(query, ("activation_batch", "activation_length", "activation_heads", None))
      out = attn_lib.attention(query, k.astype(cdt), kv[..., dn:].astype(cdt), ctx.q_index,
                               ctx.k_index, ctx.q_segment, ctx.k_segment, causal_aligned=True,
                               **kw)
      new_cache = None
    else:
      if self.is_initializing():
        kv_b(c)  # create the kernel; the absorbed path reads it directly
      w = self.get_variable("params", "kv_b_proj")["kernel"]
      w = nn.meta.unbox(w).astype(cdt)  # [rkv, H, dn + dv]
      idx = ctx.cache_index
      latent = jax.lax.dynamic_update_slice_in_dim(cache.latent, c.astype(cache.latent.dtype), idx, 1)
      rope_k = jax.lax.dynamic_update_slice_in_dim(cache.k_rope, k_rope.astype(cache.k_rope.dtype), idx, 1)
      new_cache = LayerCache(latent, rope_k)
      q_lat = jnp.einsum("bthn,rhn->bthr", q_nope.astype(cdt), w[..., :dn])
      query = jnp.concatenate([q_lat, q_rope.astype(cdt)], -1)
      key = jnp.concatenate([latent, rope_k], -1).astype(cdt)
      out_lat = attn_lib.attention(query, key, latent.astype(cdt), ctx.q_index, ctx.k_index,
                                   ctx.q_segment, ctx.k_segment, **kw)
      out = jnp.einsum("bthr,rhv->bthv", out_lat, w[..., dn:])
    out = Dense((d,), ("heads", "v_head_dim", "embed"), cfg, cfg.attention_bias, in_axes=2,
                name="o_proj")(out)
    return out, new_cache
