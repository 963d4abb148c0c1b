"""Named model configurations: the released architectures and tiny CPU variants.

Full-size presets follow the released configs (model-spec §2, §3.1, §4) and default to
accelerator numerics (bf16 compute, scanned + rematerialised layers, chunked attention,
dropless MoE on `ragged_dot`). Tiny presets mirror the parity-test models of
model-spec §6 and run in float32 on a CPU in milliseconds.

Multi-token prediction: `get(name, num_mtp_layers=1)` adds the released MTP module to the
DeepSeek-V3 and LongCat-Flash presets (models/mtp.py); every preset defaults to 0 (none).
"""

from __future__ import annotations

from typing import Callable

from agentic_jax.models.config import ModelConfig

_ACCELERATOR = dict(dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy="full",
                    attention_impl="chunked", attention_chunk_size=1024, moe_dispatch="dropless",
                    dropless_backend="ragged_dot")

_MLA_FULL = dict(num_attention_heads=64, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                 qk_rope_head_dim=64, v_head_dim=128)

_MLA_TINY = dict(hidden_size=64, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=16,
                 qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=256)


def longcat_flash() -> ModelConfig:
  """LongCat-Flash (Meituan, arXiv 2509.01322): 560B total, 18.6B-31.3B activated.

  count_params: 560,664,958,976 (the 560B headline, model-spec §3.7); with num_mtp_layers=1
  561,862,858,752 (+1,197,899,776: the dense MTP layer 317,077,504 (MLA, SwiGLU, two norms),
  eh_proj 75,497,472, enorm/hnorm/norm 18,432, and the MTP's own embedding copy 805,306,368,
  model-spec §3.6)."""
  return ModelConfig(
      layer_type="scmoe", vocab_size=131072, hidden_size=6144, num_layers=28,
      intermediate_size=12288, **_MLA_FULL, mla_scale_q_lora=True, mla_scale_kv_lora=True,
      rope_theta=1e7, max_position_embeddings=131072, rms_norm_eps=1e-5,
      n_routed_experts=512, zero_expert_num=256, num_experts_per_tok=12, moe_intermediate_size=2048,
      scoring_func="softmax", routed_scaling_factor=6.0, norm_topk_prob=False, **_ACCELERATOR)


def deepseek_v3() -> ModelConfig:
  """DeepSeek-V3 (arXiv 2412.19437): 671B total, 37B activated.

  count_params: 671,026,404,352 without the MTP module (the 671B headline); with
  num_mtp_layers=1 682,636,472,320 (+11,610,067,968: one MoE decoder layer, eh_proj and three
  norms). The released checkpoint also stores copies of the embedding and the output head in
  its MTP layer (2 x 926,679,040, shared here), giving 684,489,830,400: the model card's
  "685B = 671B main + 14B MTP"."""
  return ModelConfig(
      layer_type="deepseek", vocab_size=129280, hidden_size=7168, num_layers=61,
      intermediate_size=18432, **dict(_MLA_FULL, num_attention_heads=128),
      rope_theta=1e4, rope_type="yarn", rope_factor=40.0, original_max_position_embeddings=4096,
      mscale=1.0, mscale_all_dim=1.0, max_position_embeddings=163840, rms_norm_eps=1e-6,
      n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, moe_intermediate_size=2048,
      scoring_func="sigmoid", n_group=8, topk_group=4, norm_topk_prob=True,
      routed_scaling_factor=2.5, first_k_dense_replace=3, **_ACCELERATOR)


def youtu_llm() -> ModelConfig:
  """Youtu-LLM 2B (Tencent, arXiv 2512.24618): dense MLA, tied embeddings, 1.96B params."""
  return ModelConfig(
      layer_type="dense", vocab_size=128256, hidden_size=2048, num_layers=32, intermediate_size=6144,
      **dict(_MLA_FULL, num_attention_heads=16), rope_theta=1.6e6, max_position_embeddings=131072,
      rms_norm_eps=1e-6, tie_word_embeddings=True,
      **{k: v for k, v in _ACCELERATOR.items() if not k.startswith(("moe", "dropless"))})


def longcat_flash_tiny() -> ModelConfig:
  return ModelConfig(
      layer_type="scmoe", vocab_size=128, num_layers=2, intermediate_size=128, **_MLA_TINY,
      mla_scale_q_lora=True, mla_scale_kv_lora=True, rope_theta=1e7, rms_norm_eps=1e-5,
      n_routed_experts=4, zero_expert_num=2, num_experts_per_tok=2, moe_intermediate_size=32,
      scoring_func="softmax", routed_scaling_factor=6.0)


def deepseek_v3_tiny() -> ModelConfig:
  return ModelConfig(
      layer_type="deepseek", vocab_size=128, num_layers=3, intermediate_size=128, **_MLA_TINY,
      rope_theta=1e4, rms_norm_eps=1e-6, n_routed_experts=8, n_shared_experts=1,
      num_experts_per_tok=2, moe_intermediate_size=32, scoring_func="sigmoid", n_group=4,
      topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, first_k_dense_replace=1)


def youtu_llm_tiny() -> ModelConfig:
  return ModelConfig(
      layer_type="dense", vocab_size=128, num_layers=2, intermediate_size=128, **_MLA_TINY,
      rope_theta=1.6e6, rms_norm_eps=1e-6, tie_word_embeddings=True)


# IQuest-Coder-V1 (IQuestLab, arXiv 2603.16733): Llama-style GQA. transformers' IQuestCoderConfig
# defaults are the 40B (80 layers); the public model card lists 7B / 14B / 40B with the same
# width and heads and 14 / 28 / 80 layers (the card states no other size).
_IQUEST_FULL = dict(layer_type="llama", vocab_size=76800, hidden_size=5120, intermediate_size=27648,
                    num_attention_heads=40, num_key_value_heads=8, head_dim=128, rope_theta=5e5,
                    rope_interleave=False, rms_norm_eps=1e-5, max_position_embeddings=131072,
                    **{k: v for k, v in _ACCELERATOR.items()
                       if not k.startswith(("moe", "dropless", "attention", "scan"))})

_IQUEST_TINY = dict(layer_type="llama", vocab_size=128, hidden_size=64, num_layers=2,
                    intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    rope_theta=1e4, rope_interleave=False, rms_norm_eps=1e-5,
                    max_position_embeddings=256)


def iquest_coder_7b() -> ModelConfig:
  """IQuest-Coder-V1-7B: 14 layers of the 40B's shape (model card); 7.61B params (untied).

  Assumption: the FFN width 27648 (and d 5120, 40 / 8 heads) is the 40B's. model-spec §5
  states 27648 for the 40B-Loop config only, and transformers' IQuestCoderConfig defaults are
  the 40B's; no source here gives the 7B's own config.json, so its width is unverified."""
  return ModelConfig(**_IQUEST_FULL, num_layers=14)


def iquest_coder_40b() -> ModelConfig:
  """IQuest-Coder-V1-40B: IQuestCoderConfig's default sizes (80 layers), rope_theta 5e5 as in
  the released Loop config (model-spec §5); 39.8B params."""
  return ModelConfig(**_IQUEST_FULL, num_layers=80)


def iquest_loop_40b() -> ModelConfig:
  """IQuest-Coder-V1-40B-Loop-Instruct: the 40B run twice (loop_num 2, window 64); 39.8B params
  (the gates add 80 * 40 * 129)."""
  return ModelConfig(**_IQUEST_FULL, num_layers=80, loop_num=2, loop_window_size=64)


def iquest_coder_tiny() -> ModelConfig:
  """The parity model of model-spec §6 (IQuestCoderConfig -> LlamaForCausalLM)."""
  return ModelConfig(**_IQUEST_TINY)


def iquest_loop_tiny() -> ModelConfig:
  """iquest_coder_tiny looped twice with a window of 4 (short enough for tests to cross it)."""
  return ModelConfig(**_IQUEST_TINY, loop_num=2, loop_window_size=4)


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "longcat_flash": longcat_flash,
    "deepseek_v3": deepseek_v3,
    "youtu_llm": youtu_llm,
    "longcat_flash_tiny": longcat_flash_tiny,
    "deepseek_v3_tiny": deepseek_v3_tiny,
    "youtu_llm_tiny": youtu_llm_tiny,
    "iquest_coder_7b": iquest_coder_7b,
    "iquest_coder_40b": iquest_coder_40b,
    "iquest_loop_40b": iquest_loop_40b,
    "iquest_coder_tiny": iquest_coder_tiny,
    "iquest_loop_tiny": iquest_loop_tiny,
}


def get(name: str, **overrides) -> ModelConfig:
  """A preset by name, with optional field overrides (validated)."""
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  cfg = PRESETS[name]()
  return cfg.replace(**overrides) if overrides else cfg
