"""Multi-token prediction (MTP) module of DeepSeek-V3 and LongCat-Flash (model-spec §2, §3.6).

Depth k = 1..D predicts token t_{i+k+1} at position i from two inputs:

    x_i   = eh_proj([enorm(emb(t_{i+k})) ; hnorm(h^{k-1}_i)])      # [emb; h]: the released
    h^k   = Block_k(x)                                               #   weights' column order
    logit = lm_head(norm_k(h^k))                                     # the main model's head

h^0 is the main model's final-norm output (the lm_head input), h^k for k >= 1 the block output
before norm_k; this is how vLLM and SGLang chain the released weights (they feed the target
model's normed hidden state and the draft's un-normed output back). One difference from vLLM's
DeepSeek MTP: vLLM zeroes the MTP input embedding at position 0; here every position's is used. Block_k is one decoder
layer of the family: LongCat's MTP layer is dense (MLA with the LoRA scales + SwiGLU of
`intermediate_size`, no MoE; checkpoint `model.mtp.layers.0.*`); DeepSeek-V3's is checkpoint
layer 61 with the same shape as its MoE layers (MLA + MoE with shared experts), so this module
builds exactly what each released checkpoint stores.

Embedding and head: both families share the main `lm_head`. LongCat's checkpoint carries its
own copy of the embedding (`model.mtp.embed_tokens.weight`), which becomes `mtp/embed_tokens`
here; DeepSeek's MTP reads the main embedding (its checkpoint's `model.layers.61.embed_tokens`
and `shared_head.head` are copies of the shared tensors, convert/mtp_mapping.py).

Training (CausalLM without a cache, when "intermediates" is mutable) runs all D depths over the
whole sequence with the input tokens shifted left by k (the last k positions see padding and are
masked in the loss: objectives/next_token.py) and sows the per-depth logits as
`intermediates/mtp_logits`. Decoding (sampling_speculative.py) calls `draft_step` with its own
one-layer compressed cache.
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from agentic_jax.models.blocks import DecoderLayer
from agentic_jax.models.config import ModelConfig
from agentic_jax.models.layers import Dense, Embed, RMSNorm, constrain, rope_cos_sin
from agentic_jax.models.mla import AttentionContext, LayerCache

Array = jax.Array


def has_own_embedding(cfg: ModelConfig) -> bool:
  """LongCat's released MTP stores its own embedding copy; DeepSeek-V3's shares the main one."""
  return cfg.layer_type == "scmoe"


def block_is_moe(cfg: ModelConfig) -> bool:
  """DeepSeek-V3's MTP block has the shape of its MoE layers; LongCat's is dense."""
  return cfg.layer_type == "deepseek"


def shift_left(tokens: Array, k: int) -> Array:
  """tokens[:, i + k] at position i; the last k positions get token 0 (masked in the loss)."""
  if k == 0:
    return tokens
  return jnp.concatenate([tokens[:, k:], jnp.zeros_like(tokens[:, :k])], axis=1)


class MTPLayer(nn.Module):
  """One MTP depth: (h_prev [B,T,d], e_next = emb(t_{i+k}) [B,T,d]) -> (h_k, norm_k(h_k))."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, h_prev: Array, e_next: Array, ctx: AttentionContext,
               cache: Optional[LayerCache] = None):
    cfg = self.cfg
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, "embed", cfg.param_dtype, name=name)  # noqa: E731
    e = norm("enorm")(e_next)
    h = norm("hnorm")(h_prev).astype(e.dtype)
    x = Dense((cfg.hidden_size,), ("mtp_concat", "embed"), cfg, name="eh_proj")(
        jnp.concatenate([e, h], axis=-1))
    x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    x, c = DecoderLayer(cfg, moe=block_is_moe(cfg), name="block")(
        x, ctx, None if cache is None else (cache,))
    return x, norm("norm")(x), (None if cache is None else c[0])


class MultiTokenPredictor(nn.Module):
  """The D MTP depths (`layers_{k}`) and, for LongCat, the MTP's own embedding copy."""

  cfg: ModelConfig

  def setup(self):
    if has_own_embedding(self.cfg):
      self.embed_tokens = Embed(self.cfg)
    self.layers = [MTPLayer(self.cfg) for _ in range(self.cfg.num_mtp_layers)]

  def embed(self, tokens: Array) -> Array:
    return self.embed_tokens(tokens)

  def layer(self, k: int, h_prev: Array, e_next: Array, ctx: AttentionContext,
            cache: Optional[LayerCache] = None):
    return self.layers[k](h_prev, e_next, ctx, cache)


# ----------------------------------------------------------------------------- decoding


@flax.struct.dataclass
class MTPCache:
  """Compressed MLA cache of the drafting MTP layer (depth 1), laid out like the main cache's
  slots: latent [B, S, kv_lora_rank], k_rope [B, S, qk_rope_head_dim], segment [B, S]."""
  latent: Array
  k_rope: Array
  segment: Array


def init_mtp_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> MTPCache:
  dtype = jnp.dtype(dtype or cfg.dtype)
  return MTPCache(latent=jnp.zeros((batch, max_len, cfg.kv_lora_rank), dtype),
                  k_rope=jnp.zeros((batch, max_len, cfg.qk_rope_head_dim), dtype),
                  segment=jnp.zeros((batch, max_len), jnp.int32))


def embed_tokens(cfg: ModelConfig, params: dict, tokens: Array) -> Array:
  """The embedding the MTP reads: its own copy (LongCat) or the main model's."""
  if has_own_embedding(cfg):
    return MultiTokenPredictor(cfg).apply({"params": params["mtp"]}, tokens, method="embed")
  return Embed(cfg).apply({"params": params["embed_tokens"]}, tokens)


def lm_head(cfg: ModelConfig, params: dict, h: Array) -> Array:
  """The main model's output head on normed hidden states [B, T, d] -> float32 logits."""
  if cfg.tie_word_embeddings:
    out = Embed(cfg).apply({"params": params["embed_tokens"]}, h, method="attend")
  else:
    out = Dense((cfg.vocab_size,), ("embed", "vocab"), cfg).apply({"params": params["lm_head"]}, h)
  return out.astype(jnp.float32)


def draft_step(cfg: ModelConfig, variables: dict, h_prev: Array, tokens: Array, positions: Array,
               write_index: Array, cache: MTPCache, *, depth: int = 0
               ) -> tuple[Array, Array, MTPCache]:
  """MTP depth `depth` over T new slots at `write_index` (shared by the rows) of `cache`.

  h_prev [B, T, d]: the hidden state paired with each slot (main model's normed output, or the
  previous draft's block output); tokens [B, T]: the token after that hidden state's position;
  positions [B, T]: RoPE positions. Returns (block output [B, T, d], logits [B, T, V] for the
  token after `tokens`, new cache). Slots carry segment 1; left padding keeps the segment 0 the
  prefill wrote."""
  params = variables["params"]
  batch, length = tokens.shape
  offsets = jnp.arange(length, dtype=jnp.int32)
  q_index = jnp.broadcast_to(write_index + offsets, (batch, length))
  q_segment = jnp.ones((batch, length), jnp.int32)
  k_segment = jax.lax.dynamic_update_slice_in_dim(cache.segment, q_segment, write_index, 1)
  return _draft(cfg, variables, params, h_prev, tokens, positions, q_index, q_segment,
                k_segment, write_index, cache, depth)


def draft_prefill(cfg: ModelConfig, variables: dict, h_prev: Array, tokens: Array,
                  positions: Array, segment: Array, cache: MTPCache
                  ) -> tuple[Array, Array, MTPCache]:
  """Depth 1 over a left-padded prompt written at slot 0 (segment 0 marks padding)."""
  params = variables["params"]
  batch, length = tokens.shape
  q_index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  k_segment = jax.lax.dynamic_update_slice_in_dim(cache.segment, segment, 0, 1)
  return _draft(cfg, variables, params, h_prev, tokens, positions, q_index, segment, k_segment,
                jnp.zeros((), jnp.int32), cache, 0)


def _draft(cfg, variables, params, h_prev, tokens, positions, q_index, q_segment, k_segment,
           write_index, cache, depth):
  batch = tokens.shape[0]
  max_len = cache.segment.shape[1]
  k_index = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (batch, max_len))
  cos, sin = rope_cos_sin(cfg, positions)
  ctx = AttentionContext(cos, sin, q_index, q_segment, k_index, k_segment, write_index)
  mtp_vars = {"params": params["mtp"]}
  if "mtp" in variables.get("router_state", {}):
    mtp_vars["router_state"] = variables["router_state"]["mtp"]
  e = embed_tokens(cfg, params, tokens)
  h, normed, layer_cache = MultiTokenPredictor(cfg).apply(
      mtp_vars, depth, h_prev, e, ctx, LayerCache(cache.latent, cache.k_rope), method="layer")
  new_cache = MTPCache(layer_cache.latent, layer_cache.k_rope, k_segment)
  return h, lm_head(cfg, params, normed), new_cache
