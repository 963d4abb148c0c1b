"""Causal LM over Llama-style GQA layers: IQuest-Coder-V1 and its Loop variant (model-spec §5).

`loop_num` = 1 is a plain Llama model (transformers' `iquestcoder` builds LlamaForCausalLM).
With loop_num = L > 1 the same layers run L times (shared weights), following vLLM's
IQuestLoopCoder semantics:
  * loop 0: ordinary causal self-attention; every layer's post-RoPE K1, V1 are kept;
  * loop r >= 1 starts from the previous loop's last hidden state (no norm, no re-embedding,
    the same positions); in layer l, with q, k, v its own projections of this loop:
        A = causal attention of q over K1_l, V1_l           (global, loop-1 keys)
        B = causal attention of q over this loop's k, v, keys j with i - W < j <= i
            (a true sliding window of W = loop_window_size, the query itself included)
        g = sigmoid(q_h . w_{l,h} + b_{l,h}) per head and token, from the post-RoPE query
        attention output = g * A + (1 - g) * B, then o_proj, residual, MLP as usual;
  * the final RMSNorm and lm_head only after the last loop.

Decoding cache (`LoopCache`): the full loop-1 K/V of every layer, and for every later loop only
the last W keys/values per layer, in a ring buffer (slot i lives at i mod W); `window_index`
says which absolute slot each ring position holds (-1 = empty). The ring keeps O(W) memory per
layer and loop instead of O(S); the window mask then sees the same keys as the full forward.
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from agentic_jax.models.config import ModelConfig
from agentic_jax.models.gqa import LlamaLayer, gqa_attention, gqa_rope
from agentic_jax.models.layers import Dense, Embed, RMSNorm, constrain, default_positions

Array = jax.Array


@flax.struct.dataclass
class LoopCache:
  """GQA decoding cache. L = num_layers, W = loop_window_size, R = loop_num - 1.

  k, v: [L, B, S, KV, D] post-RoPE loop-1 keys / values; window_k, window_v:
  [R, L, B, W, KV, D] the last W keys / values of each later loop (ring buffer);
  window_index: [W] absolute slot held at each ring position (-1 = empty; W = 0 when
  loop_num = 1);
  segment: [B, S] segment id per slot (0 = empty or left padding); index: next slot.
  """
  k: Array
  v: Array
  window_k: Array
  window_v: Array
  window_index: Array
  segment: Array
  index: Array


def init_loop_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> LoopCache:
  dtype = jnp.dtype(dtype or cfg.dtype)
  kv, d = cfg.kv_heads, cfg.attn_head_dim
  w = cfg.loop_window_size if cfg.loop_num > 1 else 0  # no rings without a second loop
  full = (cfg.num_layers, batch, max_len, kv, d)
  ring = (cfg.loop_num - 1, cfg.num_layers, batch, w, kv, d)
  return LoopCache(k=jnp.zeros(full, dtype), v=jnp.zeros(full, dtype),
                   window_k=jnp.zeros(ring, dtype), window_v=jnp.zeros(ring, dtype),
                   window_index=jnp.full((w,), -1, jnp.int32),
                   segment=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32))


def _remat(cfg: ModelConfig) -> type:
  """LlamaLayer, with its two halves rematerialised under cfg.remat_policy: `qkv` (norm,
  projections, RoPE) and `finish` (o_proj, MLP). The attention between them is computed in
  the model (its keys depend on the loop) and keeps its activations."""
  if cfg.remat_policy == "none":
    return LlamaLayer
  policy = {"full": None,
            "dots": jax.checkpoint_policies.checkpoint_dots,
            "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
            }[cfg.remat_policy]
  return nn.remat(LlamaLayer, policy=policy, methods=["qkv", "finish"])


class LoopLM(nn.Module):
  """Same interface as models.model.CausalLM: `apply(variables, tokens[B, T], segment_ids=None,
  positions=None)` -> float32 logits; with `cache=LoopCache` -> (logits, new cache)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None, *, cache: Optional[LoopCache] = None,
               last_logits_only: bool = False):
    # last_logits_only: the head on the last position only, as models/model.py's CausalLM
    cfg = self.cfg
    batch, length = tokens.shape
    q_segment = (jnp.ones((batch, length), jnp.int32) if segment_ids is None
                 else segment_ids.astype(jnp.int32))
    offsets = jnp.arange(length, dtype=jnp.int32)
    start = jnp.zeros((), jnp.int32) if cache is None else cache.index
    if positions is None:
      positions = (default_positions(tokens, segment_ids) if cache is None
                   else jnp.broadcast_to(start + offsets, (batch, length)))
    q_index = jnp.broadcast_to(start + offsets, (batch, length))
    cos, sin = gqa_rope(cfg, positions)
    scale = cfg.attn_head_dim ** -0.5
    window = cfg.loop_window_size

    if cache is None:  # keys of this call only
      k_segment, k_index = q_segment, q_index
    else:  # loop-1 keys: the whole cache, this call's slots written at cache.index
      k_segment = jax.lax.dynamic_update_slice_in_dim(cache.segment, q_segment, start, 1)
      max_len = cache.segment.shape[1]
      k_index = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (batch, max_len))
    if cache is not None and cfg.loop_num > 1:
      # Ring keys first, then this call's: their slot indices and segments (an empty ring
      # position gets segment -1, which no query has).
      ring_slot = jnp.broadcast_to(cache.window_index, (batch, window))
      ring_segment = jnp.where(ring_slot >= 0, jnp.take_along_axis(
          k_segment, jnp.maximum(ring_slot, 0), axis=1), -1)
      local_index = jnp.concatenate([ring_slot, q_index], 1)
      local_segment = jnp.concatenate([ring_segment, q_segment], 1)
      # This call's last m <= W slots overwrite ring positions slot mod W (distinct, m <= W).
      m = min(length, window)
      new_slots = start + length - m + jnp.arange(m, dtype=jnp.int32)
      ring_pos = new_slots % window

    embed = Embed(cfg, name="embed_tokens")
    h = constrain(embed(tokens), ("activation_batch", "activation_length", "activation_embed"))
    layer_cls = _remat(cfg)
    layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    k1, v1 = [], []  # per layer: loop-1 keys / values over k_index
    ring_k, ring_v = [], []  # per later loop, per layer: the updated ring
    for loop in range(cfg.loop_num):
      loop_k, loop_v = [], []
      for i, layer in enumerate(layers):
        q, k, v = layer.qkv(h, cos, sin)
        if loop == 0:
          if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache.k[i], k.astype(cache.k.dtype), start, 1)
            v = jax.lax.dynamic_update_slice_in_dim(cache.v[i], v.astype(cache.v.dtype), start, 1)
          k1.append(k)
          v1.append(v)
          out = gqa_attention(q, k.astype(q.dtype), v.astype(q.dtype), q_index, k_index,
                              q_segment, k_segment, scale=scale)
        else:
          glob = gqa_attention(q, k1[i].astype(q.dtype), v1[i].astype(q.dtype), q_index, k_index,
                               q_segment, k_segment, scale=scale)
          if cache is None:
            lk, lv, li, ls = k, v, q_index, q_segment
          else:
            old_k, old_v = cache.window_k[loop - 1, i], cache.window_v[loop - 1, i]
            lk = jnp.concatenate([old_k.astype(k.dtype), k], 1)
            lv = jnp.concatenate([old_v.astype(v.dtype), v], 1)
            li, ls = local_index, local_segment
            loop_k.append(old_k.at[:, ring_pos].set(k[:, length - m:].astype(old_k.dtype)))
            loop_v.append(old_v.at[:, ring_pos].set(v[:, length - m:].astype(old_v.dtype)))
          local = gqa_attention(q, lk, lv, q_index, li, q_segment, ls, scale=scale, window=window)
          g = layer.gate(q)
          out = (g * glob.astype(jnp.float32) + (1 - g) * local.astype(jnp.float32)).astype(q.dtype)
        h = layer.finish(h, out)
      if loop:
        ring_k.append(loop_k)
        ring_v.append(loop_v)

    h = RMSNorm(cfg.rms_norm_eps, "embed", cfg.param_dtype, name="norm")(h)
    if last_logits_only:
      h = h[:, -1:]
    if cfg.tie_word_embeddings:
      logits = embed.attend(h)
    else:
      logits = Dense((cfg.vocab_size,), ("embed", "vocab"), cfg, name="lm_head")(h)
    logits = constrain(logits.astype(jnp.float32),
                       ("activation_batch", "activation_length", "activation_vocab"))
    if cache is None:
      return logits

    def stack_rings(rings, like):
      if not rings:
        return like  # loop_num == 1: the empty [0, L, B, W, KV, D] ring
      return jnp.stack([jnp.stack(r) for r in rings])

    new_cache = LoopCache(
        k=jnp.stack(k1), v=jnp.stack(v1),
        window_k=stack_rings(ring_k, cache.window_k), window_v=stack_rings(ring_v, cache.window_v),
        window_index=(cache.window_index.at[ring_pos].set(new_slots) if cfg.loop_num > 1
                      else cache.window_index),
        segment=k_segment, index=start + length)
    return logits, new_cache
