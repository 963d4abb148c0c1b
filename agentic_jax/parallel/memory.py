"""Per-device memory plan of a training step, from shapes only (no allocation, any size).

    plan = plan_memory(cfg, {"data": 8, "fsdp": 32, "expert": 16}, batch_per_device=1,
                       seq_len=4096, device_memory_gib=80)
    print(plan.table())

State (exact): every array's bytes divided by the product of the mesh axes its resolved
PartitionSpec splits it over (rules.resolve; splits are always even), summed per device.
  params      model variables (params + MoE router state), cfg.param_dtype
  optimizer   AdamW: mu and nu in the param dtype (2 x f32 per parameter) plus a step count,
              laid out like the params (optax.adamw's state, from jax.eval_shape)
  gradients   one params-sized buffer of the trainable params (param dtype)
  grad accum  a second one when grad_accum > 1 (the running sum of micro-batch gradients)

Activations (an ESTIMATE, typically within ~30%, for the forward + backward of ONE
micro-batch of b = batch_per_device rows of T = seq_len tokens, n = b * T tokens, compute
dtype c bytes, tensor axis size tp, counted per token and layer):
  GQA layer      ("llama") norm d + q H*D/tp + k, v 2*KV*D/tp + attn out H*D/tp + o_proj d
                 + probabilities 2 * H/tp * T * 4 bytes; the IQuest Loop runs every layer
                 loop_num times, and loops after the first hold a second (window) attention
                 and the gate (H/tp * 4 bytes)
  MLA sublayer   norm d + q_a r_q + q-norm r_q + q_b H*dqk/tp + query H*dqk/tp + kv_a (r_kv+d_r)
                 + latent r_kv + kv_b H*(dn+dv)/tp + keys H*dqk/tp + attn out H*dv/tp + o_proj d
                 + attention probabilities 2 * H/tp * T * 4 bytes (f32 scores and softmax)
  dense FFN (I)  norm d + gate I/tp + up I/tp + h I/tp + down d
  MoE            router logits+scores 2*(N+Z)*4 bytes; routed FFN slots per token
                 k_ffn = K*N/(N+Z) (balanced routing; zero-expert slots cost nothing), each
                 d (gathered input) + 3*I_e/tp + d (output); shared experts as a dense FFN
  residual       the layer input d (what the layer scan carries)
Saved for the backward pass, by cfg.remat_policy:
  none           every term above, for every layer
  dots           the layer input + outputs of every matmul (projections, router, expert
                 gate/up/down, attention scores/probabilities and attention output)
  dots_no_batch  like dots without the batched attention einsums (scores, attention out)
  full           the layer input only
plus, for every policy but none, a transient peak of ONE layer's full set while it is
recomputed during the backward pass. Added once: embeddings n*d*c and logits
2 * n * V/tp * 4 bytes (f32 logits and their gradient). Not modelled: XLA temporaries and
fusion buffers, collective buffers, fragmentation, the data pipeline: hence `reserve`.

Decoding cache (`decode_cache_bytes`, exact: the arrays models.init_cache allocates): the MLA
cache holds A * B * S * (kv_lora_rank + qk_rope_head_dim) elements; the GQA cache 2 L B S KV D,
plus for the IQuest Loop 2 (loop_num - 1) L B W KV D for the window rings (only the last W
= loop_window_size keys/values of every later loop); int32 segment ids B * S and counters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from agentic_jax import models
from agentic_jax.parallel.rules import DEFAULT_RULES, Rules
from agentic_jax.parallel.sharding import (
    axis_sizes, batch_shards, per_device_bytes, specs_like_params, variable_specs)

GIB = 1024 ** 3


@dataclasses.dataclass
class MemoryPlan:
  rows: list[tuple[str, int, str]]  # (component, bytes per device, note)
  device_bytes: Optional[int]
  reserve: float
  mesh: dict[str, int]

  @property
  def total(self) -> int:
    return sum(b for _, b, _ in self.rows)

  def bytes_of(self, name: str) -> int:
    for n, b, _ in self.rows:
      if n == name:
        return b
    raise KeyError(name)

  @property
  def usable_bytes(self) -> Optional[int]:
    return None if self.device_bytes is None else int(self.device_bytes * (1 - self.reserve))

  @property
  def fits(self) -> Optional[bool]:
    return None if self.device_bytes is None else self.total <= self.usable_bytes

  def table(self) -> str:
    mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items() if v > 1) or "1 device"
    unit, scale = next((u, s) for u, s in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024))
                       if self.total >= s or u == "KiB")
    lines = [f"mesh: {mesh} ({math.prod(self.mesh.values())} devices); bytes per device",
             f"{'component':<14}{unit:>12}  note"]
    lines += [f"{n:<14}{b / scale:>12.3f}  {note}" for n, b, note in self.rows]
    lines.append(f"{'total':<14}{self.total / scale:>12.3f}")
    if self.device_bytes is not None:
      verdict = "FITS" if self.fits else "DOES NOT FIT"
      lines.append(f"device memory {self.device_bytes / GIB:.1f} GiB, usable "
                   f"{self.usable_bytes / GIB:.1f} GiB after a {self.reserve:.0%} reserve: "
                   f"{verdict} ({self.total / self.usable_bytes:.0%} of usable)")
    return "\n".join(lines)


# ------------------------------------------------------------------ state


def state_bytes(cfg: models.ModelConfig, mesh: Mapping[str, int], rules: Rules = DEFAULT_RULES,
                *, grad_accum: int = 1) -> dict[str, int]:
  """Exact per-device bytes of params, AdamW state, gradients (and the accumulator)."""
  specs = variable_specs(cfg, mesh, rules)
  shapes = models.abstract_variables(cfg)
  out = {"params": per_device_bytes(shapes, specs, mesh)}
  opt = jax.eval_shape(optax.adamw(1e-3).init, shapes["params"])
  out["optimizer"] = per_device_bytes(opt, specs_like_params(opt, specs), mesh)
  out["gradients"] = per_device_bytes(shapes["params"], specs["params"], mesh)
  if grad_accum > 1:
    out["grad accum"] = out["gradients"]
  return out


# ------------------------------------------------------------ activations


def _per_token_terms(cfg: models.ModelConfig, seq_len: int, tp: int) -> dict[str, dict[str, float]]:
  """Bytes per token of one layer, split into {"dots", "batched_dots", "other"}."""
  c = jnp.dtype(cfg.dtype).itemsize
  d, h = cfg.hidden_size, cfg.num_attention_heads
  dqk, dv, dn, dr = cfg.qk_head_dim, cfg.v_head_dim, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
  rq, rkv = cfg.q_lora_rank or 0, cfg.kv_lora_rank
  ht = h / tp

  def zero():
    return {"dots": 0.0, "batched_dots": 0.0, "other": 0.0}

  def mla(t):
    t["dots"] += c * (rq + ht * dqk + (rkv + dr) + ht * (dn + dv) + d)  # q_a, q_b, kv_a, kv_b, o
    t["other"] += c * (d + rq + ht * dqk + rkv + ht * dqk)  # norm, q-norm, query, latent, keys
    t["batched_dots"] += 2 * ht * seq_len * 4 + c * ht * dv  # scores+probs (f32), attn out

  def ffn(t, width):
    w = width / tp
    t["dots"] += c * (2 * w + d)  # gate, up and down outputs
    t["other"] += c * (d + w)  # norm output, h = silu(gate) * up

  def moe(t):
    slots = cfg.num_slots
    t["dots"] += 2 * slots * 4  # router logits (f32) and scores
    k_ffn = cfg.num_experts_per_tok * cfg.n_routed_experts / slots
    t["other"] += k_ffn * c * (d + cfg.moe_intermediate_size / tp)  # gathered rows, h
    t["dots"] += k_ffn * c * (2 * cfg.moe_intermediate_size / tp + d)  # gate, up, down
    if cfg.n_shared_experts:
      ffn(t, cfg.moe_intermediate_size * cfg.n_shared_experts)

  def gqa(t, window: bool):
    hd, kvt = cfg.attn_head_dim, cfg.kv_heads / tp
    t["dots"] += c * (ht * hd + 2 * kvt * hd + d)  # q, k, v, o projections
    t["other"] += c * (d + ht * hd + 2 * kvt * hd)  # norm, rotated q and k, (repeated) keys
    attentions = 2 if window else 1  # loop >= 2: global over loop-1 K/V + the window
    t["batched_dots"] += attentions * (2 * ht * seq_len * 4 + c * ht * hd)
    if window:
      t["other"] += ht * 4 + c * ht * hd  # f32 gate, mixed output

  terms: dict[str, dict[str, float]] = {}
  if cfg.layer_type == "llama":
    t = zero()
    for loop in range(cfg.loop_num):
      gqa(t, loop > 0)
      ffn(t, cfg.intermediate_size)
    terms["llama"] = t
  elif cfg.layer_type == "scmoe":
    t = zero()
    mla(t); mla(t); ffn(t, cfg.intermediate_size); ffn(t, cfg.intermediate_size); moe(t)
    terms["scmoe"] = t
  else:
    t = zero()
    mla(t); ffn(t, cfg.intermediate_size)
    terms["dense"] = t
    if cfg.layer_type == "deepseek":
      t = zero()
      mla(t); moe(t)
      terms["moe"] = t
  return terms


def activation_bytes(cfg: models.ModelConfig, mesh: Mapping[str, int], *, batch_per_device: int,
                     seq_len: int) -> dict[str, int]:
  """{"saved": ..., "recompute peak": ..., "logits+embed": ...} per device (see docstring)."""
  sizes = axis_sizes(mesh)
  tp = sizes["tensor"]
  c = jnp.dtype(cfg.dtype).itemsize
  n = batch_per_device * seq_len
  terms = _per_token_terms(cfg, seq_len, tp)
  counts = {"scmoe": cfg.num_layers, "llama": cfg.num_layers, "dense": cfg.num_dense_layers,
            "moe": cfg.num_layers - cfg.num_dense_layers}
  saved_parts = {"none": ("dots", "batched_dots", "other"), "dots": ("dots", "batched_dots"),
                 "dots_no_batch": ("dots",), "full": ()}[cfg.remat_policy]
  saved = 0.0
  peak = 0.0
  for kind, t in terms.items():
    full = sum(t.values())
    saved += counts[kind] * (c * cfg.hidden_size + sum(t[p] for p in saved_parts))
    if cfg.remat_policy != "none":
      peak = max(peak, full)
  vocab_split = cfg.vocab_size / tp if cfg.vocab_size % tp == 0 else cfg.vocab_size
  return {"saved": int(n * saved), "recompute peak": int(n * peak),
          "logits+embed": int(n * (2 * vocab_split * 4 + c * cfg.hidden_size))}


def decode_cache_bytes(cfg: models.ModelConfig, batch: int, cache_len: int) -> int:
  """Bytes of the decoding cache `models.init_cache(cfg, batch, cache_len)` on one device (see
  the module doc), computed from shapes without allocating it."""
  cache = jax.eval_shape(lambda: models.init_cache(cfg, batch, cache_len))
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(cache)))


def plan_memory(cfg: models.ModelConfig, mesh: Mapping[str, int], rules: Rules = DEFAULT_RULES, *,
                batch_per_device: int, seq_len: int, grad_accum: int = 1,
                device_memory_gib: Optional[float] = None, reserve: float = 0.1,
                cache_len: Optional[int] = None) -> MemoryPlan:
  """The training step's plan; with `cache_len`, also a "decode cache" row: the cache of
  batch_per_device rows of cache_len slots that rollouts on this device would hold."""
  sizes = axis_sizes(mesh)
  state = state_bytes(cfg, sizes, rules, grad_accum=grad_accum)
  notes = {"params": f"{cfg.param_dtype}; incl. MoE router state",
           "optimizer": "AdamW: mu + nu (2 x param dtype) + count",
           "gradients": f"{cfg.param_dtype}, laid out like the params",
           "grad accum": f"running sum over {grad_accum} micro-batches"}
  rows = [(k, v, notes[k]) for k, v in state.items()]
  act = activation_bytes(cfg, sizes, batch_per_device=batch_per_device, seq_len=seq_len)
  rows += [
      ("act saved", act["saved"], f"remat={cfg.remat_policy}, {cfg.num_layers} layers, "
                                  f"{batch_per_device} x {seq_len} tokens, {cfg.dtype}"),
      ("act peak", act["recompute peak"], "one layer recomputed in the backward pass"),
      ("logits+embed", act["logits+embed"], "f32 logits and their gradient"),
  ]
  if cache_len:
    window = (f", loop rings of {cfg.loop_window_size}" if cfg.layer_type == "llama"
              and cfg.loop_num > 1 else "")
    rows.append(("decode cache", decode_cache_bytes(cfg, batch_per_device, cache_len),
                 f"{batch_per_device} x {cache_len} slots{window}, {cfg.dtype}"))
  device_bytes = None if device_memory_gib is None else int(device_memory_gib * GIB)
  return MemoryPlan(rows, device_bytes, reserve, sizes)


def per_device_batch(global_batch: int, mesh: Mapping[str, int], grad_accum: int = 1,
                     rules: Rules = DEFAULT_RULES) -> int:
  """Rows one device processes per micro-batch; raises if the split is uneven."""
  shards = batch_shards(axis_sizes(mesh), rules)
  if global_batch % (shards * grad_accum):
    raise ValueError(f"batch {global_batch} does not split into {grad_accum} micro-batches over "
                     f"{shards} batch shards (data x fsdp x expert)")
  return global_batch // (shards * grad_accum)
