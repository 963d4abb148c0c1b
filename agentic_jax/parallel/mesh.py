"""Device mesh from a config: axes `data`, `fsdp`, `tensor`, `expert` (always in this order).

    sizes = mesh_sizes({"data": -1, "fsdp": 2}, num_devices=8)   # {"data": 4, "fsdp": 2, ...}
    mesh = make_mesh(config.mesh)                                # jax.sharding.Mesh, Auto axes

Axis roles (see rules.py for the logical names mapped onto them):
  data    pure data parallelism: batch split, params replicated.
  fsdp    batch split AND params/optimizer state sharded (ZeRO-3 style, gathered per use).
  tensor  Megatron-style split of attention heads, FFN width and the vocabulary.
  expert  MoE experts split; for every other layer it is one more batch axis.
The order puts `tensor` and `expert` innermost, i.e. on the devices `jax.make_mesh` places
closest together (they carry the per-layer collectives).

A missing key means size 1; one key may be -1 ("all remaining devices"). Axes are built as
`AxisType.Auto` (jax 0.10 defaults to Explicit, which rejects with_sharding_constraint).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import jax

MESH_AXES = ("data", "fsdp", "tensor", "expert")


def _as_mapping(config: Any) -> Mapping[str, Any]:
  if config is None:
    return {}
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    return config.to_dict()
  if isinstance(config, Mapping):
    return config
  raise TypeError(f"mesh config must be a mapping or ConfigDict, got {type(config).__name__}")


def mesh_sizes(config: Any, num_devices: int, *, prefix: str = "mesh") -> dict[str, int]:
  """Resolves the sizes of all four axes; raises ValueError naming `{prefix}.{key}`."""
  values = dict(_as_mapping(config))
  unknown = sorted(set(values) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"{prefix}.{unknown[0]}: unknown mesh axis; the axes are {MESH_AXES}")
  sizes: dict[str, int] = {}
  fill: list[str] = []
  for name in MESH_AXES:
    v = values.get(name, 1)
    if isinstance(v, bool) or not isinstance(v, int):
      raise ValueError(f"{prefix}.{name}: mesh size must be an int, got {v!r}")
    if v == -1:
      fill.append(name)
    elif v < 1:
      raise ValueError(f"{prefix}.{name}: mesh size must be >= 1 or -1 (fill), got {v}")
    sizes[name] = v
  if len(fill) > 1:
    raise ValueError(f"{prefix}.{fill[1]}: only one mesh axis may be -1 "
                     f"(both {prefix}.{fill[0]} and {prefix}.{fill[1]} are)")
  fixed = math.prod(v for k, v in sizes.items() if k not in fill)
  if fill:
    key = fill[0]
    if num_devices % fixed:
      raise ValueError(f"{prefix}.{key}=-1 cannot fill the mesh: {num_devices} devices are not "
                       f"divisible by the product of the other axes ({_describe(sizes, fill)} = {fixed})")
    sizes[key] = num_devices // fixed
  elif fixed != num_devices:
    offending = [k for k in MESH_AXES if sizes[k] > 1] or ["data"]
    keys = ", ".join(f"{prefix}.{k}" for k in offending)
    raise ValueError(f"{keys}: mesh sizes {_describe(sizes, [])} = {fixed} do not match the "
                     f"{num_devices} devices; set one axis to -1 to fill")
  return sizes


def _describe(sizes: Mapping[str, int], skip: Sequence[str]) -> str:
  return " x ".join(f"{k}={v}" for k, v in sizes.items() if k not in skip)


def parse_mesh_spec(spec: str) -> dict[str, int]:
  """'data:8,fsdp:32,expert:16' -> {"data": 8, "fsdp": 32, "expert": 16} (CLI form)."""
  out: dict[str, int] = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, value = part.partition(":")
    if not sep:
      raise ValueError(f"--mesh: {part!r} is not NAME:SIZE (e.g. data:8,fsdp:32)")
    if name in out:
      raise ValueError(f"--mesh: axis {name!r} given twice")
    try:
      out[name] = int(value)
    except ValueError:
      raise ValueError(f"--mesh: size of {name!r} must be an int, got {value!r}") from None
  return out


def make_mesh(config: Any = None, devices: Optional[Sequence[Any]] = None,
              *, prefix: str = "mesh") -> jax.sharding.Mesh:
  """A Mesh over `devices` (default: all global devices) with Auto axis types."""
  devices = list(jax.devices()) if devices is None else list(devices)
  sizes = mesh_sizes(config, len(devices), prefix=prefix)
  shape = tuple(sizes[a] for a in MESH_AXES)
  # Positional: the first parameter was renamed axis_shapes -> axis_sizes in jax 0.11.1.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


def abstract_mesh(sizes: Mapping[str, int]) -> jax.sharding.AbstractMesh:
  """A device-less mesh of these sizes (planning / golden tables for meshes we do not have)."""
  full = {a: int(sizes.get(a, 1)) for a in MESH_AXES}
  return jax.sharding.AbstractMesh(tuple(full[a] for a in MESH_AXES), MESH_AXES,
                                   axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
