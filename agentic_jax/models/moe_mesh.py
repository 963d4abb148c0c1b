"""How each MoE dispatch path runs under a device mesh (the MoE layer's entry point).

    y, stats = dispatch(cfg, x, idx, gates, wg, wu, wd)   # same contract as moe_dispatch

  dense            partitioned by GSPMD like any einsum (no loops, nothing to do here);
  expert_parallel  all-to-all over the expert axis (moe_expert_parallel);
  capacity,        the single-shard kernels of moe_dispatch, run PER SHARD inside
  dropless         jax.shard_map: each device routes its own token rows through all the
                   experts, so the expert axis is one more batch axis for them (also
                   expert_parallel on a mesh without an expert axis: its exact blocked kernel).

Why per shard: the capacity/dropless kernels are while loops over row blocks whose count is
known only at run time. Partitioned by GSPMD, their bodies index expert weights and token
rows that live on other devices, so every iteration carries all-gathers, all-reduces and
collective-permutes (measured: 6 per iteration on an fsdp2 x tensor2 x expert2 mesh). On
XLA:CPU a while loop whose body blocks in a collective holds a thread of the intra-op pool,
which is only as large as the number of devices; when several such loops and the other
devices' collectives need threads at once the pool runs dry and the in-process rendezvous
aborts the process after 40 s ("Expected 4 threads to join the rendezvous, but only 3 of
them arrived"), more often when another process competes for the cores. On accelerators the
same program pays collective latency per loop iteration. Per shard, the only collectives are
outside the loops: the expert weights gathered once before it, one psum of the partial
outputs over the axis that splits the experts' hidden width, and, for capacity, a
[shards, N] all-gather of per-expert counts.

Exactness: dropless is exact per shard. Capacity keeps a slot iff its rank among its
expert's slots in the WHOLE batch (token order) is below C computed from the whole batch:
each shard adds the counts of the shards before it to its local ranks, so the kept and
dropped slots are the single-device ones.

Mesh axes come from the logical-axis rules in force while tracing (flax
`nn.logical_axis_rules`, set by parallel.jit_sharded): token rows are split like
"activation_batch", the experts' hidden width like "expert_mlp" (when that axis is not also a
token axis and divides it). Without rules the token axes are cfg.ep_token_axes. Expert
weights are otherwise whole on every device: use expert_parallel when they do not fit.
Token rows that do not divide over the shards (e.g. the [1, 2] dummy input of a sharded
init) are padded with rows routed to no FFN expert, then cut off.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from agentic_jax.models import moe_dispatch as md
from agentic_jax.models import moe_expert_parallel

if TYPE_CHECKING:
  from agentic_jax.models.config import ModelConfig

Array = jax.Array


def dispatch(cfg: "ModelConfig", x: Array, idx: Array, gates: Array, wg: Array, wu: Array,
             wd: Array) -> tuple[Array, dict]:
  """cfg.moe_dispatch under the mesh being traced (if any); see the module docstring."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return md.dispatch(cfg, x, idx, gates, wg, wu, wd)
  if cfg.moe_dispatch == "expert_parallel" and mesh.shape.get(cfg.expert_axis, 1) > 1:
    return moe_expert_parallel.expert_parallel_dispatch(cfg, x, idx, gates, wg, wu, wd)
  if cfg.moe_dispatch == "dense":
    return md.dispatch(cfg, x, idx, gates, wg, wu, wd)
  return _per_shard(cfg, mesh, x, idx, gates, wg, wu, wd)


def _ruled_axes(name: str, mesh: Any) -> tuple[str, ...]:
  """Mesh axes (size > 1) the rules in force map logical `name` to; () without rules."""
  entry = nn.logical_to_mesh_axes((name,))[0]
  axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)


def token_axes(cfg: "ModelConfig", mesh: Any) -> tuple[str, ...]:
  axes = _ruled_axes("activation_batch", mesh)
  if not axes and not nn.logical_to_mesh_axes(("activation_batch",))[0]:
    axes = tuple(a for a in cfg.ep_token_axes if a in mesh.shape and mesh.shape[a] > 1)
  return axes


def _per_shard(cfg, mesh, x, idx, gates, wg, wu, wd):
  n, width = wg.shape[0], wg.shape[2]
  rows = token_axes(cfg, mesh)
  hidden = tuple(a for a in _ruled_axes("expert_mlp", mesh) if a not in rows)
  if hidden and width % math.prod(mesh.shape[a] for a in hidden):
    hidden = ()
  shards = math.prod(mesh.shape[a] for a in rows)
  m = x.shape[0]
  pad = -m % shards
  if pad:  # rows routed to slot N (no FFN expert) with gate 0: they add and drop nothing
    x = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)])
    idx = jnp.concatenate([idx, jnp.full((pad, idx.shape[1]), n, idx.dtype)])
    gates = jnp.concatenate([gates, jnp.zeros((pad, gates.shape[1]), gates.dtype)])
  row_spec = P(rows or None, None)
  h = hidden or None
  capacity = cfg.moe_dispatch == "capacity"

  def body(x, idx, gates, wg, wu, wd):
    if capacity:
      offset = None
      if rows:  # FFN slots of each expert in the shards before this one (token order)
        counts = lax.all_gather(md.expert_counts(idx, n), rows)  # [shards, N]
        before = jnp.arange(shards) < lax.axis_index(rows)
        offset = jnp.sum(jnp.where(before[:, None], counts, 0), axis=0)
      y, stats = md.capacity_dispatch(x, idx, gates, wg, wu, wd, num_tokens=m,
                                      rank_offset=offset, **md.capacity_options(cfg))
    else:
      y, stats = md.dispatch(cfg, x, idx, gates, wg, wu, wd)
    if hidden:  # each device computed its slice of every expert's hidden width
      y = lax.psum(y, hidden)
    if rows:
      stats = {k: lax.psum(v, rows) for k, v in stats.items()}
    return y, stats

  # check_vma=False: the kernels' custom VJP and while loops carry no VMA types. Without
  # them shard_map's transpose divides an unmapped output's cotangent by the axis size and
  # psums unmapped inputs' cotangents, so the hidden-axis psum and the replicated weights
  # get exact gradients (tests/test_moe_mesh.py checks them against one device).
  y, stats = jax.shard_map(
      body, mesh=mesh,
      in_specs=(row_spec, row_spec, row_spec, P(None, None, h), P(None, None, h), P(None, h, None)),
      out_specs=(row_spec, {"dropped_slots": P(), "expert_rows": P()}),
      check_vma=False)(x, idx, gates, wg, wu, wd)
  return y[:m], stats
