"""Model configuration: one frozen dataclass for every model family.

Field names follow the transformers configs (DeepseekV3Config, LongcatFlashConfig,
YoutuConfig) where they exist, so a reader can map a checkpoint's config.json onto
ours field by field. `validate()` runs in `__post_init__`, so an invalid combination
raises `ValueError` naming the field before anything is traced or compiled.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

LAYER_TYPES = ("scmoe", "deepseek", "dense", "llama")
# Where a ScMoE layer's MoE branch reads its input (blocks.ScMoELayer): "shortcut" (LongCat-Flash,
# after the first attention) or "sequential" (the conventional placement, after the second).
SCMOE_MOE_INPUTS = ("shortcut", "sequential")
SCORING_FUNCS = ("softmax", "sigmoid")
# moe_dispatch names an entry of the dispatch table (moe_kernels.KERNELS: "dense", "capacity",
# "dropless_blocked", "dropless_ragged", "expert_parallel", and whatever register_kernel
# added); validation reads the table, so a new path needs no edit here. "dropless" is the
# older two-level spelling that configs/ and saved checkpoint configs still use: it means the
# kernel DROPLESS_KERNELS[dropless_backend].
LEGACY_DROPLESS = "dropless"
DROPLESS_KERNELS = {"blocked": "dropless_blocked", "ragged_dot": "dropless_ragged"}
DROPLESS_BACKENDS = tuple(DROPLESS_KERNELS)
# "fused": jax.nn.dot_product_attention, cuDNN flash attention on a GPU in bf16/fp16, XLA
# elsewhere (models/attention_fused.py states the fallback rule).
ATTENTION_IMPLS = ("xla", "chunked", "fused")
ROPE_TYPES = ("default", "yarn")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of one causal LM.

  `layer_type` picks the decoder layer:
    * "scmoe": LongCat-Flash shortcut-connected MoE layer (2 MLA + 2 dense FFN + 1 MoE).
    * "deepseek": DeepSeek-V3 layer (MLA + dense FFN for the first `first_k_dense_replace`
      layers, MLA + MoE with shared experts after).
    * "dense": Youtu-LLM layer (MLA + dense SwiGLU).
    * "llama": Llama-style GQA layer (IQuest-Coder-V1; models/gqa.py, models/loop_lm.py):
      `num_key_value_heads` K/V heads of `head_dim`, RoPE over the whole head (half-split
      when rope_interleave=False, as transformers' rotate_half), dense SwiGLU. The MLA
      fields are unused. `loop_num` > 1 is the IQuest Loop variant (model-spec §5): every
      layer runs loop_num times with shared weights; loops after the first mix global
      attention over loop-1 K/V and a sliding window of `loop_window_size` over their own.
  `num_layers` counts decoder layers; a ScMoE layer holds two attention sublayers, so
  `num_attention_layers` is 2 * num_layers there (HF's LongCat `num_hidden_layers`).

  `scmoe_moe_input` (layer_type "scmoe" only) says which normalised input the layer's MoE reads:
    * "shortcut" (default, LongCat-Flash): x1 = norm_post0(h1), the output of the FIRST
      attention, so the MoE's dispatch/combine does not depend on FFN_0 or MLA_1 and can overlap
      them (checkpoints, presets and Hugging Face LongcatFlash all compute this).
    * "sequential": x3 = norm_post1(h3), the same input as FFN_1, after the SECOND attention:
      the conventional placement, whose dispatch waits for MLA_1 and cannot overlap it.
  Both build EXACTLY the same parameter tree (the same modules under the same names and shapes;
  only the MoE's input changes), so per layer, with d = hidden_size, N = n_routed_experts,
  Z = zero_expert_num, f = intermediate_size, f_e = moe_intermediate_size, both have
      2 * MLA(d) + 2 * 3*d*f (FFN_0, FFN_1) + (N + Z)*d (router) + N * 3*d*f_e (experts) + 4*d (norms)
  parameters. "sequential" has no transformers equivalent (convert.hf_config refuses it).
  """

  # --- family / sizes
  layer_type: str = "dense"
  vocab_size: int = 128
  hidden_size: int = 64
  num_layers: int = 2
  num_attention_heads: int = 4
  intermediate_size: int = 128  # dense SwiGLU width (LongCat: ffn_hidden_size)
  tie_word_embeddings: bool = False
  scmoe_moe_input: str = "shortcut"  # "shortcut" | "sequential" (layer_type "scmoe" only)
  # Multi-token prediction depth D (transformers' / vLLM's name; DeepSeek's config.json calls it
  # num_nextn_predict_layers). 0 = no MTP module; models/mtp.py for the module.
  num_mtp_layers: int = 0

  # --- MLA
  q_lora_rank: Optional[int] = 32  # None = direct query projection (q_proj)
  kv_lora_rank: int = 16
  qk_nope_head_dim: int = 16
  qk_rope_head_dim: int = 8
  v_head_dim: int = 16
  mla_scale_q_lora: bool = False  # LongCat: q *= sqrt(d / q_lora_rank)
  mla_scale_kv_lora: bool = False  # LongCat: latent *= sqrt(d / kv_lora_rank)
  attention_bias: bool = False  # bias on q_a_proj, kv_a_proj_with_mqa and o_proj (never q_proj)
  attention_impl: str = "xla"
  attention_chunk_size: int = 512  # key block for attention_impl="chunked"

  # --- GQA ("llama" only; transformers' LlamaConfig names). None = num_attention_heads /
  # hidden_size // num_attention_heads, as in transformers.
  num_key_value_heads: Optional[int] = None
  head_dim: Optional[int] = None
  # IQuest Loop (model-spec §5): passes over the layers (1 = plain model) and the sliding
  # window W of every pass after the first.
  loop_num: int = 1
  loop_window_size: int = 64

  # --- RoPE
  rope_theta: float = 10000.0
  rope_interleave: bool = True  # pairs (2i, 2i+1) vs contiguous halves
  rope_type: str = "default"
  rope_factor: float = 1.0  # YaRN
  original_max_position_embeddings: int = 4096  # YaRN
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  mscale: float = 1.0
  mscale_all_dim: float = 0.0
  max_position_embeddings: int = 4096

  # --- norms
  rms_norm_eps: float = 1e-6
  latent_norm_eps: float = 1e-6  # q_a_layernorm / kv_a_layernorm (HF constructor default)

  # --- MoE (ignored for layer_type="dense")
  n_routed_experts: int = 0  # FFN experts N
  zero_expert_num: int = 0  # zero-computation (identity) experts Z
  num_experts_per_tok: int = 0  # top-k over N + Z slots
  moe_intermediate_size: int = 32  # per-expert SwiGLU width
  n_shared_experts: int = 0
  scoring_func: str = "sigmoid"
  n_group: int = 1
  topk_group: int = 1
  norm_topk_prob: bool = False
  routed_scaling_factor: float = 1.0
  first_k_dense_replace: int = 0  # deepseek only
  moe_dispatch: str = "capacity"  # a moe_kernels name, or "dropless" + dropless_backend
  dropless_backend: str = "blocked"  # only read when moe_dispatch == "dropless"
  capacity_factor: float = 2.0
  dropless_block_size: int = 128
  # expert_parallel dispatch (moe_expert_parallel): mesh axis the experts are split over, and
  # the mesh axes the token rows are split over (must include expert_axis).
  expert_axis: str = "expert"
  ep_token_axes: tuple[str, ...] = ("data", "fsdp", "expert")

  # --- execution
  scan_layers: bool = False
  remat_policy: str = "none"
  dtype: str = "float32"  # compute dtype of matmuls
  param_dtype: str = "float32"
  initializer_range: float = 0.02

  def __post_init__(self):
    self.validate()

  # ------------------------------------------------------------------ derived
  @property
  def qk_head_dim(self) -> int:
    return self.qk_nope_head_dim + self.qk_rope_head_dim

  @property
  def kv_heads(self) -> int:
    """GQA K/V heads (num_key_value_heads, defaulting to num_attention_heads)."""
    return self.num_key_value_heads or self.num_attention_heads

  @property
  def attn_head_dim(self) -> int:
    """GQA head dim (head_dim, defaulting to hidden_size // num_attention_heads)."""
    return self.head_dim or self.hidden_size // self.num_attention_heads

  @property
  def is_moe(self) -> bool:
    return self.layer_type in ("scmoe", "deepseek")

  @property
  def num_slots(self) -> int:
    """Router width: FFN experts plus zero-computation experts."""
    return self.n_routed_experts + self.zero_expert_num

  @property
  def dispatch_kernel(self) -> str:
    """The flat name of the MoE dispatch kernel (a key of moe_kernels.KERNELS): moe_dispatch,
    or for the two-level "dropless" spelling the kernel of dropless_backend."""
    if self.moe_dispatch == LEGACY_DROPLESS:
      return DROPLESS_KERNELS.get(self.dropless_backend, self.dropless_backend)
    return self.moe_dispatch

  @property
  def attention_per_layer(self) -> int:
    return 2 if self.layer_type == "scmoe" else 1

  @property
  def num_attention_layers(self) -> int:
    return self.num_layers * self.attention_per_layer

  @property
  def num_dense_layers(self) -> int:
    """Leading decoder layers with a dense FFN instead of MoE (deepseek only)."""
    if self.layer_type == "deepseek":
      return min(self.first_k_dense_replace, self.num_layers)
    return self.num_layers if self.layer_type == "dense" else 0

  @property
  def softmax_scale(self) -> float:
    """(dn + dr)^-0.5, times YaRN's m(f, mscale_all_dim)^2 when YaRN is on."""
    scale = self.qk_head_dim ** -0.5
    if self.rope_type == "yarn" and self.mscale_all_dim:
      m = yarn_get_mscale(self.rope_factor, self.mscale_all_dim)
      scale = scale * m * m
    return scale

  def replace(self, **kwargs: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  # --------------------------------------------------------------- validation
  def validate(self) -> None:
    def fail(field: str, msg: str):
      raise ValueError(f"ModelConfig.{field}: {msg} (got {getattr(self, field)!r})")

    def choice(field: str, options):
      if getattr(self, field) not in options:
        fail(field, f"must be one of {options}")

    choice("layer_type", LAYER_TYPES)
    choice("attention_impl", ATTENTION_IMPLS)
    choice("rope_type", ROPE_TYPES)
    choice("remat_policy", REMAT_POLICIES)
    choice("dtype", DTYPES)
    choice("param_dtype", DTYPES)
    choice("scmoe_moe_input", SCMOE_MOE_INPUTS)
    if self.scmoe_moe_input != "shortcut" and self.layer_type != "scmoe":
      fail("scmoe_moe_input", "only a layer_type 'scmoe' model has a shortcut MoE to move")
    for f in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads",
              "intermediate_size", "kv_lora_rank", "qk_nope_head_dim",
              "qk_rope_head_dim", "v_head_dim", "attention_chunk_size",
              "max_position_embeddings"):
      if getattr(self, f) <= 0:
        fail(f, "must be a positive integer")
    if self.num_mtp_layers < 0:
      fail("num_mtp_layers", "must be >= 0 (0 = no multi-token prediction module)")
    if self.num_mtp_layers and self.layer_type not in ("scmoe", "deepseek"):
      fail("num_mtp_layers", "MTP is defined for the LongCat-Flash ('scmoe') and DeepSeek-V3 "
           "('deepseek') families only")
    if self.q_lora_rank is not None and self.q_lora_rank <= 0:
      fail("q_lora_rank", "must be positive, or None for a direct query projection")
    if self.qk_rope_head_dim % 2:
      fail("qk_rope_head_dim", "must be even (RoPE rotates pairs)")
    if self.mla_scale_q_lora and self.q_lora_rank is None:
      fail("mla_scale_q_lora", "needs q_lora_rank (the scale is sqrt(d / q_lora_rank))")
    if self.rope_type == "yarn":
      if self.rope_factor <= 1.0:
        fail("rope_factor", "YaRN needs a factor > 1")
      if self.original_max_position_embeddings <= 0:
        fail("original_max_position_embeddings", "YaRN needs a positive original length")
    if self.rms_norm_eps <= 0:
      fail("rms_norm_eps", "must be > 0")
    self._validate_gqa(fail)
    if not self.is_moe:
      return
    # ---- MoE checks
    choice("scoring_func", SCORING_FUNCS)
    # Imported here, not at the top: the table imports jax (this module stays light), and
    # it must be read as it is now, after any register_kernel calls.
    from agentic_jax.models import moe_kernels
    registered = moe_kernels.names()
    if self.moe_dispatch != LEGACY_DROPLESS and self.moe_dispatch not in registered:
      fail("moe_dispatch", f"must be a registered dispatch kernel, one of {registered} "
           "(moe_kernels.register_kernel adds one), or 'dropless' with dropless_backend")
    choice("dropless_backend", DROPLESS_BACKENDS)
    if self.n_routed_experts <= 0:
      fail("n_routed_experts", f"a {self.layer_type!r} model needs at least one FFN expert")
    if self.zero_expert_num < 0:
      fail("zero_expert_num", "must be >= 0")
    if self.moe_intermediate_size <= 0:
      fail("moe_intermediate_size", "must be positive")
    if self.n_shared_experts < 0:
      fail("n_shared_experts", "must be >= 0")
    if self.num_experts_per_tok <= 0:
      fail("num_experts_per_tok", "must be positive")
    if self.n_group <= 0 or self.num_slots % self.n_group:
      fail("n_group", f"must divide the {self.num_slots} router slots "
           f"(n_routed_experts + zero_expert_num) into equal groups")
    per_group = self.num_slots // self.n_group
    if not 1 <= self.topk_group <= self.n_group:
      fail("topk_group", f"must be in [1, n_group={self.n_group}]")
    if self.n_group > 1 and per_group < 2:
      fail("n_group", "group-limited routing scores a group by its top-2 experts, "
           f"so each group needs >= 2 experts (have {per_group})")
    available = self.topk_group * per_group
    if self.num_experts_per_tok > available:
      fail("num_experts_per_tok", f"top-k larger than the {available} experts available "
           f"(topk_group * slots per group = {self.topk_group} * {per_group})")
    if self.capacity_factor <= 0:
      fail("capacity_factor", "must be > 0")
    if self.dropless_block_size <= 0:
      fail("dropless_block_size", "must be positive")
    if self.dispatch_kernel == "expert_parallel" and self.expert_axis not in self.ep_token_axes:
      fail("ep_token_axes", f"must include expert_axis {self.expert_axis!r}: each expert-axis "
           "device brings its own tokens to the exchange")
    if self.layer_type == "deepseek" and not 0 <= self.first_k_dense_replace <= self.num_layers:
      fail("first_k_dense_replace", f"must be in [0, num_layers={self.num_layers}]")
    if self.layer_type == "scmoe" and self.n_shared_experts:
      fail("n_shared_experts", "the LongCat ScMoE layer has no shared expert")

  def _validate_gqa(self, fail) -> None:
    if self.loop_num < 1:
      fail("loop_num", "must be >= 1 (1 = no loop)")
    if self.loop_window_size < 1:
      fail("loop_window_size", "must be >= 1")
    if self.layer_type != "llama":
      if self.loop_num != 1:
        fail("loop_num", "only a layer_type 'llama' model loops (IQuest Loop)")
      return
    if self.num_key_value_heads is not None and (
        self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads):
      fail("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
    if self.head_dim is not None and self.head_dim <= 0:
      fail("head_dim", "must be a positive integer, or None for hidden_size // heads")
    if self.attn_head_dim % 2:
      fail("head_dim", "must be even (RoPE rotates pairs)")
    if self.attention_impl != "xla":
      fail("attention_impl", "layer_type 'llama' has only the 'xla' GQA core (models/gqa.py)")
    if self.scan_layers:
      # The Loop variant calls every layer once per loop with shared weights; the layers are
      # unrolled in Python (models/loop_lm.py), so there is no stacked layout to scan over.
      fail("scan_layers", "layer_type 'llama' runs unscanned layers")


def yarn_get_mscale(factor: float, mscale: float = 1.0) -> float:
  """m(f, a) = 0.1 a ln f + 1 for f > 1 (DeepSeek-V3 YaRN)."""
  if factor <= 1.0:
    return 1.0
  return 0.1 * mscale * math.log(factor) + 1.0
