"""Mixture-of-experts layer: LongCat-Flash (softmax router + zero-computation experts) and
DeepSeek-V3 (sigmoid router, group-limited top-k, shared experts). model-spec §2, §3.3.

Variables of one `MoE` module (kernels stored [in, out], i.e. transposed from torch):
  params/router/kernel                      [d, N+Z]  ("embed", "router_slots")
  router_state/router/e_score_correction_bias [N+Z]   ("router_slots",), float32, zeros;
      non-trainable; shifts expert SELECTION only, never the gate weights.
  params/experts/gate_proj, up_proj         [N, d, I] ("expert", "embed", "expert_mlp")
  params/experts/down_proj                  [N, I, d] ("expert", "expert_mlp", "embed")
  params/shared_experts/{gate,up,down}_proj (only if n_shared_experts > 0; layers.SwiGLU of
      width I * n_shared_experts, added unweighted to every token)
N = n_routed_experts (FFN experts), Z = zero_expert_num (identity experts, no weights),
I = moe_intermediate_size, K = num_experts_per_tok, M = B*T tokens.

Sown into "intermediates" (only when that collection is mutable; never changes outputs):
  expert_load            [N+Z] f32  fraction of the M*K routed slots per slot index (sums to 1)
  zero_expert_share      []    f32  fraction of slots routed to zero experts (idx >= N)
  dropped_slots          []    f32  FFN slots dropped by capacity overflow (0 for dense/dropless)
  ffn_experts_per_token  []    f32  mean FFN experts per token = K * (1 - zero_expert_share)
  expert_rows            []    f32  rows pushed through expert matmuls (see moe_dispatch)
  seq_load               [B, N+Z] f32  per-sequence fraction of slots per slot index
  seq_router_prob        [B, N+Z] f32  per-sequence mean of the per-token-normalised router
                                        scores s_i / sum_j s_j (differentiable)
  router_z_loss          []    f32  mean_t logsumexp(logits_t)^2 (differentiable)
Counts are computed from the chosen indices; the probability and z-loss terms keep their
gradient so a training loss can use them (see agentic_jax.models.balance).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from agentic_jax.models import moe_kernels
from agentic_jax.models.config import ModelConfig
from agentic_jax.models.layers import SwiGLU, dtype_of, normal_init, param

Array = jax.Array
F32 = jnp.float32

SOWN_NAMES = ("expert_load", "zero_expert_share", "dropped_slots", "ffn_experts_per_token",
              "expert_rows", "seq_load", "seq_router_prob", "router_z_loss")


class RouterOutput(NamedTuple):
  logits: Array  # [M, N+Z] f32
  scores: Array  # [M, N+Z] f32, softmax or sigmoid of logits
  idx: Array  # [M, K] int32 chosen slots
  gates: Array  # [M, K] f32 combine weights (unbiased scores, renormalised, scaled)


def route(cfg: ModelConfig, x: Array, kernel: Array, bias: Array) -> RouterOutput:
  """Router of transformers' LongcatFlashTopkRouter / DeepseekV3TopkRouter for x [M, d]."""
  logits = jnp.dot(x.astype(F32), kernel.astype(F32), precision=lax.Precision.HIGHEST)
  if cfg.scoring_func == "softmax":
    scores = jax.nn.softmax(logits, axis=-1)
  else:
    scores = jax.nn.sigmoid(logits)
  # The selection path carries no gradient (HF runs it under no_grad).
  sel = lax.stop_gradient(scores) + bias.astype(F32)
  if cfg.n_group > 1:
    m, s = sel.shape
    grouped = sel.reshape(m, cfg.n_group, s // cfg.n_group)
    group_score = lax.top_k(grouped, 2)[0].sum(-1)  # [M, G]: sum of each group's top-2
    _, keep = lax.top_k(group_score, cfg.topk_group)
    group_mask = jnp.zeros((m, cfg.n_group), bool).at[jnp.arange(m)[:, None], keep].set(True)
    slot_mask = jnp.repeat(group_mask, s // cfg.n_group, axis=1)
    sel = jnp.where(slot_mask, sel, -jnp.inf)
  _, idx = lax.top_k(sel, cfg.num_experts_per_tok)
  gates = jnp.take_along_axis(scores, idx, axis=-1)
  if cfg.norm_topk_prob:
    gates = gates / (gates.sum(-1, keepdims=True) + 1e-20)
  gates = gates * cfg.routed_scaling_factor
  return RouterOutput(logits, scores, idx.astype(jnp.int32), gates)


class Router(nn.Module):
  """Router kernel (param) + correction bias (collection "router_state")."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> RouterOutput:
    cfg = self.cfg
    slots = cfg.num_slots
    kernel = param(self, "kernel", (x.shape[-1], slots), ("embed", "router_slots"),
                   normal_init(cfg.initializer_range), dtype_of(cfg.param_dtype))
    bias = self.variable(
        "router_state", "e_score_correction_bias",
        lambda: nn.LogicallyPartitioned(jnp.zeros((slots,), F32), ("router_slots",)))
    return route(cfg, x, kernel, jnp.asarray(bias.value))


class Experts(nn.Module):
  """Stacked FFN-expert weights; zero experts have none."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, d: int) -> tuple[Array, Array, Array]:
    cfg = self.cfg
    n, inter = cfg.n_routed_experts, cfg.moe_intermediate_size
    init = normal_init(cfg.initializer_range)
    pdt = dtype_of(cfg.param_dtype)
    gate = param(self, "gate_proj", (n, d, inter), ("expert", "embed", "expert_mlp"), init, pdt)
    up = param(self, "up_proj", (n, d, inter), ("expert", "embed", "expert_mlp"), init, pdt)
    down = param(self, "down_proj", (n, inter, d), ("expert", "expert_mlp", "embed"), init, pdt)
    return gate, up, down


class MoE(nn.Module):
  """y = sum_k g_k E_{idx_k}(x) (+ shared experts); x [B, T, d] -> [B, T, d] in x.dtype.

  Slot e < N is SwiGLU expert e, slot e >= N is the identity (output g*x, no matmul).
  Expert matmuls run in cfg.dtype, the combine in float32. Dispatch: cfg.moe_dispatch names
  an entry of the dispatch table moe_kernels.KERNELS ("dense" | "capacity" |
  "dropless_blocked" | "dropless_ragged" | "expert_parallel", or any registered path; the
  older "dropless" + cfg.dropless_backend still works). All give the same result when
  capacity drops nothing (see moe_dispatch); the table also says how each runs under a mesh.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    b, t, d = x.shape
    n, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    cdt = dtype_of(cfg.dtype)
    x2d = x.reshape(b * t, d)
    r = Router(cfg, name="router")(x2d)
    wg, wu, wd = Experts(cfg, name="experts")(d)
    y, stats = moe_kernels.dispatch(cfg, x2d.astype(cdt), r.idx, r.gates, wg.astype(cdt),
                                 wu.astype(cdt), wd.astype(cdt))
    is_zero = r.idx >= n
    if cfg.zero_expert_num:
      zero_gate = jnp.sum(jnp.where(is_zero, r.gates, 0.0), axis=-1)
      y = y + zero_gate[:, None] * x2d.astype(F32)
    if cfg.n_shared_experts:
      shared = SwiGLU(cfg, width=cfg.moe_intermediate_size * cfg.n_shared_experts,
                      name="shared_experts")(x)
      y = y + shared.reshape(b * t, d).astype(F32)
    if self.is_mutable_collection("intermediates"):
      self._sow_stats(r, stats, b, t)
    return y.astype(x.dtype).reshape(b, t, d)

  def _sow_stats(self, r: RouterOutput, stats: dict, b: int, t: int) -> None:
    cfg = self.cfg
    slots, k = cfg.num_slots, cfg.num_experts_per_tok
    seq_counts = jnp.zeros((b, slots), F32).at[
        jnp.arange(b)[:, None], r.idx.reshape(b, t * k)].add(1.0)
    seq_load = seq_counts / (t * k)
    load = seq_counts.sum(0) / (b * t * k)
    zero_share = jnp.sum(load[cfg.n_routed_experts:])
    probs = r.scores / jnp.sum(r.scores, axis=-1, keepdims=True)
    values = {
        "expert_load": load,
        "zero_expert_share": zero_share,
        "dropped_slots": stats["dropped_slots"].astype(F32),
        "ffn_experts_per_token": k * (1.0 - zero_share),
        "expert_rows": stats["expert_rows"].astype(F32),
        "seq_load": seq_load,
        "seq_router_prob": probs.reshape(b, t, slots).mean(1),
        "router_z_loss": jnp.mean(jax.nn.logsumexp(r.logits, axis=-1) ** 2),
    }
    for name in SOWN_NAMES:
      self.sow("intermediates", name, values[name])
