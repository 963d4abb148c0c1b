"""Shardings of model variables, batches and train state; sharded init; jit over a mesh.

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    variables = shard_init(cfg, jax.random.key(0), mesh)          # created already sharded
    forward = sharded_forward(cfg, mesh)                          # explicit in/out shardings
    logits = forward(variables, tokens)                           # tokens [B, T], B % 8 == 0

Params are never materialised unsharded: `shard_init` runs `jax.eval_shape` for shapes and
logical names, resolves each array's PartitionSpec with the rules table (rules.resolve) and
jits the initialiser with those `out_shardings`. With JAX's partitionable threefry (the
default since 0.5) the values equal an unsharded `models.init_variables` with the same key.

Everything works from axis sizes alone too (`variable_specs(cfg, {"fsdp": 32, ...})`), which
the memory planner and the golden sharding tables use for meshes this machine does not have.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from agentic_jax import models
from agentic_jax.parallel.mesh import MESH_AXES
from agentic_jax.parallel.rules import (
    DEFAULT_RULES, Rules, ShardingRuleError, check_model_rules, flax_rules, path_str, resolve)

MeshLike = Union[Mesh, jax.sharding.AbstractMesh, Mapping[str, int]]


def axis_sizes(mesh: MeshLike) -> dict[str, int]:
  """{axis: size} of a Mesh, AbstractMesh or plain mapping (missing axes = 1)."""
  if isinstance(mesh, Mapping):
    sizes = dict(mesh)
  else:
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return {**{a: 1 for a in MESH_AXES}, **sizes}


def _is_spec(x: Any) -> bool:
  return isinstance(x, P)


# ----------------------------------------------------------------- variables


def variable_specs(cfg: models.ModelConfig, mesh: MeshLike, rules: Rules = DEFAULT_RULES,
                   *, check: bool = True) -> dict:
  """Mesh-axis PartitionSpec of every variable ({"params": ..., "router_state": ...}).

  `check=True` also verifies that every activation-constraint name has a rule."""
  boxed = models.abstract_variables(cfg, boxed=True)
  logical = nn.get_partition_spec(boxed)
  shapes = nn.meta.unbox(boxed)
  if check:
    check_model_rules(cfg, rules, logical)
  sizes = axis_sizes(mesh)
  flat_logical, treedef = jax.tree_util.tree_flatten_with_path(logical, is_leaf=_is_spec)
  flat_shapes = treedef.flatten_up_to(shapes)
  specs = [resolve(tuple(spec), shape.shape, sizes, rules, where=path_str(path))
           for (path, spec), shape in zip(flat_logical, flat_shapes)]
  return jax.tree_util.tree_unflatten(treedef, specs)


def variable_shardings(cfg: models.ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), variable_specs(cfg, mesh, rules),
                      is_leaf=_is_spec)


def shard_init(cfg: models.ModelConfig, rng: jax.Array, mesh: Mesh,
               rules: Rules = DEFAULT_RULES) -> dict:
  """`models.init_variables(cfg, rng)`, created directly in its sharded layout."""
  shardings = variable_shardings(cfg, mesh, rules)
  init = jax.jit(lambda r: models.init_variables(cfg, r), out_shardings=shardings)
  with jax.set_mesh(mesh):
    return init(rng)


def shard_variables(variables: Any, cfg: models.ModelConfig, mesh: Mesh,
                    rules: Rules = DEFAULT_RULES) -> Any:
  """Places existing (e.g. converted or restored host) variables in the sharded layout."""
  return jax.device_put(variables, variable_shardings(cfg, mesh, rules))


# ------------------------------------------------------------------- batches


def batch_spec(mesh: MeshLike, rules: Rules = DEFAULT_RULES, *, ndim: int = 2,
               batch_size: Optional[int] = None) -> P:
  """Rows split like "activation_batch" (default: data x fsdp x expert), the rest whole.

  With `batch_size` the split is checked: a batch that does not divide raises."""
  spec = resolve(("activation_batch",), None if batch_size is None else (batch_size,),
                 axis_sizes(mesh), rules, where=f"batch of {batch_size} rows")
  return P(spec[0], *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, *, ndim: int = 2,
                   batch_size: Optional[int] = None) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(mesh, rules, ndim=ndim, batch_size=batch_size))


def batch_shards(mesh: MeshLike, rules: Rules = DEFAULT_RULES) -> int:
  """How many ways the batch rows are split (global batch must be a multiple)."""
  sizes = axis_sizes(mesh)
  axes = batch_spec(sizes, rules)[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return int(np.prod([sizes[a] for a in axes], dtype=np.int64))


def shard_batch(batch: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """device_put a (single-process) dict of [B, ...] host arrays in the batch layout."""
  def put(x):
    x = np.asarray(x)
    return jax.device_put(x, batch_sharding(mesh, rules, ndim=x.ndim, batch_size=x.shape[0]))
  return jax.tree.map(put, batch)


# ----------------------------------------------------------- other state


def specs_like_params(abstract_tree: Any, param_specs: Any, *, unmatched: str = "error",
                      replicate: Sequence[str] = ()) -> Any:
  """PartitionSpecs for a tree that embeds copies of the params (optimizer moments, grads,
  a TrainState): a leaf whose key path ENDS with a variable's path (collection name
  optional, e.g. `.opt_state[0].mu['layers_0']['mlp']...`) and whose rank fits gets that
  variable's spec (`param_specs`: PartitionSpecs or NamedShardings, e.g. the whole
  `variable_specs` tree); scalars and leaves whose path equals or ends with a `replicate`
  entry (e.g. "rng" of a TrainState) are replicated; any other leaf raises
  (`unmatched="replicate"` replicates all of them instead, e.g. factored second moments)."""
  if unmatched not in ("error", "replicate"):
    raise ValueError(f"unmatched must be 'error' or 'replicate', got {unmatched!r}")
  by_suffix: dict[tuple[str, ...], P] = {}
  leaves = jax.tree_util.tree_flatten_with_path(
      param_specs, is_leaf=lambda x: isinstance(x, (P, NamedSharding)))[0]
  for path, spec in leaves:
    spec = spec.spec if isinstance(spec, NamedSharding) else spec
    keys = tuple(path_str(path).split("/"))
    for start in (0, 1):  # with and without the collection name ("params")
      by_suffix.setdefault(keys[start:], spec)
  longest = max((len(k) for k in by_suffix), default=0)

  def pick(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    name = path_str(path)
    if not shape or any(name == r or name.endswith("/" + r) for r in replicate):
      return P()
    keys = tuple(name.split("/"))
    for n in range(min(longest, len(keys)), 0, -1):
      spec = by_suffix.get(keys[-n:])
      if spec is not None and len(spec) == len(shape):
        return spec
    if unmatched == "replicate":
      return P()
    raise ShardingRuleError(f"{path_str(path)}: shape {shape} matches no variable path; "
                            "pass unmatched='replicate' to replicate it")

  return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def shardings_like_params(abstract_tree: Any, param_specs: Any, mesh: Mesh, *,
                          unmatched: str = "error", replicate: Sequence[str] = ()) -> Any:
  """`specs_like_params` as NamedShardings on `mesh` (e.g. optimizer-state out_shardings);
  `param_specs` may hold PartitionSpecs or NamedShardings."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s),
                      specs_like_params(abstract_tree, param_specs, unmatched=unmatched,
                                        replicate=replicate),
                      is_leaf=_is_spec)


# ---------------------------------------------------------------- jit helpers


def jit_sharded(fn: Callable, mesh: Mesh, *, in_shardings: Any, out_shardings: Any,
                rules: Rules = DEFAULT_RULES, donate_argnums: Sequence[int] = (),
                static_argnums: Sequence[int] = ()) -> Callable:
  """jax.jit with explicit shardings that traces `fn` under the mesh and the flax logical
  rules, so the models' `nn.with_logical_constraint` calls become real constraints.

  (Outside a mesh context flax drops them silently; here they are always live.)"""
  pairs = flax_rules(rules, axis_sizes(mesh))

  @functools.wraps(fn)
  def under_rules(*args, **kwargs):
    with nn.logical_axis_rules(pairs):
      return fn(*args, **kwargs)

  jitted = jax.jit(under_rules, in_shardings=in_shardings, out_shardings=out_shardings,
                   donate_argnums=tuple(donate_argnums), static_argnums=tuple(static_argnums))

  @functools.wraps(fn)
  def call(*args, **kwargs):
    with jax.set_mesh(mesh):
      return jitted(*args, **kwargs)

  call.jitted = jitted  # for .lower(...) / cost analysis (call it under jax.set_mesh(mesh))
  return call


def logits_spec(mesh: MeshLike, rules: Rules = DEFAULT_RULES) -> P:
  return resolve(("activation_batch", "activation_length", "activation_vocab"), None,
                 axis_sizes(mesh), rules, where="logits")


def sharded_forward(cfg: models.ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Callable:
  """`fn(variables, tokens, segment_ids=None, positions=None) -> logits` jitted with explicit
  in/out shardings (variables as `variable_shardings`, [B, T] inputs as `batch_sharding`,
  logits split like activation_batch x activation_vocab)."""
  module = models.build(cfg)
  var_sh = variable_shardings(cfg, mesh, rules)
  row_sh = batch_sharding(mesh, rules)

  def forward(variables, tokens, segment_ids, positions):
    return module.apply(variables, tokens, segment_ids, positions)

  fn = jit_sharded(forward, mesh, in_shardings=(var_sh, row_sh, row_sh, row_sh),
                   out_shardings=NamedSharding(mesh, logits_spec(mesh, rules)), rules=rules)

  def call(variables, tokens, segment_ids=None, positions=None):
    tokens = np.asarray(tokens, np.int32) if not isinstance(tokens, jax.Array) else tokens
    batch, length = tokens.shape
    batch_spec(mesh, rules, batch_size=batch)  # clear error for an indivisible batch
    if segment_ids is None:  # one sample per row: same as the model's own default
      segment_ids = np.ones((batch, length), np.int32)
    if positions is None:
      positions = default_positions(np.asarray(segment_ids))
    return fn(variables, tokens, segment_ids, positions)

  return call


def default_positions(segment_ids: np.ndarray) -> np.ndarray:
  """Host-side twin of the model's default: 0.. per row, restarting at each new segment."""
  batch, length = segment_ids.shape
  idx = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
  starts = np.concatenate([np.ones((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  return (idx - np.maximum.accumulate(np.where(starts, idx, 0), axis=1)).astype(np.int32)


# --------------------------------------------------------------- accounting


def spec_split(spec: P, sizes: Mapping[str, int]) -> int:
  """Number of pieces an array with this spec is cut into (replicas not counted)."""
  n = 1
  for entry in spec:
    for a in (() if entry is None else (entry,) if isinstance(entry, str) else entry):
      n *= sizes[a]
  return n


def per_device_bytes(shapes: Any, specs: Any, mesh: MeshLike) -> int:
  """Bytes one device holds of `shapes` (arrays or ShapeDtypeStructs) sharded as `specs`
  (mesh-axis PartitionSpecs or NamedShardings), from shapes only. Every split is even
  (resolve rejects uneven ones), so this is exact."""
  sizes = axis_sizes(mesh)
  flat_specs = jax.tree_util.tree_leaves(
      specs, is_leaf=lambda x: isinstance(x, (P, NamedSharding)))
  flat_shapes = jax.tree_util.tree_leaves(shapes)
  if len(flat_specs) != len(flat_shapes):
    raise ValueError(f"{len(flat_shapes)} arrays but {len(flat_specs)} specs")
  total = 0
  for x, s in zip(flat_shapes, flat_specs):
    spec = s.spec if isinstance(s, NamedSharding) else s
    nbytes = int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
    total += nbytes // spec_split(spec, sizes)
  return total


def addressable_bytes(tree: Any, device: Any) -> int:
  """Sum of nbytes of the shards of `tree`'s arrays that live on `device` (measured)."""
  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    for shard in x.addressable_shards:
      if shard.device == device:
        total += shard.data.nbytes
  return total
