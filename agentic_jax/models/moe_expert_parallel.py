"""Expert-parallel MoE dispatch: experts split over a mesh axis, tokens exchanged by all-to-all.

Selected with `moe_dispatch="expert_parallel"`: its entry in the dispatch table
(moe_kernels.py) names `expert_parallel_dispatch` as its mesh program and the exact blocked
kernel as its single-device one. Inside a jit traced under a mesh
(`jax.set_mesh`) whose `cfg.expert_axis` has size ep > 1, the N FFN experts are split into ep
groups of N/ep, and each device runs, inside `jax.shard_map`:

  1. its local tokens' FFN slots (idx < N) are packed into a send buffer [ep, C, d], one
     block of C rows per destination device (the owner of the slot's expert), in slot
     order; C = min(m*K, ceil(capacity_factor * m*K / ep)) for m local tokens, and slots
     past C are dropped and counted (capacity_factor >= ep never drops);
  2. all_to_all over the expert axis: device j receives block j of every device;
  3. the received rows run through the local experts with the exact blocked kernel
     (moe_dispatch.blocked_dispatch; padding rows skipped at run time);
  4. all_to_all back, and each slot's output is gate-weighted into its token (float32).

Zero-computation expert slots (idx >= N) never enter the send buffer: the caller (MoE) adds
their g*x term locally, so they cost no communication. Tokens must be split over the expert
axis (it is a batch axis for every other layer; cfg.ep_token_axes lists the mesh axes the
token rows are split over, in order; rows that do not divide, e.g. the [1, 2] dummy input of
a sharded init, are padded by moe_dispatch.pad_token_rows and cut off after); expert weights
enter split over the expert axis only (other splits, e.g. FSDP, are gathered as for any
matmul). Without an expert axis of size > 1 the same function runs the exact blocked kernel:
on all rows without a mesh (single device, decoding outside a mesh), else per token shard
(moe_mesh.per_shard), as the dropless path would.

Decoding (sampling.py) traces the exchange inside `gathered_rows()`: its output rows are
then all-gathered over the token axes inside the shard_map and leave it replicated
(out_specs P()), since a decoder's activations are not laid out by the training rules and
GSPMD would otherwise move the split rows to whatever layout it picked for the next op by
replicating them the slow way ("Involuntary full rematerialization"). Same values, one
all-gather of [M, d] per MoE layer instead.

This module names mesh axes only through the config; it never imports agentic_jax.parallel.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import TYPE_CHECKING, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from agentic_jax.models import moe_dispatch as md
from agentic_jax.models import moe_mesh

if TYPE_CHECKING:
  from agentic_jax.models.config import ModelConfig

Array = jax.Array
F32 = jnp.float32
_GATHER_ROWS = contextvars.ContextVar("expert_parallel_gather_rows", default=False)


@contextlib.contextmanager
def gathered_rows() -> Iterator[None]:
  """Exchanges traced inside return their output rows replicated over the mesh (module
  docstring: for decoders); outside, split over the token axes as they came in."""
  token = _GATHER_ROWS.set(True)
  try:
    yield
  finally:
    _GATHER_ROWS.reset(token)


def send_capacity(num_tokens: int, top_k: int, ep: int, capacity_factor: float) -> int:
  """Rows per (source, destination) block: min(m*K, ceil(cf * m*K / ep))."""
  return max(1, min(num_tokens * top_k, math.ceil(capacity_factor * num_tokens * top_k / ep)))


def _local_exchange(x, idx, gates, wg, wu, wd, *, axis: str, ep: int, capacity_factor: float,
                    block: int, reduce_axes: tuple[str, ...], gather: bool = False):
  """shard_map body: one device's tokens x [m, d], idx/gates [m, K]; its experts [N/ep, ...]."""
  m, k = idx.shape
  d = x.shape[1]
  e_loc = wg.shape[0]
  n = e_loc * ep
  cap = send_capacity(m, k, ep, capacity_factor)
  flat = idx.reshape(-1)
  is_ffn = flat < n
  dest = jnp.where(is_ffn, flat // e_loc, ep)  # ep: not sent (zero expert)
  _, rank, _ = md.rank_within_key(dest, ep)  # slot order within each destination
  kept = is_ffn & (rank < cap)
  sink = ep * cap  # an extra row that nothing reads: dropped and zero-expert slots
  row = jnp.where(kept, dest * cap + rank, sink)
  token = jnp.arange(m * k, dtype=jnp.int32) // k
  send_x = jnp.zeros((sink + 1, d), x.dtype).at[row].set(x[token])[:sink]
  # Padding rows carry local expert id e_loc, which the local kernel treats as "no expert".
  send_e = jnp.full((sink + 1,), e_loc, jnp.int32).at[row].set(flat % e_loc)[:sink]

  recv_x = jax.lax.all_to_all(send_x, axis, 0, 0, tiled=True)  # block j <- device j
  recv_e = jax.lax.all_to_all(send_e, axis, 0, 0, tiled=True)
  ones = jnp.ones((sink, 1), F32)
  y_recv, local_stats = md.blocked_dispatch(recv_x, recv_e[:, None], ones, wg, wu, wd, block=block)
  y_back = jax.lax.all_to_all(y_recv, axis, 0, 0, tiled=True)  # [ep*cap, d] f32, my rows

  slot_out = jnp.concatenate([y_back, jnp.zeros((1, d), F32)], 0)[row]
  y = md.combine_slots(slot_out, gates)
  dropped = jnp.sum(is_ffn & ~kept).astype(jnp.int32)
  stats = {"dropped_slots": jax.lax.psum(dropped, reduce_axes),
           "expert_rows": jax.lax.psum(local_stats["expert_rows"], reduce_axes)}
  if gather:  # every device's rows, in the order P(reduce_axes) splits them
    y = jax.lax.all_gather(y, reduce_axes, axis=0, tiled=True)
  return y, stats


def expert_parallel_dispatch(cfg: "ModelConfig", x: Array, idx: Array, gates: Array, wg: Array,
                             wu: Array, wd: Array) -> tuple[Array, dict]:
  """Same contract as the moe_dispatch kernels, with the config first (module docstring)."""
  mesh = jax.sharding.get_abstract_mesh()
  axis = cfg.expert_axis
  if mesh.empty or axis not in mesh.axis_names or mesh.shape[axis] == 1:
    local = functools.partial(md.blocked_dispatch, block=cfg.dropless_block_size)
    return moe_mesh.per_shard(cfg, local, x, idx, gates, wg, wu, wd)
  ep = mesh.shape[axis]
  n = wg.shape[0]
  if n % ep:
    raise ValueError(f"ModelConfig.n_routed_experts: {n} experts do not split over the "
                     f"{ep} devices of mesh axis {axis!r}")
  token_axes = tuple(a for a in cfg.ep_token_axes if a in mesh.axis_names and mesh.shape[a] > 1)
  if axis not in token_axes:
    raise ValueError(f"ModelConfig.ep_token_axes: must include the expert axis {axis!r} "
                     f"(got {cfg.ep_token_axes})")
  splits = math.prod(mesh.shape[a] for a in token_axes)
  m = x.shape[0]
  x, idx, gates = md.pad_token_rows(x, idx, gates, splits, n)
  rows = P(token_axes, None)
  experts = P(axis, None, None)
  gather = _GATHER_ROWS.get()
  body = lambda *a: _local_exchange(*a, axis=axis, ep=ep, capacity_factor=cfg.capacity_factor,
                                    block=cfg.dropless_block_size, reduce_axes=token_axes,
                                    gather=gather)
  # check_vma=False: the blocked kernel's custom VJP and while loops carry no VMA types.
  y, stats = jax.shard_map(body, mesh=mesh, in_specs=(rows, rows, rows, experts, experts, experts),
                           out_specs=(P(None, None) if gather else rows,
                                      {"dropped_slots": P(), "expert_rows": P()}),
                           check_vma=False)(x, idx, gates, wg, wu, wd)
  return y[:m], stats
