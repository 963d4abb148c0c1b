"""How a single-shard MoE dispatch kernel runs under a device mesh: per token shard.

    y, stats = per_shard(cfg, fn, x, idx, gates, wg, wu, wd)   # fn: a moe_dispatch kernel

The dispatch table (moe_kernels.py) says, per kernel, how it runs under a mesh of > 1 device:
  "gspmd"      the kernel as is, partitioned by GSPMD like any einsum (dense: no loops);
  "per_shard"  `per_shard` below: inside jax.shard_map each device routes its own token rows
               through all the experts, so the expert axis is one more batch axis for them
               (capacity, dropless, and expert_parallel on a mesh without an expert axis);
  a function   the path's own mesh program (expert_parallel: moe_expert_parallel's all-to-all).
A new kernel with loops or data-dependent shapes wants "per_shard"; it needs no code here.

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
outputs over the axis that splits the experts' hidden width, and whatever the kernel's
`shard_options` gathers (capacity: a [shards, N] all-gather of per-expert counts).

Exactness: dropless is exact per shard. Capacity keeps a slot iff its rank among its
expert's slots in the WHOLE batch (token order) is below C computed from the whole batch:
each shard adds the counts of the shards before it to its local ranks (`rank_offsets`), so
the kept and dropped slots are the single-device ones.

Mesh axes come from the logical-axis rules in force while tracing (flax
`nn.logical_axis_rules`, set by parallel.jit_sharded): token rows are split like
"activation_batch", the experts' hidden width like "expert_mlp" (when that axis is not also a
token axis and divides it). Without rules the token axes are cfg.ep_token_axes. Expert
weights are otherwise whole on every device: use expert_parallel when they do not fit.
Token rows that do not divide over the shards (e.g. the [1, 2] dummy input of a sharded
init) are padded by moe_dispatch.pad_token_rows, then cut off.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from agentic_jax.models import moe_dispatch as md

if TYPE_CHECKING:
  from agentic_jax.models.config import ModelConfig

Array = jax.Array
# A kernel's per-shard hook: (idx, *, n_experts, num_tokens, row_axes) -> extra options.
ShardOptions = Callable[..., dict]


def multi_device() -> bool:
  """Whether a mesh of more than one device is being traced (the abstract mesh in force)."""
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and math.prod(mesh.shape.values()) > 1


def _ruled_axes(name: str, mesh: Any) -> tuple[str, ...]:
  """Mesh axes (size > 1) the rules in force map logical `name` to; () without rules."""
  entry = nn.logical_to_mesh_axes((name,))[0]
  axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)


def token_axes(cfg: "ModelConfig", mesh: Any) -> tuple[str, ...]:
  """Mesh axes (size > 1) the token rows are split over: the rules' "activation_batch",
  else (no rules in force) cfg.ep_token_axes."""
  axes = _ruled_axes("activation_batch", mesh)
  if not axes and not nn.logical_to_mesh_axes(("activation_batch",))[0]:
    axes = tuple(a for a in cfg.ep_token_axes if a in mesh.shape and mesh.shape[a] > 1)
  return axes


def rank_offsets(idx: Array, n_experts: int, row_axes: tuple[str, ...]) -> Optional[Array]:
  """Inside per_shard: FFN slots of each expert [N] int32 in the shards before this one along
  `row_axes` (token order), so a kernel can rank its slots within the whole batch; None
  without row axes (one shard holds the whole batch)."""
  if not row_axes:
    return None
  counts = lax.all_gather(md.expert_counts(idx, n_experts), row_axes)  # [shards, N]
  before = jnp.arange(counts.shape[0]) < lax.axis_index(row_axes)
  return jnp.sum(jnp.where(before[:, None], counts, 0), axis=0)


def per_shard(cfg: "ModelConfig", fn: Callable[..., tuple[Array, dict]], x: Array, idx: Array,
              gates: Array, wg: Array, wu: Array, wd: Array, *,
              shard_options: Optional[ShardOptions] = None) -> tuple[Array, dict]:
  """Runs kernel `fn(x, idx, gates, wg, wu, wd, **extra)` on each device's token rows inside
  jax.shard_map (see the module docstring); without a multi-device mesh, fn on all rows.

  `fn` carries its config options already (functools.partial); `shard_options`, if given, is
  called inside the shard_map body as shard_options(idx, n_experts=N, num_tokens=M,
  row_axes=...) and its dict is passed as `extra` (capacity: the whole-batch token count and
  rank offsets). Statistics are summed over the token shards."""
  if not multi_device():
    return fn(x, idx, gates, wg, wu, wd)
  mesh = jax.sharding.get_abstract_mesh()
  n, width = wg.shape[0], wg.shape[2]
  rows = token_axes(cfg, mesh)
  hidden = tuple(a for a in _ruled_axes("expert_mlp", mesh) if a not in rows)
  if hidden and width % math.prod(mesh.shape[a] for a in hidden):
    hidden = ()
  m = x.shape[0]
  x, idx, gates = md.pad_token_rows(x, idx, gates, math.prod(mesh.shape[a] for a in rows), n)
  row_spec = P(rows or None, None)
  h = hidden or None

  def body(x, idx, gates, wg, wu, wd):
    extra = {} if shard_options is None else shard_options(
        idx, n_experts=n, num_tokens=m, row_axes=rows)
    y, stats = fn(x, idx, gates, wg, wu, wd, **extra)
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
