"""Decoder layers: LongCat ScMoE, DeepSeek-V3 (dense-or-MoE FFN), dense MLA (Youtu-LLM).

Every layer has the signature `layer(h, ctx, cache) -> (h, cache)` where `cache` is a
tuple with one `LayerCache` per attention sublayer (or None), so the model can scan
over layers with the cache as a scanned input/output.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from agentic_jax.models.config import ModelConfig
from agentic_jax.models.layers import RMSNorm, SwiGLU, constrain
from agentic_jax.models.mla import MLA, AttentionContext, LayerCache
from agentic_jax.models.moe import MoE

Array = jax.Array
Caches = Optional[tuple[LayerCache, ...]]

_ACT = ("activation_batch", "activation_length", "activation_embed")


def _norm(cfg: ModelConfig, name: str) -> RMSNorm:
  return RMSNorm(cfg.rms_norm_eps, "embed", cfg.param_dtype, name=name)


class ScMoELayer(nn.Module):
  """LongCat-Flash shortcut-connected MoE layer (model-spec §3.2).

      h1 = h0 + MLA_0(norm_in0(h0));  x1 = norm_post0(h1);  m = MoE(x1)
      h2 = h1 + FFN_0(x1);  h3 = h2 + MLA_1(norm_in1(h2));  h4 = h3 + FFN_1(norm_post1(h3)) + m

  The MoE branch depends only on x1, so its dispatch/combine (an all-to-all under expert
  parallelism) has no data dependence on FFN_0 and MLA_1 and XLA may overlap them.

  `cfg.scmoe_moe_input == "sequential"` moves the MoE after the second attention, onto FFN_1's
  input (the conventional placement; same parameters, same names):

      x3 = norm_post1(h3);  h4 = h3 + FFN_1(x3) + MoE(x3)

  so the exchange depends on MLA_1 (and FFN_0) and can overlap only FFN_1.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, h: Array, ctx: AttentionContext, cache: Caches = None):
    cfg = self.cfg
    sequential = cfg.scmoe_moe_input == "sequential"
    c0, c1 = cache if cache is not None else (None, None)
    a, c0 = MLA(cfg, name="self_attn_0")(_norm(cfg, "input_layernorm_0")(h), ctx, c0)
    h = h + a
    x1 = _norm(cfg, "post_attention_layernorm_0")(h)
    moe = MoE(cfg, name="mlp")
    moe_out = None if sequential else moe(x1)
    h = h + SwiGLU(cfg, cfg.intermediate_size, name="mlps_0")(x1)
    a, c1 = MLA(cfg, name="self_attn_1")(_norm(cfg, "input_layernorm_1")(h), ctx, c1)
    h = h + a
    x3 = _norm(cfg, "post_attention_layernorm_1")(h)
    if sequential:
      moe_out = moe(x3)
    h = h + SwiGLU(cfg, cfg.intermediate_size, name="mlps_1")(x3)
    h = h + moe_out.astype(h.dtype)
    h = constrain(h, _ACT)
    return h, (None if cache is None else (c0, c1))


class DecoderLayer(nn.Module):
  """Pre-norm MLA + FFN layer. `moe=False`: dense SwiGLU (Youtu-LLM; DeepSeek's first k
  layers); `moe=True`: DeepSeek-V3 MoE with shared experts."""

  cfg: ModelConfig
  moe: bool = False

  @nn.compact
  def __call__(self, h: Array, ctx: AttentionContext, cache: Caches = None):
    cfg = self.cfg
    c0 = cache[0] if cache is not None else None
    a, c0 = MLA(cfg, name="self_attn")(_norm(cfg, "input_layernorm")(h), ctx, c0)
    h = h + a
    x = _norm(cfg, "post_attention_layernorm")(h)
    ffn = MoE(cfg, name="mlp") if self.moe else SwiGLU(cfg, cfg.intermediate_size, name="mlp")
    h = h + ffn(x).astype(h.dtype)
    h = constrain(h, _ACT)
    return h, (None if cache is None else (c0,))
