"""The MoE dispatch table: every dispatch path is one entry here, and nothing else names them.

    y, stats = dispatch(cfg, x, idx, gates, wg, wu, wd)   # the MoE layer's one entry point

To add a dispatch path: write the kernel (the contract is in moe_dispatch's docstring:
`fn(x, idx, gates, wg, wu, wd, **options) -> (y float32 [M, d], {"dropped_slots",
"expert_rows"})`), register it here, then select it with `ModelConfig(moe_dispatch=name)`.
Registering is a line in the built-in table at the bottom of this file, or, in a fork or an
experiment, a call from your own module that runs before the config is built:

    moe_kernels.register_kernel("my_path", my_kernel, options=lambda cfg: {"block": 64})

ModelConfig validation accepts exactly the registered names (plus the older two-level
spelling below), `dispatch` picks the entry by name, and the entry says how the kernel runs
under a device mesh; no if-chain over names exists anywhere else.

An entry (`Kernel`):
  fn             the single-shard kernel.
  options        cfg -> the kernel's static keyword options (block size, capacity factor...).
  mesh           how it runs when a mesh of more than one device is being traced:
                   "per_shard"  (default) each device runs fn on its own token rows inside
                                jax.shard_map (moe_mesh.per_shard): right for any kernel
                                with loops or run-time sizes, and exact for any kernel whose
                                tokens do not interact;
                   "gspmd"      fn as is, partitioned by GSPMD (plain einsums only: dense);
                   a function   (cfg, x, idx, gates, wg, wu, wd) -> (y, stats), the path's
                                own mesh program (expert_parallel's all-to-all exchange).
  shard_options  per_shard only: (idx, *, n_experts, num_tokens, row_axes) -> extra options,
                 traced inside shard_map, for a kernel whose decisions depend on the other
                 shards' tokens (capacity ranks its slots within the whole batch).

Names are flat ("dropless_blocked", not "dropless" + a backend). Configs and checkpoints
written before the table spell the dropless kernels `moe_dispatch="dropless"` with
`dropless_backend` "blocked" | "ragged_dot"; ModelConfig.dispatch_kernel maps them to
"dropless_blocked" | "dropless_ragged", so both spellings run the same entry.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Callable, Optional, Union

import jax

from agentic_jax.models import moe_dispatch as md
from agentic_jax.models import moe_expert_parallel, moe_mesh

if TYPE_CHECKING:
  from agentic_jax.models.config import ModelConfig

Array = jax.Array
KernelFn = Callable[..., tuple[Array, dict]]
MeshProgram = Callable[..., tuple[Array, dict]]  # (cfg, x, idx, gates, wg, wu, wd)
MESH_MODES = ("per_shard", "gspmd")
# The older two-level spelling (ModelConfig.dispatch_kernel resolves it); no entry may take it.
RESERVED = ("dropless",)


def no_options(cfg: "ModelConfig") -> dict:
  """Options of a kernel that takes none from the config."""
  del cfg
  return {}


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One dispatch path (fields described in the module docstring)."""

  fn: KernelFn
  options: Callable[["ModelConfig"], dict] = no_options
  mesh: Union[str, MeshProgram] = "per_shard"
  shard_options: Optional[moe_mesh.ShardOptions] = None


KERNELS: dict[str, Kernel] = {}


def register_kernel(name: str, fn: KernelFn, *,
                    options: Callable[["ModelConfig"], dict] = no_options,
                    mesh: Union[str, MeshProgram] = "per_shard",
                    shard_options: Optional[moe_mesh.ShardOptions] = None,
                    replace: bool = False) -> Kernel:
  """Adds dispatch path `name` (selected by ModelConfig.moe_dispatch=name) and returns its
  entry. A name already taken is an error unless `replace=True`, so two modules cannot
  silently fight over one name."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"register_kernel: the name must be a non-empty string (got {name!r})")
  if name in RESERVED:
    raise ValueError(f"register_kernel: {name!r} is reserved for the older two-level config "
                     "spelling (moe_dispatch='dropless' + dropless_backend)")
  if name in KERNELS and not replace:
    raise ValueError(f"register_kernel: {name!r} is already registered (pass replace=True "
                     "to override it)")
  if not callable(fn):
    raise ValueError(f"register_kernel: the kernel of {name!r} is not callable")
  if not (mesh in MESH_MODES or callable(mesh)):
    raise ValueError(f"register_kernel: mesh of {name!r} must be one of {MESH_MODES} or a "
                     f"function (got {mesh!r})")
  if shard_options is not None and mesh != "per_shard":
    raise ValueError(f"register_kernel: shard_options of {name!r} needs mesh='per_shard'")
  KERNELS[name] = Kernel(fn, options, mesh, shard_options)
  return KERNELS[name]


def names() -> tuple[str, ...]:
  """The registered dispatch names, in registration order."""
  return tuple(KERNELS)


def kernel_of(cfg: "ModelConfig") -> Kernel:
  """The entry cfg selects (cfg.dispatch_kernel: moe_dispatch, or the dropless backend)."""
  name = cfg.dispatch_kernel
  if name not in KERNELS:  # validated when cfg was built, so the table changed since
    raise ValueError(f"ModelConfig.moe_dispatch: no dispatch kernel {name!r} is registered "
                     f"(registered: {names()})")
  return KERNELS[name]


def dispatch(cfg: "ModelConfig", x: Array, idx: Array, gates: Array, wg: Array, wu: Array,
             wd: Array) -> tuple[Array, dict]:
  """Runs cfg's kernel on the flattened tokens, under the mesh being traced if any (see the
  module docstring); same arguments and results as a moe_dispatch kernel."""
  kern = kernel_of(cfg)
  fn = functools.partial(kern.fn, **kern.options(cfg))
  if kern.mesh == "gspmd" or not moe_mesh.multi_device():
    return fn(x, idx, gates, wg, wu, wd)
  if kern.mesh == "per_shard":
    return moe_mesh.per_shard(cfg, fn, x, idx, gates, wg, wu, wd,
                              shard_options=kern.shard_options)
  return kern.mesh(cfg, x, idx, gates, wg, wu, wd)


# ------------------------------------------------------------------ built-in kernels


def block_options(cfg: "ModelConfig") -> dict:
  """The blocked kernel's row block: cfg.dropless_block_size."""
  return {"block": cfg.dropless_block_size}


def capacity_options(cfg: "ModelConfig") -> dict:
  """The capacity kernel's factor and chunk. One capacity iteration runs all N experts, so
  half a dropless block per expert still makes large GEMMs while halving the granularity at
  which empty chunks are skipped."""
  return {"capacity_factor": cfg.capacity_factor, "chunk": max(1, cfg.dropless_block_size // 2)}


def capacity_shard_options(idx: Array, *, n_experts: int, num_tokens: int,
                           row_axes: tuple[str, ...]) -> dict:
  """Per shard, capacity sizes C from the whole batch and ranks each slot within it, so the
  kept slots are the single-device ones (moe_dispatch.capacity_dispatch)."""
  return {"num_tokens": num_tokens,
          "rank_offset": moe_mesh.rank_offsets(idx, n_experts, row_axes)}


register_kernel("dense", md.dense_dispatch, mesh="gspmd")
register_kernel("capacity", md.capacity_dispatch, options=capacity_options,
                shard_options=capacity_shard_options)
register_kernel("dropless_blocked", md.blocked_dispatch, options=block_options)
register_kernel("dropless_ragged", md.ragged_dispatch)
# One device, or a mesh without an expert axis: the exact blocked kernel (what fn/options say
# here, and what expert_parallel_dispatch falls back to); otherwise the all-to-all exchange.
register_kernel("expert_parallel", md.blocked_dispatch, options=block_options,
                mesh=moe_expert_parallel.expert_parallel_dispatch)
