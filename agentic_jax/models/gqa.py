"""Grouped-query attention and the Llama-style decoder layer (IQuest-Coder-V1, model-spec §5).

Unlike MLA, the layer caches plain post-RoPE keys and values: `num_key_value_heads` (KV) heads
of `head_dim` each, shared by H / KV query heads. The attention core takes the keys it should
read explicitly (with their slot indices and segments) because the IQuest Loop variant attends
over two key sets per layer, loop-1 keys (global) and its own loop's keys (sliding window);
models/loop_lm.py decides which.

Parameter layout per layer (transformers' LlamaDecoderLayer names):
  input_layernorm/weight, self_attn/{q,k,v,o}_proj/kernel (+ bias if attention_bias),
  post_attention_layernorm/weight, mlp/{gate,up,down}_proj, loop_gate/{weight,bias} (loop_num > 1).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from agentic_jax.models.config import ModelConfig
from agentic_jax.models.layers import (Dense, RMSNorm, SwiGLU, apply_rope, constrain, dtype_of,
                                       param, rope_cos_sin)

Array = jax.Array

_NEG = -1e30  # finite "minus infinity": a fully masked row (a padded query) stays NaN-free

_ACT = ("activation_batch", "activation_length", "activation_embed")


def gqa_rope(cfg: ModelConfig, positions: Array) -> tuple[Array, Array]:
  """cos, sin [B, T, head_dim / 2] for the GQA head: RoPE rotates the whole head, so the
  rotary dim is head_dim (rope_cos_sin reads qk_rope_head_dim, the MLA rotary dim)."""
  return rope_cos_sin(cfg.replace(qk_rope_head_dim=cfg.attn_head_dim), positions)


def gqa_attention(q: Array, k: Array, v: Array, q_index: Array, k_index: Array, q_segment: Array,
                  k_segment: Array, *, scale: float, window: Optional[int] = None) -> Array:
  """softmax(q k^T * scale + mask) v with H / KV query heads per K/V head.

  q [B, T, H, D], k and v [B, S, KV, D]; query t sees key s iff k_index[s] <= q_index[t],
  q_segment[t] == k_segment[s] and, with a window W, k_index[s] > q_index[t] - W (a true
  sliding window: every query its own last W keys, itself included). Scores and softmax in
  float32. Returns [B, T, H, D] in q's dtype.
  """
  b, t, h, d = q.shape
  kv = k.shape[2]
  qg = q.reshape(b, t, kv, h // kv, d)  # head j uses K/V head j // (H / KV), as repeat_kv
  s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
  mask = (k_index[:, None, :] <= q_index[:, :, None]) & (q_segment[:, :, None] == k_segment[:, None, :])
  if window is not None:
    mask = mask & (k_index[:, None, :] > q_index[:, :, None] - window)
  mask = mask[:, None, None]
  s = jnp.where(mask, s, _NEG)
  p = jnp.where(mask, jax.nn.softmax(s, axis=-1), 0.0)
  out = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.reshape(b, t, h, d).astype(q.dtype)


class LoopGate(nn.Module):
  """Per-head gate of the IQuest Loop: g[b, t, h] = sigmoid(q[b, t, h] . weight[h] + bias[h])
  from the post-RoPE query (transformers-style `gate_projections.{l}`: weight [H, head_dim],
  bias [H]). Zero-initialised as the public code does, so an untrained gate is 0.5."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, q: Array) -> Array:
    cfg = self.cfg
    pdt = dtype_of(cfg.param_dtype)
    h, d = cfg.num_attention_heads, cfg.attn_head_dim
    w = param(self, "weight", (h, d), ("heads", "head_dim"), nn.initializers.zeros, pdt)
    b = param(self, "bias", (h,), ("heads",), nn.initializers.zeros, pdt)
    logits = jnp.einsum("bthd,hd->bth", q.astype(jnp.float32), w.astype(jnp.float32))
    return jax.nn.sigmoid(logits + b.astype(jnp.float32))[..., None]  # [B, T, H, 1]


class GQAProjections(nn.Module):
  """q_proj [d, H, D], k_proj / v_proj [d, KV, D], o_proj [H, D, d] (transformers' self_attn)."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    h, kv, d = cfg.num_attention_heads, cfg.kv_heads, cfg.attn_head_dim
    bias = cfg.attention_bias  # Llama's attention_bias: on q, k, v and o alike
    self.q_proj = Dense((h, d), ("embed", "heads", "head_dim"), cfg, bias)
    self.k_proj = Dense((kv, d), ("embed", "kv_heads", "head_dim"), cfg, bias)
    self.v_proj = Dense((kv, d), ("embed", "kv_heads", "head_dim"), cfg, bias)
    self.o_proj = Dense((cfg.hidden_size,), ("heads", "head_dim", "embed"), cfg, bias, in_axes=2)

  def qkv(self, x: Array, cos: Array, sin: Array) -> tuple[Array, Array, Array]:
    q = apply_rope(self.q_proj(x), cos, sin, self.cfg.rope_interleave)
    k = apply_rope(self.k_proj(x), cos, sin, self.cfg.rope_interleave)
    return q, k, self.v_proj(x)

  def out(self, o: Array) -> Array:
    return self.o_proj(o)


class LlamaLayer(nn.Module):
  """Pre-norm GQA attention + SwiGLU, split into the steps the loop model interleaves with
  its choice of keys: `qkv` (norm, projections, RoPE), `gate` (Loop only) and `finish`
  (o_proj, residual, post-attention norm, MLP, residual)."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.input_layernorm = RMSNorm(cfg.rms_norm_eps, "embed", cfg.param_dtype)
    self.self_attn = GQAProjections(cfg)
    self.post_attention_layernorm = RMSNorm(cfg.rms_norm_eps, "embed", cfg.param_dtype)
    self.mlp = SwiGLU(cfg, cfg.intermediate_size)
    if cfg.loop_num > 1:
      self.loop_gate = LoopGate(cfg)

  def qkv(self, h: Array, cos: Array, sin: Array) -> tuple[Array, Array, Array]:
    """Post-RoPE q [B, T, H, D], k and v [B, T, KV, D] of the layer input h."""
    q, k, v = self.self_attn.qkv(self.input_layernorm(h), cos, sin)
    q = constrain(q, ("activation_batch", "activation_length", "activation_heads", None))
    return q, k, v

  def gate(self, q: Array) -> Array:
    return self.loop_gate(q)

  def finish(self, h: Array, attn_out: Array) -> Array:
    h = h + self.self_attn.out(attn_out).astype(h.dtype)
    h = h + self.mlp(self.post_attention_layernorm(h)).astype(h.dtype)
    return constrain(h, _ACT)
