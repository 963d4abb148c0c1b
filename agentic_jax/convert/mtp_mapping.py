"""Weight map of the MTP module (models/mtp.py) to the released checkpoints' tensors.

With ModelConfig.num_mtp_layers = D > 0, `mapping.entries` appends these entries, so the MTP
tensors load into `params/mtp/...` (and `router_state/mtp/...`) and export back under their
checkpoint names; with D = 0 the converter keeps them bit for bit under `hf_extra` as before.

DeepSeek-V3 (model-spec §2): depth k is checkpoint layer L = num_layers + k, laid out as a MoE
decoder layer plus `enorm`, `hnorm`, `eh_proj`, `shared_head.norm`; its `embed_tokens` and
`shared_head.head` are copies of the shared embedding and head (DeepSeek's README_WEIGHTS), so
they are aliases here: checked equal on import, written from the shared tensors on export.

LongCat-Flash (model-spec §3.6): `model.mtp.embed_tokens` (an own copy), per depth
`model.mtp.layers.{k}.{enorm.m, hnorm.m, eh_proj, input_layernorm, post_attention_layernorm,
self_attn.*, transformer_layer.mlp.*}` and `model.mtp.norm` (one final norm: released D = 1;
a depth k > 0, which no release has, uses `model.mtp.layers.{k}.norm`).
"""

from __future__ import annotations

from typing import Iterator

from agentic_jax.convert import mapping as m
from agentic_jax.models.config import ModelConfig


def _entry(rule: m.Rule) -> m.Entry:
  return m.Entry(rule.hf, rule.ours, rule.transform, rule.alias_of)


def _deepseek(cfg: ModelConfig, k: int) -> Iterator[m.Entry]:
  layer = cfg.num_layers + k
  hf, ours = f"model.layers.{layer}", f"params/mtp/layers_{k}"
  yield m.Entry(f"{hf}.embed_tokens.weight", (), None, "model.embed_tokens.weight")
  yield m.Entry(f"{hf}.enorm.weight", (f"{ours}/enorm/weight",), m.COPY, None)
  yield m.Entry(f"{hf}.hnorm.weight", (f"{ours}/hnorm/weight",), m.COPY, None)
  yield m.Entry(f"{hf}.eh_proj.weight", (f"{ours}/eh_proj/kernel",), m.LINEAR, None)
  # the released MTP block is shaped like the MoE layers: every per-layer rule but the dense FFN
  for rule in m.DEEPSEEK:
    if rule.layers not in ("all", "moe") or (rule.when is not None and not rule.when(cfg)):
      continue
    yield m.Entry(
        rule.hf.replace("model.layers.{i}.", f"{hf}."),
        tuple(p.replace("params/layers_{i}/", f"{ours}/block/")
              .replace("router_state/layers_{i}/", f"router_state/mtp/layers_{k}/block/")
              for p in rule.ours), rule.transform, rule.alias_of)
  yield m.Entry(f"{hf}.shared_head.norm.weight", (f"{ours}/norm/weight",), m.COPY, None)
  head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
  yield m.Entry(f"{hf}.shared_head.head.weight", (), None, head)


def _longcat(cfg: ModelConfig, k: int) -> Iterator[m.Entry]:
  hf, ours = f"model.mtp.layers.{k}", f"params/mtp/layers_{k}"
  if k == 0:
    yield m.Entry("model.mtp.embed_tokens.weight", ("params/mtp/embed_tokens/embedding",), m.COPY,
                  None)
  yield m.Entry(f"{hf}.enorm.m.weight", (f"{ours}/enorm/weight",), m.COPY, None)
  yield m.Entry(f"{hf}.hnorm.m.weight", (f"{ours}/hnorm/weight",), m.COPY, None)
  yield m.Entry(f"{hf}.eh_proj.weight", (f"{ours}/eh_proj/kernel",), m.LINEAR, None)
  for norm in ("input_layernorm", "post_attention_layernorm"):
    yield m.Entry(f"{hf}.{norm}.weight", (f"{ours}/block/{norm}/weight",), m.COPY, None)
  for rule in m.mla_rules(f"{ours}/block/self_attn", f"{hf}.self_attn"):
    if rule.when is None or rule.when(cfg):
      yield _entry(rule)
  for rule in m.swiglu_rules(f"{ours}/block/mlp", f"{hf}.transformer_layer.mlp", "all"):
    yield _entry(rule)
  norm_name = "model.mtp.norm.weight" if k == 0 else f"{hf}.norm.weight"
  yield m.Entry(norm_name, (f"{ours}/norm/weight",), m.COPY, None)


def entries(cfg: ModelConfig) -> Iterator[m.Entry]:
  """Every (HF name, our paths) pair of the MTP module of cfg (none when num_mtp_layers = 0)."""
  family = {"deepseek": _deepseek, "scmoe": _longcat}.get(cfg.layer_type)
  for k in range(cfg.num_mtp_layers if family else 0):
    yield from family(cfg, k)
