"""Model FLOPs of a training step, for MFU (activated experts only).

    step FLOPs = 3 x [ 2 x activated matmul params x tokens  +  causal attention ]

(forward = 1, backward = 2 forward-equivalents). Matmul params are the kernels of every
projection, FFN, router and the LM head (the embedding table only when it is tied, i.e.
used as the head); norm weights and biases are not matmuls and the embedding lookup is a
gather. Expert weights count at the measured activation: each MoE layer runs
`ffn_experts_per_token` of its N FFN experts per token (K times the non-zero-expert share
of router slots, less slots dropped by capacity; zero-computation experts cost nothing). Attention per attention sublayer
and sequence of length T: QK^T and PV over the causal half, 2 * H * (d_qk + d_v) * T^2 / 2.
Rows are counted as full length-T sequences (what the kernels compute for packed rows).

Checked against docs/cpu-calibration.md: its 58.6M LongCat-style model at 2.73 FFN experts
per token and 4 x 512 tokens gives 324.7 GFLOP per step (tests/test_train_step.py).
"""

from __future__ import annotations

import dataclasses

import jax

from agentic_jax import models
from agentic_jax.models.config import ModelConfig

MATMUL_LEAVES = ("kernel", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class FlopModel:
  dense_matmul_params: int  # everything but the routed experts
  expert_params: int  # routed FFN experts, all layers, all N experts
  n_routed_experts: int
  attention_per_token_per_len: int  # sum over attention sublayers of H * (d_qk + d_v)

  def activated_params(self, ffn_experts_per_token: float) -> float:
    if not self.n_routed_experts:
      return float(self.dense_matmul_params)
    share = ffn_experts_per_token / self.n_routed_experts
    return self.dense_matmul_params + self.expert_params * share

  def step_flops(self, *, batch: int, seq_len: int, ffn_experts_per_token: float = 0.0) -> float:
    tokens = batch * seq_len
    matmul = 2.0 * self.activated_params(ffn_experts_per_token) * tokens
    attention = float(self.attention_per_token_per_len) * seq_len * tokens  # causal half
    return 3.0 * (matmul + attention)


def executed_ffn_experts_per_token(metrics: dict, tokens: int) -> float:
  """FFN experts per token that actually ran: the step's `moe/ffn_experts_per_token` (mean
  over MoE layers, from the router's choices) minus the slots capacity dispatch dropped
  (`moe/dropped_slots`, summed over layers). 0 for dense models."""
  ffn = float(metrics.get("moe/ffn_experts_per_token", 0.0))
  layers = float(metrics.get("moe/moe_layers", 0.0))
  if not layers or not tokens:
    return ffn
  return max(0.0, ffn - float(metrics.get("moe/dropped_slots", 0.0)) / (layers * tokens))


def flop_model(cfg: ModelConfig) -> FlopModel:
  """Counts from parameter shapes only (jax.eval_shape; nothing is allocated)."""
  params = models.abstract_variables(cfg)["params"]
  dense = experts = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [getattr(p, "key", str(p)) for p in path]
    name = keys[-1]
    if name == "embedding":
      if cfg.tie_word_embeddings:
        dense += leaf.size
    elif name in MATMUL_LEAVES:
      if "experts" in keys:  # routed experts (shared ones live under "shared_experts")
        experts += leaf.size
      else:
        dense += leaf.size
  if cfg.layer_type == "llama":
    # GQA; the IQuest Loop runs every layer loop_num times with the same weights, and each
    # later loop's global attention is another causal pass over loop-1 K/V (its W-key window
    # costs O(W T), left out).
    layer_matmuls = sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                        if getattr(path[0], "key", "").startswith("layers_")
                        and getattr(path[-1], "key", "") in MATMUL_LEAVES)
    dense += (cfg.loop_num - 1) * layer_matmuls
    attn = cfg.loop_num * cfg.num_layers * cfg.num_attention_heads * 2 * cfg.attn_head_dim
  else:
    attn = cfg.num_attention_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)
  return FlopModel(int(dense), int(experts), cfg.n_routed_experts if cfg.is_moe else 0, int(attn))
