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
                 + attention probabilities 2 * H/tp * T * 4 bytes (f32 scores and softmax);
                 attention_impl "fused" (the cuDNN kernel) instead T * (1 + c) for the mask
                 and its bias, 4 * H/tp softmax stats, output H/tp * max(dqk, dv)
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

RL jobs (`plan_rl_memory`, launch/plan.py for an RL config): params, the frozen reference copy,
AdamW state and the largest fsdp-gathered module live throughout; three phases run one after
another, and the plan counts the largest: the rollout (decode cache + prefill forward of every
rollout row on every device, as rl/sampler.py replicates the decoder's inputs), the reference
log-probs (a forward of one minibatch's rows at a time, as rl/step.py runs it) and the update
(gradients + one minibatch's activations), each with its expert-parallel exchange buffers
(`exchange_bytes`). Forward passes without gradient (`forward_bytes`) keep one layer's set,
attention scores over one key block with chunked attention, and f32 logits of every position.
Not checked on an accelerator; XLA:CPU's compile of LongCat-Flash's decode (1 layer, 8 fake
devices) reports 28-307 GiB of temporaries per device whatever the batch, so the MoE rollout
terms are the formula's, not a measurement's.

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
import numpy as np
import optax

from agentic_jax import models
from agentic_jax.parallel.rules import DEFAULT_RULES, Rules
from agentic_jax.parallel.sharding import (
    axis_sizes, batch_shards, per_device_bytes, specs_like_params, variable_specs)

# Memory of one device in GiB for `launch/plan.py --accelerator=NAME`: the vendors' HBM
# figures (NVIDIA's 80 GB parts; the H200's 141 GB taken as 140 GiB; Cloud TPU chips). What the
# runtime keeps for itself (CUDA context, ~1 GiB) comes out of the plan's reserve.
ACCELERATORS: dict[str, float] = {
    "a100": 80.0, "h100": 80.0, "h800": 80.0, "h200": 140.0,
    "v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0,
}

GIB = 1024 ** 3


@dataclasses.dataclass
class MemoryPlan:
  rows: list[tuple[str, int, str]]  # (component, bytes per device, note)
  device_bytes: Optional[int]
  reserve: float
  mesh: dict[str, int]
  # phase -> names of the rows alive only during it (phases run one after another: the RL
  # plan's rollout, reference forward and update); rows in no phase are alive throughout.
  # total = the rows in no phase + the largest phase. Empty: every row counts (a train step).
  phases: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def phase_bytes(self) -> dict[str, int]:
    return {p: sum(self.bytes_of(n) for n in names) for p, names in self.phases.items()}

  @property
  def peak_phase(self) -> Optional[str]:
    sizes = self.phase_bytes()
    return max(sizes, key=sizes.get) if sizes else None

  @property
  def total(self) -> int:
    in_phase = {n for names in self.phases.values() for n in names}
    always = sum(b for n, b, _ in self.rows if n not in in_phase)
    return always + max(self.phase_bytes().values(), default=0)

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
    phase_of = {n: p for p, names in self.phases.items() for n in names}
    lines += [f"{n:<14}{b / scale:>12.3f}  " + (f"[{phase_of[n]}] " if n in phase_of else "")
              + note for n, b, note in self.rows]
    if self.phases:
      sizes = self.phase_bytes()
      lines.append("phases run one after another; the total counts the rows without a phase "
                   "and the largest phase: " + ", ".join(
                       f"{p} {b / scale:.3f}" for p, b in sizes.items())
                   + f" {unit} (peak: {self.peak_phase})")
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
    if cfg.attention_impl == "fused":
      # cuDNN flash attention (GPU): no scores; the [B, 1, T, S] bool mask and the bias cuDNN
      # makes of it (shared by the heads), f32 softmax stats, output padded to max(dqk, dv)
      t["batched_dots"] += seq_len * (1 + c) + 4 * ht + c * ht * max(dqk, dv)
    else:
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


# ----------------------------------------------------------------- RL step


def forward_bytes(cfg: models.ModelConfig, mesh: Mapping[str, int], *, batch_per_device: int,
                  seq_len: int, logit_bytes: int = 4, last_logits_only: bool = False) -> int:
  """Peak of one forward pass without gradient over batch_per_device rows of seq_len tokens
  (see the module doc): the residual stream and the embedding output, ONE layer's full set
  (with attention_impl "chunked" its scores span one key block, not the row), and the logits
  of every position: `logit_bytes` per vocabulary entry and token (4: one f32 [tokens, vocab]
  buffer. XLA:CPU's buffer assignment for a 2-layer Youtu-LLM at 2 x 1024 and 2 x 2048 tokens,
  bf16 and f32 compute, held exactly that for rl/step.token_logp, whose log-softmax fuses
  into the target gather). last_logits_only: the logits of one position per row (sampling's
  prefill applies the head to the last position only: XLA:CPU kept all of them when the
  prefill sliced the last position after the head, 256 MiB vs 34 MiB of temporaries for
  4 x 512 tokens and a 32k vocabulary)."""
  sizes = axis_sizes(mesh)
  tp = sizes["tensor"]
  c = jnp.dtype(cfg.dtype).itemsize
  keys = (min(cfg.attention_chunk_size, seq_len) if cfg.attention_impl == "chunked" else seq_len)
  # _per_token_terms counts the scores as 2 * H/tp * T * 4 bytes per token: over one key block
  layer = max(sum(t.values()) for t in _per_token_terms(cfg, keys, tp).values())
  vocab_split = cfg.vocab_size / tp if cfg.vocab_size % tp == 0 else cfg.vocab_size
  n = batch_per_device * seq_len
  logit_rows = batch_per_device if last_logits_only else n
  return int(n * (layer + 2 * c * cfg.hidden_size) + logit_rows * vocab_split * logit_bytes)


def gathered_module_bytes(cfg: models.ModelConfig, mesh: Mapping[str, int],
                          rules: Rules = DEFAULT_RULES) -> int:
  """Bytes of the largest module one device holds while it is all-gathered over the fsdp
  axis (FSDP): one layer of a scanned layer stack (its arrays lead with the "layers" axis) or
  a top-level module (embedding, output head), split only by the mesh axes other than fsdp;
  arrays the gather leaves alone (not split over fsdp) are not counted. The routed experts' weights are gathered over the expert axis too unless
  cfg.moe_dispatch is "expert_parallel": the other dispatches run per token shard with every
  expert's weights whole on each device (models/moe_mesh.py)."""
  sizes = axis_sizes(mesh)
  gathers_experts = cfg.is_moe and cfg.moe_dispatch != "expert_parallel" and sizes["expert"] > 1
  if sizes["fsdp"] == 1 and not gathers_experts:
    return 0
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from agentic_jax.parallel.sharding import spec_split  # pylint: disable=import-outside-toplevel
  boxed = models.abstract_variables(cfg, boxed=True)
  logical = nn.get_partition_spec(boxed)["params"]
  shapes = nn.meta.unbox(boxed)["params"]
  specs = variable_specs(cfg, sizes, rules)["params"]
  no_fsdp = {**sizes, "fsdp": 1}
  no_fsdp_expert = {**no_fsdp, "expert": 1} if gathers_experts else no_fsdp
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
  groups: dict[str, int] = {}
  for (path, x), lg, spec in zip(jax.tree_util.tree_flatten_with_path(shapes)[0],
                                 jax.tree_util.tree_leaves(logical, is_leaf=is_spec),
                                 jax.tree_util.tree_leaves(specs, is_leaf=is_spec)):
    keep = no_fsdp_expert if "expert" in lg else no_fsdp
    if spec_split(spec, keep) == spec_split(spec, sizes):
      continue  # not split by the gathered axes: held whole already, no extra copy
    nbytes = int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
    per = nbytes // spec_split(spec, keep)
    if len(lg) and lg[0] == "layers":
      per //= x.shape[0]
    key = str(getattr(path[0], "key", path[0]))
    groups[key] = groups.get(key, 0) + per
  return max(groups.values(), default=0)


def exchange_bytes(cfg: models.ModelConfig, mesh: Mapping[str, int], tokens: int,
                   capacity_factor: Optional[float] = None) -> int:
  """Send + receive buffers of ONE expert-parallel MoE exchange (models/moe_expert_parallel.py)
  on a device holding `tokens` token rows: ep destinations x C = min(m K, ceil(capacity_factor
  m K / ep)) slots of d values each way, compute dtype. 0 unless cfg.moe_dispatch is
  "expert_parallel" on an expert axis > 1."""
  ep = axis_sizes(mesh)[cfg.expert_axis]
  if not cfg.is_moe or cfg.moe_dispatch != "expert_parallel" or ep == 1:
    return 0
  cf = cfg.capacity_factor if capacity_factor is None else capacity_factor
  mk = tokens * cfg.num_experts_per_tok
  c = min(mk, math.ceil(cf * mk / ep))
  return 2 * ep * c * cfg.hidden_size * jnp.dtype(cfg.dtype).itemsize


def plan_rl_memory(cfg: models.ModelConfig, mesh: Mapping[str, int],
                   rules: Rules = DEFAULT_RULES, *, step_rows: int, minibatches: int,
                   seq_len: int, rollout_rows: int, prompt_len: int, cache_len: int,
                   rollout_shards: int = 1, device_memory_gib: Optional[float] = None,
                   reserve: float = 0.1) -> MemoryPlan:
  """Per-device plan of an RL job (rl/loop.py + rl/step.py) on `mesh`, in three phases that
  run one after another, beside the state that lives throughout:
    always     params, the frozen reference variables (a copy of the initial params and router
               state, laid out like them), AdamW state, and the largest module all-gathered
               over fsdp, counted twice throughout (the update holds its weights and its
               gradient before the reduce-scatter)
    rollout    the decode cache of ceil(rollout_rows / rollout_shards) rows x cache_len slots
               and the prefill: a forward of those rows x prompt_len tokens, the output head
               on the last position only. rollout_shards = the batch shards: rl/sampler.py
               splits the decoder's rows over them (its default, split_rows; checked by
               tests/test_rollout_rows_split.py: each device holds batch / shards rows of the
               cache); 1: every device runs every row (a decoder without the logical-axis
               rules: GSPMD kept every row on every device, with the cache's latent
               dimension split over fsdp instead: counted whole). The tensor axis splits heads
               and vocabulary either way.
    reference  the reference log-probs: rl/step.py runs their forward in `minibatches`
               chunks one after another (step.map_row_blocks), so it holds one chunk of
               step_rows / (batch shards x minibatches) rows of seq_len tokens at a time;
               old_logp="recompute" runs a second one after it, same size
    update     gradients + the activations of one minibatch of
               step_rows / (batch shards x minibatches) rows (activation_bytes)
  step_rows: the packed forward rows F of one RL step (a multiple of batch shards x
  minibatches); rollout_rows: the sequences the decoder runs at once (tasks_per_step x
  group_size, or the eval batch if larger). Batch shards = data x fsdp x expert (the rules'
  activation_batch)."""
  sizes = axis_sizes(mesh)
  shards = batch_shards(sizes, rules)
  if step_rows % (shards * minibatches):
    raise ValueError(f"{step_rows} forward rows do not split into {minibatches} minibatches over "
                     f"{shards} batch shards (data x fsdp x expert)")
  per_mb = step_rows // (shards * minibatches)
  per_roll = -(-rollout_rows // rollout_shards)
  state = state_bytes(cfg, sizes, rules)
  act = activation_bytes(cfg, sizes, batch_per_device=per_mb, seq_len=seq_len)
  gather = gathered_module_bytes(cfg, sizes, rules)
  rows = [
      ("params", state["params"], f"{cfg.param_dtype}; incl. MoE router state"),
      ("reference", state["params"], "frozen copy of the initial params + router state"),
      ("optimizer", state["optimizer"], "AdamW: mu + nu (2 x param dtype) + count"),
      ("fsdp gather", 2 * gather, "largest module gathered (fsdp"
       + ("" if cfg.moe_dispatch == "expert_parallel" or not cfg.is_moe else ", experts: expert")
       + "): weights + gradient"),
      ("decode cache", decode_cache_bytes(cfg, per_roll, cache_len),
       f"{per_roll} rows x {cache_len} slots, {cfg.dtype}"),
      ("prefill", forward_bytes(cfg, sizes, batch_per_device=per_roll, seq_len=prompt_len,
                                last_logits_only=True),
       f"forward of {per_roll} x {prompt_len} prompt tokens, f32 logits of the last"),
      ("ref forward", forward_bytes(cfg, sizes, batch_per_device=per_mb, seq_len=seq_len),
       f"{per_mb} rows x {seq_len} tokens at a time ({minibatches} chunks), f32 logits"),
      ("gradients", state["gradients"], f"{cfg.param_dtype}, laid out like the params"),
      ("act saved", act["saved"], f"remat={cfg.remat_policy}, {cfg.num_layers} layers, "
                                  f"{per_mb} x {seq_len} tokens per minibatch, {cfg.dtype}"),
      ("act peak", act["recompute peak"], "one layer recomputed in the backward pass"),
      ("logits+embed", act["logits+embed"], "f32 logits and their gradient"),
  ]
  phases = {"rollout": ("decode cache", "prefill"), "reference": ("ref forward",),
            "update": ("gradients", "act saved", "act peak", "logits+embed")}
  ep = sizes[cfg.expert_axis]
  if cfg.is_moe and cfg.moe_dispatch == "expert_parallel" and ep > 1:
    # the exchange splits its token rows over cfg.ep_token_axes even when the decoder's
    # inputs are replicated; the decoder runs it with capacity_factor = ep (sampling.py)
    token_shards = math.prod(sizes[a] for a in cfg.ep_token_axes)
    exchanges = [
        ("a2a rollout", exchange_bytes(cfg, sizes, -(-per_roll * prompt_len // token_shards),
                                       capacity_factor=float(ep)), "rollout",
         f"one MoE all-to-all of the prefill, capacity factor {ep}"),
        ("a2a reference", exchange_bytes(cfg, sizes, per_mb * seq_len), "reference",
         f"one MoE all-to-all, capacity factor {cfg.capacity_factor:g}"),
        ("a2a update", 2 * exchange_bytes(cfg, sizes, per_mb * seq_len), "update",
         "one MoE all-to-all forward + its backward"),
    ]
    for name, nbytes, phase, note in exchanges:
      rows.append((name, nbytes, note))
      phases[phase] += (name,)
  device_bytes = None if device_memory_gib is None else int(device_memory_gib * GIB)
  return MemoryPlan(rows, device_bytes, reserve, sizes, phases)


def per_device_batch(global_batch: int, mesh: Mapping[str, int], grad_accum: int = 1,
                     rules: Rules = DEFAULT_RULES) -> int:
  """Rows one device processes per micro-batch; raises if the split is uneven."""
  shards = batch_shards(axis_sizes(mesh), rules)
  if global_batch % (shards * grad_accum):
    raise ValueError(f"batch {global_batch} does not split into {grad_accum} micro-batches over "
                     f"{shards} batch shards (data x fsdp x expert)")
  return global_batch // (shards * grad_accum)
