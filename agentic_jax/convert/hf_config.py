"""transformers config -> ModelConfig for LongCat-Flash, DeepSeek-V3, Youtu-LLM and IQuest-Coder.

Semantics follow what the transformers modeling code actually computes (the parity
reference), not what a config field promises: e.g. LongCat's `mla_scale_*_lora` flags and
`zero_expert_type` are ignored by transformers (scales and identity experts are
unconditional), so they are always on here. A setting transformers honours but our model
cannot reproduce raises ValueError naming the HF field.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

from agentic_jax.models.config import ModelConfig, yarn_get_mscale

SUPPORTED_MODEL_TYPES = ("longcat_flash", "deepseek_v3", "youtu", "iquestcoder", "iquestloopcoder")


def _unsupported(field: str, value: Any, why: str) -> ValueError:
  return ValueError(f"unsupported HF config: {field}={value!r} ({why})")


def _attr(c: Any, name: str, default: Any = None) -> Any:
  return getattr(c, name, default)


def _required(c: Any, name: str) -> Any:
  value = getattr(c, name, None)
  if value is None:
    raise _unsupported(name, value, "required by the converter")
  return value


def _rope_fields(c: Any) -> dict:
  """rope_parameters (transformers >= 5 standardises legacy rope_theta / rope_scaling into
  it) -> rope_theta, rope_type and the YaRN fields of ModelConfig."""
  rp = dict(_attr(c, "rope_parameters") or {})
  if rp and all(isinstance(v, dict) for v in rp.values()):
    raise _unsupported("rope_parameters", rp, "per-layer-type RoPE is not supported")
  rope_type = rp.get("rope_type", rp.get("type", "default"))
  theta = rp.get("rope_theta", _attr(c, "rope_theta", _attr(c, "default_theta")))
  if theta is None:
    raise _unsupported("rope_parameters['rope_theta']", None, "missing")
  prf = rp.get("partial_rotary_factor", 1.0)
  if prf not in (None, 1.0):
    raise _unsupported("rope_parameters['partial_rotary_factor']", prf, "only 1.0 is supported")
  out: dict = {"rope_theta": float(theta), "rope_type": rope_type}
  if rope_type == "default":
    return out
  if rope_type != "yarn":
    raise _unsupported("rope_parameters['rope_type']", rope_type, "supported: 'default', 'yarn'")
  orig = rp.get("original_max_position_embeddings")
  if orig is None:
    raise _unsupported("rope_parameters['original_max_position_embeddings']", None, "YaRN needs it")
  factor = rp.get("factor")
  if factor is None:  # transformers' fallback
    factor = _required(c, "max_position_embeddings") / orig
  if rp.get("truncate", True) is not True:
    raise _unsupported("rope_parameters['truncate']", rp["truncate"],
                       "only the truncated (floor/ceil) YaRN correction range is implemented")
  # transformers: attention_factor = m(f, mscale) / m(f, mscale_all_dim) if both are truthy,
  # else m(f, 1). A missing mscale maps to 0.0, which takes the same branch in our code.
  mscale = float(rp.get("mscale") or 0.0)
  mscale_all_dim = float(rp.get("mscale_all_dim") or 0.0)
  out.update(rope_factor=float(factor), original_max_position_embeddings=int(orig),
             mscale=mscale, mscale_all_dim=mscale_all_dim,
             beta_fast=float(rp.get("beta_fast") or 32), beta_slow=float(rp.get("beta_slow") or 1))
  given = rp.get("attention_factor")
  if given is not None:
    ours = (yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
            if mscale and mscale_all_dim else yarn_get_mscale(factor))
    if not math.isclose(float(given), ours, rel_tol=1e-6):
      raise _unsupported("rope_parameters['attention_factor']", given,
                         f"only the value derived from factor/mscale ({ours:.6g}) is supported")
  return out


def _mla_fields(c: Any) -> dict:
  """Fields shared by the three families (MLA, norms, embeddings)."""
  heads = _required(c, "num_attention_heads")
  kv_heads = _attr(c, "num_key_value_heads") or heads
  if kv_heads != heads:
    raise _unsupported("num_key_value_heads", kv_heads,
                       f"MLA expands keys per head; must equal num_attention_heads={heads}")
  act = _attr(c, "hidden_act", "silu")
  if act != "silu":
    raise _unsupported("hidden_act", act, "only 'silu' (SwiGLU) is supported")
  if _attr(c, "mlp_bias", False):
    raise _unsupported("mlp_bias", True, "MLPs have no biases here")
  dr = _required(c, "qk_rope_head_dim")
  # The rotary dim is config.head_dim in transformers (set to qk_rope_head_dim by DeepSeek
  # and Youtu, free in LongCat, where a mismatch changes the frequencies or fails).
  head_dim = _attr(c, "head_dim", dr)
  if head_dim is not None and head_dim != dr:
    raise _unsupported("head_dim", head_dim, f"the rotary dim must equal qk_rope_head_dim={dr}")
  dn = _required(c, "qk_nope_head_dim")
  qk_head_dim = _attr(c, "qk_head_dim", dn + dr)
  if qk_head_dim is not None and qk_head_dim != dn + dr:
    raise _unsupported("qk_head_dim", qk_head_dim, f"must equal qk_nope_head_dim + qk_rope_head_dim = {dn + dr}")
  fields = dict(
      vocab_size=_required(c, "vocab_size"), hidden_size=_required(c, "hidden_size"),
      num_attention_heads=heads, q_lora_rank=_attr(c, "q_lora_rank"),
      kv_lora_rank=_required(c, "kv_lora_rank"), qk_nope_head_dim=dn, qk_rope_head_dim=dr,
      v_head_dim=_required(c, "v_head_dim"), attention_bias=bool(_attr(c, "attention_bias", False)),
      rms_norm_eps=float(_required(c, "rms_norm_eps")),
      latent_norm_eps=1e-6,  # q_a/kv_a_layernorm use the RMSNorm constructor default in HF
      max_position_embeddings=_required(c, "max_position_embeddings"),
      tie_word_embeddings=bool(_attr(c, "tie_word_embeddings", False)),
      rope_interleave=bool(_attr(c, "rope_interleave", True)),
  )
  if _attr(c, "initializer_range") is not None:
    fields["initializer_range"] = float(c.initializer_range)
  fields.update(_rope_fields(c))
  return fields


def _mtp_layers(c: Any) -> int:
  """`num_nextn_predict_layers`: the MTP depths a DeepSeek-V3 config announces (transformers'
  DeepseekV3Config holds it as num_mtp_layers, default 1, and writes it under this name); vLLM
  reads the same field for LongCat-Flash, whose transformers config has none (absent: 0)."""
  n = _attr(c, "num_nextn_predict_layers")
  if n is None:
    return 0
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise _unsupported("num_nextn_predict_layers", n, "expected an int >= 0")
  return n


def _longcat(c: Any) -> dict:
  if _attr(c, "q_lora_rank") is None:
    raise _unsupported("q_lora_rank", None, "LongCat's MLA always uses a query LoRA")
  if _attr(c, "router_bias", False):
    raise _unsupported("router_bias", True, "the router classifier has no bias here")
  return dict(
      _mla_fields(c),
      layer_type="scmoe",
      num_layers=_required(c, "num_layers"),  # num_hidden_layers is 2x (attention sublayers)
      intermediate_size=_required(c, "ffn_hidden_size"),
      moe_intermediate_size=_required(c, "expert_ffn_hidden_size"),
      n_routed_experts=_required(c, "n_routed_experts"),
      zero_expert_num=int(_attr(c, "zero_expert_num") or 0),
      num_experts_per_tok=_required(c, "moe_topk"),
      routed_scaling_factor=float(_attr(c, "routed_scaling_factor", 1.0)),
      scoring_func="softmax", norm_topk_prob=False, n_group=1, topk_group=1, n_shared_experts=0,
      # transformers applies both LoRA scales and interleaved RoPE unconditionally.
      mla_scale_q_lora=True, mla_scale_kv_lora=True, rope_interleave=True,
      num_mtp_layers=_mtp_layers(c),
  )


def _deepseek(c: Any) -> dict:
  return dict(
      _mla_fields(c),
      layer_type="deepseek",
      num_layers=_required(c, "num_hidden_layers"),
      intermediate_size=_required(c, "intermediate_size"),
      moe_intermediate_size=_required(c, "moe_intermediate_size"),
      n_routed_experts=_required(c, "n_routed_experts"),
      n_shared_experts=int(_attr(c, "n_shared_experts") or 0),
      num_experts_per_tok=_required(c, "num_experts_per_tok"),
      n_group=int(_attr(c, "n_group") or 1), topk_group=int(_attr(c, "topk_group") or 1),
      norm_topk_prob=bool(_attr(c, "norm_topk_prob", False)),
      first_k_dense_replace=int(_attr(c, "first_k_dense_replace") or 0),
      routed_scaling_factor=float(_attr(c, "routed_scaling_factor", 1.0)),
      scoring_func="sigmoid", zero_expert_num=0, num_mtp_layers=_mtp_layers(c),
  )


def _youtu(c: Any) -> dict:
  return dict(
      _mla_fields(c),
      layer_type="dense",
      num_layers=_required(c, "num_hidden_layers"),
      intermediate_size=_required(c, "intermediate_size"),
  )


def _iquest(c: Any) -> dict:
  """IQuestCoderConfig (a LlamaConfig; transformers builds LlamaForCausalLM) and the Loop
  model's remote-code config (the same fields plus loop_num, loop_window_size)."""
  act = _attr(c, "hidden_act", "silu")
  if act != "silu":
    raise _unsupported("hidden_act", act, "only 'silu' (SwiGLU) is supported")
  if _attr(c, "mlp_bias", False):
    raise _unsupported("mlp_bias", True, "MLPs have no biases here")
  heads = _required(c, "num_attention_heads")
  fields = dict(
      layer_type="llama", vocab_size=_required(c, "vocab_size"),
      hidden_size=_required(c, "hidden_size"), num_layers=_required(c, "num_hidden_layers"),
      intermediate_size=_required(c, "intermediate_size"), num_attention_heads=heads,
      num_key_value_heads=_attr(c, "num_key_value_heads") or heads,
      head_dim=_attr(c, "head_dim") or _required(c, "hidden_size") // heads,
      attention_bias=bool(_attr(c, "attention_bias", False)),
      rms_norm_eps=float(_required(c, "rms_norm_eps")),
      max_position_embeddings=_required(c, "max_position_embeddings"),
      tie_word_embeddings=bool(_attr(c, "tie_word_embeddings", False)),
      rope_interleave=False,  # Llama's rotate_half: contiguous halves
  )
  if _attr(c, "model_type") == "iquestloopcoder":
    fields.update(loop_num=int(_attr(c, "loop_num", 2)),
                  loop_window_size=int(_attr(c, "loop_window_size", 64)))
  if _attr(c, "initializer_range") is not None:
    fields["initializer_range"] = float(c.initializer_range)
  fields.update(_rope_fields(c))
  return fields


_FAMILIES: dict[str, Callable[[Any], dict]] = {
    "longcat_flash": _longcat, "deepseek_v3": _deepseek, "youtu": _youtu,
    "iquestcoder": _iquest, "iquestloopcoder": _iquest}

# Exact by default: capacity dispatch may drop tokens, which a converted model must not.
_DEFAULTS = dict(moe_dispatch="dropless")


def config_from_hf(hf_config: Any, **overrides: Any) -> ModelConfig:
  """ModelConfig for a transformers LongcatFlash/DeepseekV3/Youtu config.

  `overrides` (e.g. moe_dispatch, attention_impl, dtype, scan_layers) replace any field.
  num_mtp_layers is the config's `num_nextn_predict_layers` (DeepSeek-V3, LongCat-Flash): the
  model the config describes. The weight importers (hf.from_hf_state_dict,
  checkpoint.hf_to_checkpoint) build the MTP module only when given num_mtp_layers: a
  transformers model never holds its tensors, and a checkpoint directory carries them as stored.
  Raises ValueError for an unsupported model_type or an HF setting our model can't express.
  """
  model_type = _attr(hf_config, "model_type")
  if model_type not in _FAMILIES:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {list(SUPPORTED_MODEL_TYPES)}")
  fields = {**_DEFAULTS, **_FAMILIES[model_type](hf_config), **overrides}
  return ModelConfig(**fields)


# ------------------------------------------------------------------------- ours -> HF

_MODEL_TYPE = {"scmoe": "longcat_flash", "deepseek": "deepseek_v3", "dense": "youtu"}
_ARCH = {"scmoe": "LongcatFlashForCausalLM", "deepseek": "DeepseekV3ForCausalLM",
         "dense": "YoutuForCausalLM"}


def _rope_to_hf(cfg: ModelConfig) -> dict:
  rp: dict = {"rope_type": cfg.rope_type, "rope_theta": float(cfg.rope_theta)}
  if cfg.rope_type == "yarn":
    rp.update(factor=float(cfg.rope_factor),
              original_max_position_embeddings=int(cfg.original_max_position_embeddings),
              mscale=float(cfg.mscale), mscale_all_dim=float(cfg.mscale_all_dim),
              beta_fast=float(cfg.beta_fast), beta_slow=float(cfg.beta_slow))
  return rp


def config_to_hf(cfg: ModelConfig, *, base: Optional[dict] = None) -> dict:
  """config.json (a dict) of the transformers model that computes what `cfg` computes: the
  inverse of `config_from_hf` (config_from_hf(config_to_hf(cfg)) == cfg up to the fields
  transformers has no say in: dispatch, dtype, scan). `base`, the config.json a converted
  checkpoint came with, supplies every field we do not own (token ids, chat fields,
  quantization) and is otherwise overwritten. `num_nextn_predict_layers` (DeepSeek-V3 and
  LongCat-Flash: transformers' DeepseekV3Config and vLLM's name) is cfg.num_mtp_layers; with no
  MTP module here, `base`'s value stays (its MTP tensors were carried through the conversion,
  convert/checkpoint.py), else 0 (transformers' DeepseekV3Config would default to 1).
  ValueError for a config transformers cannot express (LongCat without its LoRA scales, for
  instance)."""
  if cfg.layer_type == "llama":
    return _iquest_to_hf(cfg, base)
  if cfg.scmoe_moe_input != "shortcut":
    raise ValueError(f"scmoe_moe_input={cfg.scmoe_moe_input!r} has no transformers equivalent: "
                     "LongcatFlash always feeds its MoE the shortcut (first attention's output)")
  if cfg.layer_type == "scmoe" and not (cfg.mla_scale_q_lora and cfg.mla_scale_kv_lora
                                        and cfg.rope_interleave and cfg.scoring_func == "softmax"):
    raise ValueError("this scmoe config has no transformers equivalent: LongcatFlash always "
                     "scales the LoRA latents, interleaves RoPE and routes with softmax")
  if cfg.layer_type != "scmoe" and (cfg.mla_scale_q_lora or cfg.mla_scale_kv_lora):
    raise ValueError(f"mla_scale_*_lora has no transformers equivalent for {cfg.layer_type}")
  out = dict(base or {})
  # a quantized source is written back dequantized
  out.pop("quantization_config", None)
  mla = dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
      q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank,
      qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim,
      qk_head_dim=cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, head_dim=cfg.qk_rope_head_dim,
      v_head_dim=cfg.v_head_dim, attention_bias=cfg.attention_bias, rms_norm_eps=cfg.rms_norm_eps,
      max_position_embeddings=cfg.max_position_embeddings,
      tie_word_embeddings=cfg.tie_word_embeddings, rope_interleave=cfg.rope_interleave,
      rope_parameters=_rope_to_hf(cfg), hidden_act="silu", initializer_range=cfg.initializer_range,
      model_type=_MODEL_TYPE[cfg.layer_type], architectures=[_ARCH[cfg.layer_type]])
  out.update(mla)
  if cfg.layer_type in ("scmoe", "deepseek"):
    carried = out.pop("num_mtp_layers", None)  # transformers' alias: written under one name
    carried = out.get("num_nextn_predict_layers", carried)
    out["num_nextn_predict_layers"] = cfg.num_mtp_layers or int(carried or 0)
  out.pop("rope_theta", None)  # rope_parameters is the one source (transformers >= 5)
  out.pop("rope_scaling", None)
  if cfg.layer_type == "scmoe":
    out.update(num_layers=cfg.num_layers, ffn_hidden_size=cfg.intermediate_size,
               expert_ffn_hidden_size=cfg.moe_intermediate_size,
               n_routed_experts=cfg.n_routed_experts, zero_expert_num=cfg.zero_expert_num,
               moe_topk=cfg.num_experts_per_tok, routed_scaling_factor=cfg.routed_scaling_factor)
    out.pop("num_hidden_layers", None)  # derived (2 x num_layers) by LongcatFlashConfig
  elif cfg.layer_type == "deepseek":
    out.update(num_hidden_layers=cfg.num_layers, intermediate_size=cfg.intermediate_size,
               moe_intermediate_size=cfg.moe_intermediate_size,
               n_routed_experts=cfg.n_routed_experts, n_shared_experts=cfg.n_shared_experts,
               num_experts_per_tok=cfg.num_experts_per_tok, n_group=cfg.n_group,
               topk_group=cfg.topk_group, norm_topk_prob=cfg.norm_topk_prob,
               first_k_dense_replace=cfg.first_k_dense_replace,
               routed_scaling_factor=cfg.routed_scaling_factor)
  else:
    out.update(num_hidden_layers=cfg.num_layers, intermediate_size=cfg.intermediate_size)
  return out


def _iquest_to_hf(cfg: ModelConfig, base: Optional[dict]) -> dict:
  """IQuestCoderConfig's config.json (loop_num 1) or the Loop model's (model_type
  "iquestloopcoder", remote code: transformers cannot build it)."""
  if cfg.rope_interleave:
    raise ValueError("rope_interleave=True has no IQuestCoder equivalent (Llama rotates halves)")
  out = dict(base or {})
  out.pop("quantization_config", None)
  out.pop("rope_theta", None)
  out.pop("rope_scaling", None)
  loop = cfg.loop_num > 1
  out.update(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_attention_heads,
      num_key_value_heads=cfg.kv_heads, head_dim=cfg.attn_head_dim,
      attention_bias=cfg.attention_bias, mlp_bias=False, rms_norm_eps=cfg.rms_norm_eps,
      max_position_embeddings=cfg.max_position_embeddings,
      tie_word_embeddings=cfg.tie_word_embeddings, rope_parameters=_rope_to_hf(cfg),
      hidden_act="silu", initializer_range=cfg.initializer_range,
      model_type="iquestloopcoder" if loop else "iquestcoder",
      architectures=["IQuestLoopCoderForCausalLM" if loop else "LlamaForCausalLM"])
  if loop:
    out.update(loop_num=cfg.loop_num, loop_window_size=cfg.loop_window_size)
  return out
