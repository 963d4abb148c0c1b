"""Causal LM over MLA decoder layers, optionally scanned over layers and rematerialised.

Parameter layout (unscanned): `embed_tokens/embedding`, `layers_{i}/...` with i the
transformers layer index, `norm/weight`, `lm_head/kernel` (absent when embeddings are
tied). With `scan_layers=True` the layers of each group are stacked on a leading
"layers" axis under the group name (`layers`, or `dense_layers` + `moe_layers` for
DeepSeek-V3, whose first k layers have a dense FFN); `scan_variables`/`unscan_variables`
convert between the two layouts.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from agentic_jax.models.blocks import DecoderLayer, ScMoELayer
from agentic_jax.models.config import ModelConfig
from agentic_jax.models.layers import (Dense, Embed, RMSNorm, constrain, default_positions,
                                       rope_cos_sin)
from agentic_jax.models.loop_lm import LoopCache, LoopLM, init_loop_cache
from agentic_jax.models.mla import AttentionContext, LayerCache
from agentic_jax.models.mtp import MultiTokenPredictor, has_own_embedding, shift_left

Array = jax.Array

# Collections whose leaves are per-layer (stacked on axis 0 when layers are scanned).
LAYER_COLLECTIONS = ("params", "router_state", "intermediates")


@flax.struct.dataclass
class KVCache:
  """Compressed MLA cache for all attention sublayers (model-spec §1.1).

  latent: [A, B, S, kv_lora_rank] normed latents; k_rope: [A, B, S, qk_rope_head_dim]
  rotated rope keys (A = cfg.num_attention_layers; ScMoE sublayer j of layer l is 2l + j);
  segment: [B, S] segment id per slot (0 = empty or left padding); index: next slot.
  """
  latent: Array
  k_rope: Array
  segment: Array
  index: Array


def init_cache(cfg: ModelConfig, batch: int, max_len: int,
               dtype: Any = None) -> KVCache | LoopCache:
  """An empty decoding cache: the compressed MLA cache, or for layer_type "llama" the GQA
  K/V cache of models/loop_lm.py (with the Loop variant's window rings)."""
  if cfg.layer_type == "llama":
    return init_loop_cache(cfg, batch, max_len, dtype)
  dtype = jnp.dtype(dtype or cfg.dtype)
  a = cfg.num_attention_layers
  return KVCache(
      latent=jnp.zeros((a, batch, max_len, cfg.kv_lora_rank), dtype),
      k_rope=jnp.zeros((a, batch, max_len, cfg.qk_rope_head_dim), dtype),
      segment=jnp.zeros((batch, max_len), jnp.int32),
      index=jnp.zeros((), jnp.int32))


class LayerGroup(NamedTuple):
  name: str  # scan name
  first: int  # index of the first layer (transformers numbering)
  count: int
  cls: type
  kwargs: dict


def layer_groups(cfg: ModelConfig) -> list[LayerGroup]:
  if cfg.layer_type == "llama":
    return []  # unscanned only (models/loop_lm.py): no stacked layout
  if cfg.layer_type == "scmoe":
    groups = [LayerGroup("layers", 0, cfg.num_layers, ScMoELayer, {})]
  elif cfg.layer_type == "dense":
    groups = [LayerGroup("layers", 0, cfg.num_layers, DecoderLayer, {"moe": False})]
  else:
    k = cfg.num_dense_layers
    groups = [LayerGroup("dense_layers", 0, k, DecoderLayer, {"moe": False}),
              LayerGroup("moe_layers", k, cfg.num_layers - k, DecoderLayer, {"moe": True})]
  return [g for g in groups if g.count > 0]


def _remat(cls, cfg: ModelConfig):
  if cfg.remat_policy == "none":
    return cls
  policy = {"full": None,
            "dots": jax.checkpoint_policies.checkpoint_dots,
            "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
            }[cfg.remat_policy]
  return nn.remat(cls, policy=policy, prevent_cse=not cfg.scan_layers)


class CausalLM(nn.Module):
  """`apply(variables, tokens[B, T], segment_ids=None, positions=None)` -> float32 logits.

  With `cache=KVCache` it runs the absorbed MLA path, writes T new slots at cache.index
  and returns `(logits, new_cache)`, or `(logits, new_cache, hidden)` with `return_hidden=True`
  (hidden = the final-norm output [B, T, d], what the MTP drafter reads).

  With `cfg.num_mtp_layers` > 0 a forward without a cache whose "intermediates" collection is
  mutable (training) also runs the MTP depths (models/mtp.py) and sows their logits as
  `intermediates/mtp_logits` (one [B, T, V] float32 array per depth, in depth order).
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None, *, cache: Optional[KVCache] = None,
               return_hidden: bool = False, last_logits_only: bool = False):
    # last_logits_only: the output head on the last position only (logits [B, 1, V]): a
    # decoder's prefill needs no other, and XLA keeps the full [B, P, V] f32 logits otherwise.
    cfg = self.cfg
    batch, length = tokens.shape
    q_segment = (jnp.ones((batch, length), jnp.int32) if segment_ids is None
                 else segment_ids.astype(jnp.int32))
    offsets = jnp.arange(length, dtype=jnp.int32)
    if cache is None:
      if positions is None:
        positions = default_positions(tokens, segment_ids)
      q_index = jnp.broadcast_to(offsets, (batch, length))
      ctx = AttentionContext(None, None, q_index, q_segment, q_index, q_segment)
    else:
      if positions is None:
        positions = jnp.broadcast_to(cache.index + offsets, (batch, length))
      q_index = jnp.broadcast_to(cache.index + offsets, (batch, length))
      k_segment = jax.lax.dynamic_update_slice_in_dim(cache.segment, q_segment, cache.index, 1)
      max_len = cache.segment.shape[1]
      k_index = jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (batch, max_len))
      ctx = AttentionContext(None, None, q_index, q_segment, k_index, k_segment, cache.index)
    cos, sin = rope_cos_sin(cfg, positions)
    ctx = ctx._replace(cos=cos, sin=sin)

    embed = Embed(cfg, name="embed_tokens")
    h = constrain(embed(tokens), ("activation_batch", "activation_length", "activation_embed"))
    new_latent, new_rope = [], []
    per = cfg.attention_per_layer
    for group in layer_groups(cfg):
      a0, a1 = group.first * per, (group.first + group.count) * per
      if cache is not None:  # [A, B, S, r] -> per sublayer j: [count, B, S, r]
        lat = cache.latent[a0:a1].reshape(group.count, per, *cache.latent.shape[1:])
        rop = cache.k_rope[a0:a1].reshape(group.count, per, *cache.k_rope.shape[1:])
        group_cache = tuple(LayerCache(lat[:, j], rop[:, j]) for j in range(per))
      layer_cls = _remat(group.cls, cfg)
      if cfg.scan_layers:
        scanned = nn.scan(layer_cls, variable_axes={c: 0 for c in LAYER_COLLECTIONS},
                          split_rngs={"params": True}, in_axes=(nn.broadcast, 0),
                          length=group.count, metadata_params={nn.PARTITION_NAME: "layers"})
        h, out_cache = scanned(cfg, name=group.name, **group.kwargs)(
            h, ctx, group_cache if cache is not None else None)
      else:
        outs = []
        for i in range(group.count):
          layer_cache = (None if cache is None else
                         tuple(LayerCache(c.latent[i], c.k_rope[i]) for c in group_cache))
          h, c = layer_cls(cfg, name=f"layers_{group.first + i}", **group.kwargs)(h, ctx, layer_cache)
          outs.append(c)
        out_cache = None if cache is None else tuple(
            LayerCache(jnp.stack([o[j].latent for o in outs]), jnp.stack([o[j].k_rope for o in outs]))
            for j in range(per))
      if cache is not None:
        new_latent.append(jnp.stack([c.latent for c in out_cache], 1).reshape(-1, *cache.latent.shape[1:]))
        new_rope.append(jnp.stack([c.k_rope for c in out_cache], 1).reshape(-1, *cache.k_rope.shape[1:]))

    h = RMSNorm(cfg.rms_norm_eps, "embed", cfg.param_dtype, name="norm")(h)
    head = embed.attend if cfg.tie_word_embeddings else Dense(
        (cfg.vocab_size,), ("embed", "vocab"), cfg, name="lm_head")
    act_vocab = ("activation_batch", "activation_length", "activation_vocab")
    logits = constrain(head(h[:, -1:] if last_logits_only else h).astype(jnp.float32), act_vocab)
    if cfg.num_mtp_layers and cache is None and (
        self.is_initializing() or self.is_mutable_collection("intermediates")):
      mtp = MultiTokenPredictor(cfg, name="mtp")
      mtp_embed = mtp.embed if has_own_embedding(cfg) else embed
      h_prev = h
      for k in range(cfg.num_mtp_layers):  # depth k+1 reads t_{i+k+1} and predicts t_{i+k+2}
        h_prev, normed, _ = mtp.layer(k, h_prev, mtp_embed(shift_left(tokens, k + 1)), ctx)
        self.sow("intermediates", "mtp_logits",
                 constrain(head(normed).astype(jnp.float32), act_vocab))
    if cache is None:
      return logits
    new_cache = KVCache(latent=jnp.concatenate(new_latent, 0), k_rope=jnp.concatenate(new_rope, 0),
                        segment=ctx.k_segment, index=cache.index + length)
    return (logits, new_cache, h) if return_hidden else (logits, new_cache)


def build(cfg: ModelConfig) -> CausalLM | LoopLM:
  """The Linen module for `cfg`; variables come from `init_variables` or `convert.from_hf`.
  Both modules take the same arguments and return the same things (with their own cache)."""
  if cfg.layer_type == "llama":
    return LoopLM(cfg)
  return CausalLM(cfg)


def init_variables(cfg: ModelConfig, rng: Array, *, boxed: bool = False) -> dict:
  """Random variables {"params": ..., ["router_state": ...]} as plain arrays.

  `boxed=True` keeps flax's LogicallyPartitioned boxes (for nn.get_partition_spec).
  """
  tokens = jnp.zeros((1, 2), jnp.int32)
  variables = build(cfg).init(rng, tokens)
  variables = {k: v for k, v in variables.items() if k != "intermediates"}
  return variables if boxed else nn.meta.unbox(variables)


def abstract_variables(cfg: ModelConfig, *, boxed: bool = False) -> dict:
  """ShapeDtypeStructs of every variable, computed from shapes only (no allocation)."""
  return jax.eval_shape(lambda r: init_variables(cfg, r, boxed=boxed), jax.random.key(0))


def logical_axes(cfg: ModelConfig) -> dict:
  """The tree of logical axis names (PartitionSpecs of logical names) for every variable."""
  return nn.get_partition_spec(abstract_variables(cfg, boxed=True))


def count_params(cfg: ModelConfig) -> int:
  """Trainable parameters from shapes only; the router's correction bias is state. Includes
  the MTP module when cfg.num_mtp_layers > 0 (presets state both totals)."""
  # Scanned layouts trace one layer per group (fast for deep models); "llama" is never scanned.
  shapes = abstract_variables(cfg.replace(scan_layers=cfg.layer_type != "llama"))["params"]
  return int(sum(x.size for x in jax.tree_util.tree_leaves(shapes)))


# ----------------------------------------------------------------- layouts


def scan_variables(cfg: ModelConfig, variables: dict) -> dict:
  """Unscanned layout (`layers_{i}`) -> scanned layout (groups stacked on axis 0)."""
  out = {}
  for col, tree in variables.items():
    tree = dict(tree)
    if col in LAYER_COLLECTIONS:
      for g in layer_groups(cfg):
        names = [f"layers_{g.first + i}" for i in range(g.count)]
        if all(n in tree for n in names):
          tree[g.name] = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree.pop(n) for n in names])
    out[col] = tree
  return out


def unscan_variables(cfg: ModelConfig, variables: dict) -> dict:
  """Scanned layout -> unscanned layout (`layers_{i}`)."""
  out = {}
  for col, tree in variables.items():
    tree = dict(tree)
    if col in LAYER_COLLECTIONS:
      for g in layer_groups(cfg):
        if g.name in tree:
          stacked = tree.pop(g.name)
          for i in range(g.count):
            tree[f"layers_{g.first + i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    out[col] = tree
  return out
