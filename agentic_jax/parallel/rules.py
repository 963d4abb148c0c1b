"""Logical-axis rules: which mesh axes each logical axis name is split over.

The models name every parameter dimension (`layers.param`: "embed", "heads", ...) and every
constrained activation dimension ("activation_batch", ...); they never name mesh axes. A
rules table maps each name to candidate mesh-axis assignments, tried in order:

    ("embed", ("fsdp",))           # shard over fsdp, else error
    ("q_lora", ("fsdp", None))     # shard over fsdp if that axis is free, else replicate
    ("activation_batch", (("data", "fsdp", "expert"),))   # one dim over three axes

Resolution of one array (`resolve`), like flax's but strict:
  * the table order is the priority: the array's names are resolved in the order in which
    the table lists them (so "embed" claims fsdp before "q_lora" can);
  * a candidate is taken if none of its mesh axes is already used by another dimension of
    the same array and the dimension divides evenly by the product of its axis sizes; mesh
    axes of size 1 are dropped first (splitting by 1 is no split);
  * a name missing from the table, or a dimension no candidate fits, is an error: silent
    replication of a 100 GB tensor is the failure this module exists to prevent.

Table entries for names no model uses are allowed (one table serves every family).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from agentic_jax.parallel.mesh import MESH_AXES

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = tuple[tuple[str, tuple[MeshAxes, ...]], ...]

BATCH_AXES = ("data", "fsdp", "expert")

DEFAULT_RULES: Rules = (
    # --- activations (models.layers.constrain, i.e. nn.with_logical_constraint)
    # The expert axis is a batch axis for everything but the experts themselves, otherwise
    # every non-MoE layer would be computed `expert` times over.
    ("activation_batch", (BATCH_AXES,)),
    ("activation_length", (None,)),
    ("activation_embed", (None,)),
    ("activation_heads", ("tensor",)),
    ("activation_mlp", ("tensor",)),
    ("activation_kv_lora", (None,)),
    ("activation_vocab", ("tensor",)),
    # --- parameters; earlier rows claim mesh axes first
    ("expert", ("expert",)),
    ("vocab", ("tensor",)),
    ("heads", ("tensor",)),
    # GQA K/V heads (layer_type "llama"): split like the query heads when they divide evenly,
    # else replicated (8 KV heads on a tensor axis of 16 are copied, as vLLM does).
    ("kv_heads", ("tensor", None)),
    ("mlp", ("tensor",)),
    ("expert_mlp", ("tensor",)),
    ("embed", ("fsdp",)),
    # Latent ranks: q_b_proj / kv_b_proj [rank, heads, dim] are sharded over fsdp on the rank;
    # in q_a_proj / kv_a_proj [embed, rank] embed already holds fsdp, so the rank replicates.
    ("q_lora", ("fsdp", None)),
    ("kv_lora", ("fsdp", None)),
    ("router_slots", (None,)),
    # MTP eh_proj [2d, d] input ([enorm(emb); hnorm(h)]): its output dim "embed" holds fsdp.
    ("mtp_concat", ("tensor", None)),
    ("qk_head_dim", (None,)),
    ("kv_head_dim", (None,)),
    ("v_head_dim", (None,)),
    ("head_dim", (None,)),  # GQA head dim
    ("norm", (None,)),
    ("layers", (None,)),  # scanned-layer axis (no pipeline parallelism)
)

# Pure data parallelism over every axis: nothing sharded but the batch (debugging, small models).
REPLICATED_RULES: Rules = tuple(
    (name, ((tuple(MESH_AXES),) if name == "activation_batch" else (None,)))
    for name, _ in DEFAULT_RULES)

RULE_TABLES: dict[str, Rules] = {"default": DEFAULT_RULES, "replicated": REPLICATED_RULES}


class ShardingRuleError(ValueError):
  """A logical name without a rule, or a dimension that no rule can shard."""


def get_rules(name: str = "default") -> Rules:
  if name not in RULE_TABLES:
    raise ShardingRuleError(f"unknown rules table {name!r}; known: {sorted(RULE_TABLES)}")
  return RULE_TABLES[name]


def _axes_tuple(candidate: MeshAxes) -> tuple[str, ...]:
  if candidate is None:
    return ()
  return (candidate,) if isinstance(candidate, str) else tuple(candidate)


def validate_rules(rules: Rules) -> dict[str, tuple[MeshAxes, ...]]:
  """The table as {name: candidates}; raises on duplicates, unknown mesh axes, bad shapes."""
  table: dict[str, tuple[MeshAxes, ...]] = {}
  for row in rules:
    if not (isinstance(row, tuple) and len(row) == 2 and isinstance(row[0], str)
            and isinstance(row[1], tuple) and row[1]):
      raise ShardingRuleError(f"rule {row!r}: expected (logical_name, (candidate, ...))")
    name, candidates = row
    if name in table:
      raise ShardingRuleError(f"rule for {name!r} given twice")
    for c in candidates:
      axes = _axes_tuple(c)
      bad = [a for a in axes if a not in MESH_AXES]
      if bad or len(set(axes)) != len(axes):
        raise ShardingRuleError(f"rule {name!r}: candidate {c!r} must name distinct mesh axes "
                                f"from {MESH_AXES}")
    table[name] = candidates
  return table


def _spec_leaves(tree: Any):
  return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, P))[0]


def path_str(path: Sequence[Any]) -> str:
  """('params', 'layers_0', 'mlp', ...) key path -> 'params/layers_0/mlp/...'."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def check_rules(axes_tree: Any, rules: Rules, *, extra_names: Iterable[str] = ()) -> None:
  """Raises ShardingRuleError listing every logical name in `axes_tree` (a tree of logical
  PartitionSpecs, e.g. `models.logical_axes(cfg)`) or in `extra_names` without a rule."""
  table = validate_rules(rules)
  missing: dict[str, list[str]] = {}
  for path, spec in _spec_leaves(axes_tree):
    for name in spec:
      if name is not None and name not in table:
        missing.setdefault(name, []).append(path_str(path))
  for name in extra_names:
    if name is not None and name not in table:
      missing.setdefault(name, []).append("<activation constraint>")
  if missing:
    lines = [f"  {name!r}: used by {', '.join(where[:3])}" + (" ..." if len(where) > 3 else "")
             for name, where in sorted(missing.items())]
    raise ShardingRuleError("logical axis names without a sharding rule (add them to the rules "
                            "table; use (None,) to replicate on purpose):\n" + "\n".join(lines))


def resolve(names: Sequence[Optional[str]], shape: Optional[Sequence[int]],
            sizes: Mapping[str, int], rules: Rules, *, where: str = "array") -> P:
  """Mesh-axis PartitionSpec of one array with logical `names` (see module docstring).

  `shape=None` skips the divisibility check (e.g. a batch spec before the batch size is known).
  """
  table = validate_rules(rules)
  names = tuple(names)
  if shape is not None and len(shape) != len(names):
    raise ShardingRuleError(f"{where}: {len(names)} logical names {names} for shape {tuple(shape)}")
  dup = {n for n in names if n is not None and names.count(n) > 1}
  if dup:
    raise ShardingRuleError(f"{where}: logical names {sorted(dup)} appear twice in {names}")
  unknown = [n for n in names if n is not None and n not in table]
  if unknown:
    raise ShardingRuleError(f"{where}: logical axis names {unknown} have no sharding rule")
  out: list[MeshAxes] = [None] * len(names)
  used: set[str] = set()
  order = sorted((i for i, n in enumerate(names) if n is not None),
                 key=lambda i: list(table).index(names[i]))
  for i in order:
    name = names[i]
    for candidate in table[name]:
      axes = tuple(a for a in _axes_tuple(candidate) if sizes.get(a, 1) > 1)
      if used.intersection(axes):
        continue
      split = math.prod(sizes[a] for a in axes)
      if shape is not None and shape[i] % split:
        continue
      out[i] = None if not axes else axes[0] if len(axes) == 1 else axes
      used.update(axes)
      break
    else:
      size = "?" if shape is None else shape[i]
      raise ShardingRuleError(
          f"{where}: dimension {i} ({name!r}, size {size}) fits none of its rules "
          f"{table[name]} on mesh {dict(sizes)} (mesh axis already used by another dimension, "
          f"or size not divisible); change the mesh or add a fallback such as None to the rule")
  return P(*out)


def flax_rules(rules: Rules, sizes: Mapping[str, int]) -> list[tuple[str, MeshAxes]]:
  """The table as flax `nn.logical_axis_rules` pairs (for the models' activation
  constraints), size-1 mesh axes dropped. Flax picks the first free candidate per name,
  as `resolve` does, but neither checks divisibility nor errors on unknown names: run
  `check_rules(..., extra_names=activation_names(cfg))` first."""
  pairs: list[tuple[str, MeshAxes]] = []
  for name, candidates in validate_rules(rules).items():
    for c in candidates:
      axes = tuple(a for a in _axes_tuple(c) if sizes.get(a, 1) > 1)
      pairs.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
  return pairs


def activation_names(cfg: Any) -> set[str]:
  """Every logical name the model passes to its activation constraints (`models.layers.constrain`,
  i.e. `nn.with_logical_constraint`), found by tracing one abstract forward pass; nothing is
  computed.

  How the names are collected: `constrain` is the models' one wrapper around flax's constraint
  and adds its names to the set of an enclosing `recording_constraint_names()` (a context
  variable), so model code must call `constrain`, never `nn.with_logical_constraint` directly.
  Chosen over (a) patching `nn.with_logical_constraint` with unittest.mock, which replaces a
  flax global for every thread of the process while the trace runs (a concurrent forward pass
  would be recorded or broken) and misses callers holding their own reference to the function;
  and (b) reading sharding_constraint ops from the jaxpr, which cannot find what this is for:
  without a rules context flax emits no constraint at all, and within one a name that has no
  rule becomes "replicated" and vanishes, while names without a rule are what
  `check_model_rules` must report."""
  from agentic_jax import models  # local: keeps this module importable without the models
  from agentic_jax.models import layers

  variables = models.abstract_variables(cfg)
  tokens = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  with layers.recording_constraint_names() as seen:
    jax.eval_shape(lambda v, t: models.build(cfg).apply(v, t), variables, tokens)
  return set(seen)


def check_model_rules(cfg: Any, rules: Rules, axes_tree: Any = None) -> None:
  """check_rules over the model's parameter names and its activation-constraint names."""
  from agentic_jax import models

  axes = models.logical_axes(cfg) if axes_tree is None else axes_tree
  check_rules(axes, rules, extra_names=sorted(activation_names(cfg)))
