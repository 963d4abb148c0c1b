"""Single-shard MoE dispatch kernels and their slot bookkeeping (pure functions, no Flax).

To add a dispatch path: write a kernel with the contract below (here or in your own module),
then register it in agentic_jax/models/moe_kernels.py (one `register_kernel` call); the
config, the selector and the mesh runner all read that table. Nothing here picks a kernel.

The kernel contract: `fn(x, idx, gates, wg, wu, wd, **options) -> (y, stats)` with the
flattened tokens `x` [M, d] (compute dtype), the router's choices `idx` [M, K] (int32, slot
ids in [0, N+Z)) and `gates` [M, K] (float32), and the stacked FFN-expert weights `wg`, `wu`
[N, d, I], `wd` [N, I, d] (compute dtype); `options` are static keyword arguments taken from
the config by the kernel's table entry. It returns the float32 sum of the FFN-expert
contributions y [M, d] and a dict of int32 statistics:

  dropped_slots  FFN slots that got no buffer row (capacity only; 0 elsewhere)
  expert_rows    rows pushed through the expert matmuls in the forward pass: dense M*N,
                 capacity N*(active chunks)*chunk, blocked (active blocks)*block,
                 ragged_dot the number of FFN slots (what a real grouped kernel runs; the
                 CPU lowering of ragged_dot computes N times that).

Slots with idx >= N (zero-computation experts) never enter any buffer: the caller adds
their identity term g*x. Slots are flattened token-major (s = m*K + k) and every rank
within an expert is taken in that order, so capacity drops the LAST tokens (highest
flattened token index b*T + t) of an over-full expert first.

The public helpers below the loop kernel (rank_within_key, combine_slots, expert_counts,
pad_token_rows, capacity_of) are shared with moe_expert_parallel and moe_mesh, so a
multi-device program reuses the single-shard bookkeeping instead of copying it.

Why the loop kernel: with static shapes a batched einsum over a worst-case buffer costs
the same whatever the router does, so zero experts would save nothing. `routed_swiglu`
(capacity and dropless/blocked) runs a while-loop over only the row blocks that hold
tokens (count known at run time), with a hand-written backward that does the same, so
expert work and its per-row gathers/scatters shrink with the zero-expert share. What
stays fixed is O(M*d + N*d*I): the [M, d] accumulators and the weight-gradient buffers.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
F32 = jnp.float32


# ------------------------------------------------------------------ loop kernel
#
# Row layouts ("blocks" are what one loop iteration computes):
#   "blocked": row_slot [nb, bs]     one expert per block, block_expert[b]
#   "chunked": row_slot [N, nc, cb]  chunk j of every expert's buffer, batched over experts
# row_slot holds the flattened slot id s = m*K + k occupying each row; M*K marks a padding
# row (token M = an appended zero row, gate 0).
#
# Memory, not FLOPs, set the fixed cost of an earlier version: in a profile of the step,
# zero-filling, copying or concatenating each 16-20 MB temporary took 5-13 ms on this
# 2-core CPU (likely first-touch page faults; the same ops alone run in ~1 ms), which kept
# the 50%-zero step at ~0.7x the 0% step. So the kernel never materialises a worst-case
# [rows, d] buffer: each block gathers its token rows, and its gate-weighted outputs (and,
# backward, its input gradients) are scatter-added straight into [M+1, d] accumulators. The backward recomputes the gate/up
# projections rather than saving them in a worst-case residual buffer.


def _silu_parts(a: Array):
  a = a.astype(F32)
  sig = jax.nn.sigmoid(a)
  return a * sig, sig * (1.0 + a * (1.0 - sig))  # silu(a), silu'(a)


def _axis(mode: str) -> int:
  return 0 if mode == "blocked" else 1


def _block_weights(mode, ws, block_expert, b):
  if mode == "chunked":
    return ws
  e = block_expert[b]
  return tuple(lax.dynamic_index_in_dim(w, e, 0, keepdims=False) for w in ws)


def _pad_row(a: Array) -> Array:
  return jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)], axis=0)


def _block_inputs(mode, b, row_slot, x_pad, gate_pad, k):
  slots = lax.dynamic_index_in_dim(row_slot, b, _axis(mode), keepdims=False)  # [(N,) r]
  tok = slots // k  # padding slot M*K -> zero row M
  return slots, tok, x_pad[tok], gate_pad[slots]


def _mm(spec: str, a: Array, b: Array) -> Array:
  return jnp.einsum(spec, a, b, preferred_element_type=F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def routed_swiglu(mode: str, x: Array, gates: Array, row_slot: Array, block_expert: Array,
                  n_active: Array, wg: Array, wu: Array, wd: Array) -> Array:
  """y[m] = sum_k gates[m,k] * SwiGLU_{e(m,k)}(x[m]) over the slots that hold a row.

  x [M, d] (compute dtype), gates [M, K] f32, wg/wu [N, d, I], wd [N, I, d] (compute
  dtype). Only blocks < n_active are computed. Returns float32 [M, d].
  """
  m, k = gates.shape
  cdt = x.dtype
  x_pad, gate_pad = _pad_row(x), _pad_row(gates.reshape(-1))

  def body(b, y):
    _, tok, xb, g = _block_inputs(mode, b, row_slot, x_pad, gate_pad, k)
    w_g, w_u, w_d = _block_weights(mode, (wg, wu, wd), block_expert, b)
    silu, _ = _silu_parts(jnp.einsum("...rd,...di->...ri", xb, w_g))
    h = (silu * jnp.einsum("...rd,...di->...ri", xb, w_u).astype(F32)).astype(cdt)
    yb = g[..., None] * _mm("...ri,...id->...rd", h, w_d)
    return y.at[tok.reshape(-1)].add(yb.reshape(-1, yb.shape[-1]))

  y = lax.fori_loop(0, n_active, body, jnp.zeros((m + 1, x.shape[1]), F32))
  return y[:m]


def _routed_swiglu_fwd(mode, x, gates, row_slot, block_expert, n_active, wg, wu, wd):
  y = routed_swiglu(mode, x, gates, row_slot, block_expert, n_active, wg, wu, wd)
  return y, (x, gates, row_slot, block_expert, n_active, wg, wu, wd)


def _routed_swiglu_bwd(mode, saved, dy):
  x, gates, row_slot, block_expert, n_active, wg, wu, wd = saved
  m, k = gates.shape
  cdt = x.dtype
  x_pad, gate_pad = _pad_row(x), _pad_row(gates.reshape(-1))
  dy_pad = _pad_row(dy.astype(F32))
  # f32 accumulators: weight gradients sum over many blocks.
  init = (jnp.zeros(x_pad.shape, F32), jnp.zeros((m * k + 1,), F32),
          tuple(jnp.zeros(w.shape, F32) for w in (wg, wu, wd)))

  def body(b, carry):
    dx, dgate, dws = carry
    slots, tok, xb, g = _block_inputs(mode, b, row_slot, x_pad, gate_pad, k)
    w_g, w_u, w_d = _block_weights(mode, (wg, wu, wd), block_expert, b)
    a = jnp.einsum("...rd,...di->...ri", xb, w_g)
    up = jnp.einsum("...rd,...di->...ri", xb, w_u).astype(F32)
    silu, dsilu = _silu_parts(a)
    h = silu * up
    dyb = dy_pad[tok]
    dh_unit = _mm("...rd,...id->...ri", dyb.astype(cdt), w_d)  # d(loss)/dh at gate 1
    dgate = dgate.at[slots.reshape(-1)].set(jnp.sum(dh_unit * h, axis=-1).reshape(-1))
    dh = g[..., None] * dh_unit
    da, du = (dh * up * dsilu).astype(cdt), (dh * silu).astype(cdt)
    contrib = (_mm("...rd,...ri->...di", xb, da), _mm("...rd,...ri->...di", xb, du),
               _mm("...ri,...rd->...id", h.astype(cdt), (g[..., None] * dyb).astype(cdt)))
    if mode == "chunked":
      dws = tuple(acc + c for acc, c in zip(dws, contrib))
    else:
      e = block_expert[b]
      dws = tuple(lax.dynamic_update_index_in_dim(
          acc, lax.dynamic_index_in_dim(acc, e, 0, keepdims=False) + c, e, 0)
          for acc, c in zip(dws, contrib))
    dxb = _mm("...ri,...di->...rd", da, w_g) + _mm("...ri,...di->...rd", du, w_u)
    dx = dx.at[tok.reshape(-1)].add(dxb.reshape(-1, dxb.shape[-1]))
    return dx, dgate, dws

  dx, dgate, (dwg, dwu, dwd) = lax.fori_loop(0, n_active, body, init)
  return (dx[:m].astype(x.dtype), dgate[:m * k].reshape(m, k), None, None, None,
          dwg.astype(wg.dtype), dwu.astype(wu.dtype), dwd.astype(wd.dtype))


routed_swiglu.defvjp(_routed_swiglu_fwd, _routed_swiglu_bwd)


# ------------------------------------------------------------------ slot bookkeeping


def rank_within_key(key: Array, num_keys: int) -> tuple[Array, Array, Array]:
  """Group flattened slots by a key, keeping slot (token) order within each group.

  key [S] int32 in [0, num_keys]; key num_keys means "no group" (e.g. a zero-expert slot).
  Returns (counts [num_keys] int32: slots per key, the "no group" key excluded; rank [S]:
  each slot's position among the slots with the same key, in slot order; order [S]: the
  stable sort of the slots by key). The key is an expert id for the kernels here and a
  destination device for moe_expert_parallel's send buffer."""
  num = key.shape[0]
  order = jnp.argsort(key, stable=True)  # stable: keeps token order within an expert
  counts = jnp.zeros((num_keys + 1,), jnp.int32).at[key].add(1)
  starts = jnp.cumsum(counts) - counts
  rank_sorted = jnp.arange(num, dtype=jnp.int32) - starts[key[order]]
  rank = jnp.zeros((num,), jnp.int32).at[order].set(rank_sorted)
  return counts[:num_keys], rank, order


def _ffn_key(idx: Array, n_experts: int) -> Array:
  flat = idx.reshape(-1).astype(jnp.int32)
  return jnp.where(flat < n_experts, flat, n_experts)


def _row_slots(dest: Array, num_rows: int) -> Array:
  """Inverse of dest: the slot id held by each row, num_slots (= M*K) for padding rows."""
  num = dest.shape[0]
  return jnp.full((num_rows,), num, jnp.int32).at[dest].set(
      jnp.arange(num, dtype=jnp.int32), mode="drop")


def combine_slots(slot_out: Array, gates: Array) -> Array:
  """y[m] = sum_k gates[m,k] * slot_out[m*K + k] in float32: one output row per slot
  (slot_out [M*K, d], flattened token-major) weighted into its token (gates [M, K]).

  Unrolled over k on purpose: as an einsum this is a batch-M dot of [1,K]x[K,d], which
  XLA:CPU runs ~10x slower than the elementwise form once the gather is fused into it."""
  m, k = gates.shape
  so = slot_out.reshape(m, k, -1)
  return functools.reduce(lambda a, b: a + b,
                          (gates[:, j, None] * so[:, j].astype(F32) for j in range(k)))


def capacity_of(num_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
  """C = min(M, ceil(capacity_factor * M * K / N)); K counts all slots, zero ones included,
  so zero experts leave FFN experts more headroom. C <= M since a token picks an expert
  at most once."""
  return max(1, min(num_tokens, math.ceil(capacity_factor * num_tokens * top_k / n_experts)))


def pad_token_rows(x: Array, idx: Array, gates: Array, multiple: int,
                   n_experts: int) -> tuple[Array, Array, Array]:
  """Appends token rows until M divides by `multiple` (the number of shards the rows are split
  over); returns (x, idx, gates) padded, unchanged when M already divides.

  Padding rows route every slot to id N = n_experts (past the FFN experts, so no FFN expert)
  with gate 0: no kernel computes them, they add nothing, drop nothing, are never sent by an
  exchange and rank after every real slot. Callers cut the output back to y[:M]. Needed
  because shard_map splits rows evenly, and some inputs have fewer rows than shards (the
  [1, 2] dummy input of a sharded init)."""
  pad = -x.shape[0] % multiple
  if not pad:
    return x, idx, gates
  return (jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)]),
          jnp.concatenate([idx, jnp.full((pad, idx.shape[1]), n_experts, idx.dtype)]),
          jnp.concatenate([gates, jnp.zeros((pad, gates.shape[1]), gates.dtype)]))


# ------------------------------------------------------------------ dispatch paths


def dense_dispatch(x: Array, idx: Array, gates: Array, wg: Array, wu: Array,
                   wd: Array) -> tuple[Array, dict]:
  """Reference: every FFN expert on every token, combine masked by the routing weights."""
  m, _ = x.shape
  n = wg.shape[0]
  a = jnp.einsum("md,edi->emi", x, wg)
  up = jnp.einsum("md,edi->emi", x, wu)
  h = (jax.nn.silu(a.astype(F32)) * up.astype(F32)).astype(x.dtype)
  out = jnp.einsum("emi,eid->emd", h, wd)
  # one_hot of a zero-expert id (>= N) is all zeros, so those slots drop out here.
  w = jnp.einsum("mk,mke->me", gates, jax.nn.one_hot(idx, n, dtype=F32))
  y = jnp.einsum("me,emd->md", w, out.astype(F32))
  return y, {"dropped_slots": jnp.int32(0), "expert_rows": jnp.int32(m * n)}


def capacity_dispatch(x: Array, idx: Array, gates: Array, wg: Array, wu: Array, wd: Array, *,
                      capacity_factor: float, chunk: int, num_tokens: Optional[int] = None,
                      rank_offset: Optional[Array] = None) -> tuple[Array, dict]:
  """Per-expert buffers [N, C, d] filled in token order; overflow slots are dropped and
  counted. The buffer is processed in chunks of `chunk` rows of all N experts at once
  (batched [N, chunk, d] einsums); chunks past the fullest expert's fill are skipped at
  run time. Each chunk's gate-weighted outputs are scatter-added into the token outputs
  (the combine), so no [N, C, d] output buffer is materialised.

  Sharded use (its moe_kernels entry's shard_options, run inside moe_mesh.per_shard): `x`
  holds one shard's tokens of a batch of `num_tokens` tokens (C is computed from
  num_tokens), and `rank_offset` [N] counts each expert's FFN slots in the shards before
  this one (moe_mesh.rank_offsets), so a slot is kept iff its rank in the WHOLE batch is
  < C: exactly the single-device decisions."""
  m, k = idx.shape
  n = wg.shape[0]
  cap = capacity_of(m if num_tokens is None else num_tokens, k, n, capacity_factor)
  offset = jnp.zeros((n,), jnp.int32) if rank_offset is None else rank_offset.astype(jnp.int32)
  limit = jnp.clip(cap - offset, 0, cap)  # slots of each expert this shard may still keep
  local_cap = min(cap, m)  # a token picks an expert at most once
  cb = min(chunk, local_cap)
  nc = -(-local_cap // cb)
  cap_pad = nc * cb
  key = _ffn_key(idx, n)
  counts, rank, _ = rank_within_key(key, n)
  ffn = key < n
  kept = ffn & (rank < limit[jnp.minimum(key, n - 1)])
  dest = jnp.where(kept, key * cap_pad + rank, n * cap_pad)  # n*cap_pad: no row
  row_slot = _row_slots(dest, n * cap_pad).reshape(n, nc, cb)
  n_active = (jnp.max(jnp.minimum(counts, limit)) + cb - 1) // cb
  y = routed_swiglu("chunked", x, gates, row_slot, jnp.zeros((1,), jnp.int32), n_active,
                    wg, wu, wd)
  stats = {"dropped_slots": jnp.sum(ffn & ~kept).astype(jnp.int32),
           "expert_rows": (n_active * cb * n).astype(jnp.int32)}
  return y, stats


def expert_counts(idx: Array, n_experts: int) -> Array:
  """FFN slots per expert [N] int32 (zero-expert slots, idx >= N, not counted)."""
  return rank_within_key(_ffn_key(idx, n_experts), n_experts)[0]


def blocked_dispatch(x: Array, idx: Array, gates: Array, wg: Array, wu: Array, wd: Array, *,
                     block: int) -> tuple[Array, dict]:
  """Dropless: FFN slots sorted by expert, each expert's run padded to a multiple of
  `block` rows; one matmul per block with that block's expert weights. Sized for the
  worst case sum_e ceil(n_e / block) <= (M*K + N*(block-1)) // block blocks; only the
  blocks actually used are computed."""
  m, k = idx.shape
  n = wg.shape[0]
  nb_max = (m * k + n * (block - 1)) // block
  rows_max = nb_max * block
  key = _ffn_key(idx, n)
  counts, rank, _ = rank_within_key(key, n)
  blocks_per = (counts + block - 1) // block
  block_end = jnp.cumsum(blocks_per)
  first_row = (block_end - blocks_per) * block
  dest = jnp.where(key < n, first_row[jnp.minimum(key, n - 1)] + rank, rows_max)
  row_slot = _row_slots(dest, rows_max).reshape(nb_max, block)
  block_expert = jnp.searchsorted(block_end, jnp.arange(nb_max, dtype=jnp.int32), side="right")
  block_expert = jnp.minimum(block_expert, n - 1).astype(jnp.int32)
  n_active = block_end[-1]
  y = routed_swiglu("blocked", x, gates, row_slot, block_expert, n_active, wg, wu, wd)
  return y, {"dropped_slots": jnp.int32(0), "expert_rows": (n_active * block).astype(jnp.int32)}


def ragged_dispatch(x: Array, idx: Array, gates: Array, wg: Array, wu: Array,
                    wd: Array) -> tuple[Array, dict]:
  """Dropless via jax.lax.ragged_dot on expert-sorted slots (zero-expert slots sorted last,
  outside every group, with zeroed inputs). Meant for accelerators: XLA:CPU lowers
  ragged_dot to a masked dense dot over all groups."""
  m, k = idx.shape
  n = wg.shape[0]
  key = _ffn_key(idx, n)
  counts, _, order = rank_within_key(key, n)
  ffn_sorted = key[order] < n
  xs = _pad_row(x)[jnp.where(ffn_sorted, order // k, m)]
  a = lax.ragged_dot(xs, wg, counts)
  up = lax.ragged_dot(xs, wu, counts)
  h = (jax.nn.silu(a.astype(F32)) * up.astype(F32)).astype(x.dtype)
  ys = lax.ragged_dot(h, wd, counts)
  ys = jnp.where(ffn_sorted[:, None], ys, 0)  # rows past the groups are unspecified
  inv = jnp.zeros((m * k,), jnp.int32).at[order].set(jnp.arange(m * k, dtype=jnp.int32))
  y = combine_slots(jnp.take(ys, inv, axis=0), gates)
  return y, {"dropped_slots": jnp.int32(0), "expert_rows": jnp.sum(counts).astype(jnp.int32)}
