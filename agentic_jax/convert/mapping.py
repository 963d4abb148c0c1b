"""Declarative weight maps between transformers checkpoints and our Flax variables.

One table per model family lists `Rule(hf_name, our_paths, transform)`; names may hold the
placeholders `{i}` (decoder layer, transformers numbering = our `layers_{i}`) and `{j}`
(LongCat attention/FFN sublayer 0 or 1). A rule's `layers` field says which decoder layers
it covers ("all", "dense" = DeepSeek's first k layers, "moe" = the others); `when` gates it
on the config (q LoRA vs direct q_proj, attention biases, tied embeddings, ...).

A transform is a pair of pure functions: `to_ours(cfg, hf_array) -> tuple of our arrays`
and `to_hf(cfg, *our_arrays) -> hf_array`; one HF tensor maps to one or more of ours (the
fused expert tensor `gate_up_proj` feeds `gate_proj` and `up_proj`). Torch Linear weights are
[out, in]; our kernels are [in, out...] with the output split head-major as torch's
`.view(..., H, head_dim)` does (model-spec §1.1, §6 "Converter rules").
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

import numpy as np

from agentic_jax.models.config import ModelConfig

Array = np.ndarray
Predicate = Callable[[ModelConfig], bool]


@dataclasses.dataclass(frozen=True)
class Transform:
  name: str
  to_ours: Callable[..., tuple[Array, ...]]  # (cfg, hf) -> our arrays
  to_hf: Callable[..., Array]  # (cfg, *ours) -> hf


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # e.g. "model.layers.{i}.self_attn.{j}.q_b_proj.weight"
  ours: tuple[str, ...]  # e.g. ("params/layers_{i}/self_attn_{j}/q_b_proj/kernel",)
  transform: Optional[Transform]  # None: `alias_of` (a tied tensor, no variable of ours)
  layers: Optional[str] = None  # None (top level) | "all" | "dense" | "moe"
  when: Optional[Predicate] = None
  alias_of: Optional[str] = None  # HF name of the tensor this one must equal (tied lm_head)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One rule instantiated for a concrete layer / sublayer."""
  hf: str
  ours: tuple[str, ...]
  transform: Optional[Transform]
  alias_of: Optional[str]


# ------------------------------------------------------------------------- transforms


def _copy_to_ours(cfg, x):
  return (x,)


def _copy_to_hf(cfg, x):
  return x


def _linear_to_ours(cfg, w):  # [out, in] -> [in, out]
  return (w.T,)


def _linear_to_hf(cfg, k):
  return k.T


def _heads_to_ours(cfg, w):
  # [H * hd, in] -> [in, H, hd]: torch's `.view(..., H, hd)` splits the out dim head-major.
  return (w.T.reshape(w.shape[1], cfg.num_attention_heads, -1),)


def _heads_to_hf(cfg, k):
  return k.reshape(k.shape[0], -1).T


def _out_heads_to_ours(cfg, w):  # o_proj [d, H * dv] -> [H, dv, d]
  return (w.T.reshape(cfg.num_attention_heads, cfg.v_head_dim, w.shape[0]),)


def _out_heads_to_hf(cfg, k):
  return k.reshape(-1, k.shape[-1]).T


def _gate_up_to_ours(cfg, w):
  """Fused experts [E, 2I, d] -> gate, up [N, d, I] each.

  HF allocates E = N + Z rows for LongCat (the zero experts' rows are dead, never read) and
  E = N for DeepSeek; cfg.num_slots is N + Z in both cases. Only the first N are kept.
  """
  n, inter = cfg.n_routed_experts, cfg.moe_intermediate_size
  if w.shape[0] != cfg.num_slots or w.shape[1] != 2 * inter:
    raise ValueError(f"experts.gate_up_proj has shape {w.shape}, expected "
                     f"[{cfg.num_slots}, {2 * inter}, d] (N+Z slots, 2 * moe_intermediate_size)")
  w = w[:n]
  return (np.swapaxes(w[:, :inter], 1, 2), np.swapaxes(w[:, inter:], 1, 2))


def _gate_up_to_hf(cfg, gate, up):
  fused = np.concatenate([np.swapaxes(gate, 1, 2), np.swapaxes(up, 1, 2)], axis=1)
  dead = cfg.num_slots - fused.shape[0]  # LongCat zero-expert rows: zeros, never read
  if dead:
    fused = np.concatenate([fused, np.zeros((dead, *fused.shape[1:]), fused.dtype)], axis=0)
  return fused


def _experts_down_to_ours(cfg, w):  # [N, d, I] -> [N, I, d]
  return (np.swapaxes(w, 1, 2),)


def _experts_down_to_hf(cfg, k):
  return np.swapaxes(k, 1, 2)


def _f32_to_ours(cfg, x):  # routing state stays float32 whatever the param dtype
  return (np.asarray(x, np.float32),)


def _f32_to_hf(cfg, x):
  return np.asarray(x, np.float32)


def _kv_heads_to_ours(cfg, w):  # GQA k/v_proj [KV * D, d] -> [d, KV, D]
  return (w.T.reshape(w.shape[1], cfg.kv_heads, cfg.attn_head_dim),)


def _gqa_out_to_ours(cfg, w):  # GQA o_proj [d, H * D] -> [H, D, d]
  return (w.T.reshape(cfg.num_attention_heads, cfg.attn_head_dim, w.shape[0]),)


def _q_bias_to_ours(cfg, b):  # [H * D] -> [H, D]
  return (b.reshape(cfg.num_attention_heads, cfg.attn_head_dim),)


def _kv_bias_to_ours(cfg, b):  # [KV * D] -> [KV, D]
  return (b.reshape(cfg.kv_heads, cfg.attn_head_dim),)


def _flat_to_hf(cfg, b):
  return b.reshape(-1)


COPY = Transform("copy", _copy_to_ours, _copy_to_hf)
LINEAR = Transform("linear", _linear_to_ours, _linear_to_hf)
HEADS = Transform("linear_heads", _heads_to_ours, _heads_to_hf)
OUT_HEADS = Transform("linear_out_heads", _out_heads_to_ours, _out_heads_to_hf)
GATE_UP = Transform("fused_gate_up", _gate_up_to_ours, _gate_up_to_hf)
EXPERTS_DOWN = Transform("experts_down", _experts_down_to_ours, _experts_down_to_hf)
F32 = Transform("float32", _f32_to_ours, _f32_to_hf)
KV_HEADS = Transform("linear_kv_heads", _kv_heads_to_ours, _heads_to_hf)
GQA_OUT = Transform("linear_gqa_out", _gqa_out_to_ours, _out_heads_to_hf)
Q_BIAS = Transform("q_bias", _q_bias_to_ours, _flat_to_hf)
KV_BIAS = Transform("kv_bias", _kv_bias_to_ours, _flat_to_hf)


# ------------------------------------------------------------------------- predicates


def _q_lora(c: ModelConfig) -> bool:
  return c.q_lora_rank is not None


def _no_q_lora(c: ModelConfig) -> bool:
  return c.q_lora_rank is None


def _bias(c: ModelConfig) -> bool:
  return c.attention_bias


def _q_lora_bias(c: ModelConfig) -> bool:
  return c.q_lora_rank is not None and c.attention_bias


def _untied(c: ModelConfig) -> bool:
  return not c.tie_word_embeddings


def _tied(c: ModelConfig) -> bool:
  return c.tie_word_embeddings


def _shared(c: ModelConfig) -> bool:
  return c.n_shared_experts > 0


def _looped(c: ModelConfig) -> bool:
  return c.loop_num > 1


# ------------------------------------------------------------------------- tables

_P = "params/layers_{i}"
_H = "model.layers.{i}"

TOP = [
    Rule("model.embed_tokens.weight", ("params/embed_tokens/embedding",), COPY),
    Rule("model.norm.weight", ("params/norm/weight",), COPY),
    Rule("lm_head.weight", ("params/lm_head/kernel",), LINEAR, when=_untied),
    # Tied: transformers still lists lm_head.weight (the same tensor as the embedding).
    Rule("lm_head.weight", (), None, when=_tied, alias_of="model.embed_tokens.weight"),
]


def mla_rules(ours: str, hf: str) -> list[Rule]:
  """MLA of model-spec §1.1; `ours`/`hf` are the module prefixes (with placeholders)."""
  return [
      Rule(f"{hf}.q_a_proj.weight", (f"{ours}/q_a_proj/kernel",), LINEAR, "all", _q_lora),
      Rule(f"{hf}.q_a_proj.bias", (f"{ours}/q_a_proj/bias",), COPY, "all", _q_lora_bias),
      Rule(f"{hf}.q_a_layernorm.weight", (f"{ours}/q_a_layernorm/weight",), COPY, "all", _q_lora),
      Rule(f"{hf}.q_b_proj.weight", (f"{ours}/q_b_proj/kernel",), HEADS, "all", _q_lora),
      Rule(f"{hf}.q_proj.weight", (f"{ours}/q_proj/kernel",), HEADS, "all", _no_q_lora),
      Rule(f"{hf}.kv_a_proj_with_mqa.weight", (f"{ours}/kv_a_proj_with_mqa/kernel",), LINEAR, "all"),
      Rule(f"{hf}.kv_a_proj_with_mqa.bias", (f"{ours}/kv_a_proj_with_mqa/bias",), COPY, "all", _bias),
      Rule(f"{hf}.kv_a_layernorm.weight", (f"{ours}/kv_a_layernorm/weight",), COPY, "all"),
      Rule(f"{hf}.kv_b_proj.weight", (f"{ours}/kv_b_proj/kernel",), HEADS, "all"),
      Rule(f"{hf}.o_proj.weight", (f"{ours}/o_proj/kernel",), OUT_HEADS, "all"),
      Rule(f"{hf}.o_proj.bias", (f"{ours}/o_proj/bias",), COPY, "all", _bias),
  ]


def swiglu_rules(ours: str, hf: str, layers: str) -> list[Rule]:
  """Dense SwiGLU: plain arrays gate/up [d, I], down [I, d] (no "kernel" level)."""
  return [Rule(f"{hf}.{p}.weight", (f"{ours}/{p}",), LINEAR, layers)
          for p in ("gate_proj", "up_proj", "down_proj")]


def norm_rules(pairs: list[tuple[str, str]]) -> list[Rule]:
  return [Rule(f"{_H}.{hf}.weight", (f"{_P}/{ours}/weight",), COPY, "all") for ours, hf in pairs]


def expert_rules(layers: str) -> list[Rule]:
  return [
      Rule(f"{_H}.mlp.experts.gate_up_proj",
           (f"{_P}/mlp/experts/gate_proj", f"{_P}/mlp/experts/up_proj"), GATE_UP, layers),
      Rule(f"{_H}.mlp.experts.down_proj", (f"{_P}/mlp/experts/down_proj",), EXPERTS_DOWN, layers),
  ]


LONGCAT = [
    *TOP,
    *norm_rules([("input_layernorm_{j}", "input_layernorm.{j}"),
                 ("post_attention_layernorm_{j}", "post_attention_layernorm.{j}")]),
    *mla_rules(f"{_P}/self_attn_{{j}}", f"{_H}.self_attn.{{j}}"),
    *swiglu_rules(f"{_P}/mlps_{{j}}", f"{_H}.mlps.{{j}}", "all"),
    Rule(f"{_H}.mlp.router.classifier.weight", (f"{_P}/mlp/router/kernel",), LINEAR, "all"),
    Rule(f"{_H}.mlp.router.e_score_correction_bias",
         ("router_state/layers_{i}/mlp/router/e_score_correction_bias",), F32, "all"),
    *expert_rules("all"),
]

DEEPSEEK = [
    *TOP,
    *norm_rules([("input_layernorm", "input_layernorm"),
                 ("post_attention_layernorm", "post_attention_layernorm")]),
    *mla_rules(f"{_P}/self_attn", f"{_H}.self_attn"),
    *swiglu_rules(f"{_P}/mlp", f"{_H}.mlp", "dense"),
    Rule(f"{_H}.mlp.gate.weight", (f"{_P}/mlp/router/kernel",), LINEAR, "moe"),
    Rule(f"{_H}.mlp.gate.e_score_correction_bias",
         ("router_state/layers_{i}/mlp/router/e_score_correction_bias",), F32, "moe"),
    *expert_rules("moe"),
    *[dataclasses.replace(r, when=_shared)
      for r in swiglu_rules(f"{_P}/mlp/shared_experts", f"{_H}.mlp.shared_experts", "moe")],
]

YOUTU = [
    *TOP,
    *norm_rules([("input_layernorm", "input_layernorm"),
                 ("post_attention_layernorm", "post_attention_layernorm")]),
    *mla_rules(f"{_P}/self_attn", f"{_H}.self_attn"),
    *swiglu_rules(f"{_P}/mlp", f"{_H}.mlp", "all"),
]

# IQuest-Coder (transformers' LlamaForCausalLM names); the Loop model's gates are
# `model.gate_projections.{i}` in its remote code (model-spec §5), one [H, D] + [H] per layer.
IQUEST = [
    *TOP,
    *norm_rules([("input_layernorm", "input_layernorm"),
                 ("post_attention_layernorm", "post_attention_layernorm")]),
    Rule(f"{_H}.self_attn.q_proj.weight", (f"{_P}/self_attn/q_proj/kernel",), HEADS, "all"),
    Rule(f"{_H}.self_attn.k_proj.weight", (f"{_P}/self_attn/k_proj/kernel",), KV_HEADS, "all"),
    Rule(f"{_H}.self_attn.v_proj.weight", (f"{_P}/self_attn/v_proj/kernel",), KV_HEADS, "all"),
    Rule(f"{_H}.self_attn.o_proj.weight", (f"{_P}/self_attn/o_proj/kernel",), GQA_OUT, "all"),
    Rule(f"{_H}.self_attn.q_proj.bias", (f"{_P}/self_attn/q_proj/bias",), Q_BIAS, "all", _bias),
    Rule(f"{_H}.self_attn.k_proj.bias", (f"{_P}/self_attn/k_proj/bias",), KV_BIAS, "all", _bias),
    Rule(f"{_H}.self_attn.v_proj.bias", (f"{_P}/self_attn/v_proj/bias",), KV_BIAS, "all", _bias),
    Rule(f"{_H}.self_attn.o_proj.bias", (f"{_P}/self_attn/o_proj/bias",), COPY, "all", _bias),
    *swiglu_rules(f"{_P}/mlp", f"{_H}.mlp", "all"),
    Rule("model.gate_projections.{i}.weight", (f"{_P}/loop_gate/weight",), COPY, "all", _looped),
    Rule("model.gate_projections.{i}.bias", (f"{_P}/loop_gate/bias",), COPY, "all", _looped),
]

TABLES: dict[str, list[Rule]] = {"scmoe": LONGCAT, "deepseek": DEEPSEEK, "dense": YOUTU,
                                 "llama": IQUEST}


# ------------------------------------------------------------------------- expansion


def _layer_indices(cfg: ModelConfig, which: Optional[str]) -> list[Optional[int]]:
  if which is None:
    return [None]
  k = cfg.num_dense_layers if cfg.layer_type == "deepseek" else 0
  return {"all": list(range(cfg.num_layers)),
          "dense": list(range(k)),
          "moe": list(range(k, cfg.num_layers))}[which]


def entries(cfg: ModelConfig) -> Iterator[Entry]:
  """Every concrete (HF name, our paths) pair for cfg, in table order."""
  for rule in TABLES[cfg.layer_type]:
    if rule.when is not None and not rule.when(cfg):
      continue
    subs = range(cfg.attention_per_layer) if "{j}" in rule.hf else [None]
    for i in _layer_indices(cfg, rule.layers):
      for j in subs:
        fmt = lambda s: s.format(i=i, j=j)  # noqa: E731  (unused placeholders are ignored)
        yield Entry(fmt(rule.hf), tuple(fmt(p) for p in rule.ours), rule.transform,
                    rule.alias_of)
  if cfg.num_mtp_layers:  # the MTP module's tensors (convert/mtp_mapping.py)
    from agentic_jax.convert import mtp_mapping  # pylint: disable=import-outside-toplevel
    yield from mtp_mapping.entries(cfg)
