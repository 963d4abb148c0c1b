"""Golden sharding tables: variable path -> PartitionSpec, per preset and mesh, checked in.

    python -m agentic_jax.parallel.golden --golden_dir=tests/golden/sharding --check
    python -m agentic_jax.parallel.golden --golden_dir=tests/golden/sharding --write

(--check compares, --write regenerates after an intended change.) The library does not know
where the tables are checked in: every function that reads or writes them takes the directory.

Each file `<preset>__<mesh>.json` maps every variable path (plus `<batch>` and `<logits>`)
to its resolved PartitionSpec under the default rules, so any change in sharding, from the
rules or from a model's logical names, shows up as a reviewable diff. Tables come from
shapes alone (no devices), so the full-size presets are covered on production meshes too.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import pathlib
import sys
from typing import Mapping, Optional, Union

import jax
from jax.sharding import PartitionSpec as P

from agentic_jax import models
from agentic_jax.parallel.mesh import MESH_AXES
from agentic_jax.parallel.rules import DEFAULT_RULES, Rules, path_str
from agentic_jax.parallel.sharding import axis_sizes, batch_spec, logits_spec, variable_specs

PathLike = Union[str, os.PathLike]

TINY_MESHES = ({"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 2, "expert": 4})
CASES: tuple[tuple[str, dict[str, int]], ...] = (
    *((p, m) for p in ("longcat_flash_tiny", "deepseek_v3_tiny", "youtu_llm_tiny")
      for m in TINY_MESHES),
    ("longcat_flash", {"data": 8, "fsdp": 32, "expert": 16}),
    ("deepseek_v3", {"fsdp": 64, "tensor": 4, "expert": 16}),
    ("youtu_llm", {"data": 4, "fsdp": 16, "tensor": 4}),
)


def mesh_name(sizes: Mapping[str, int]) -> str:
  """{"data": 2, "fsdp": 2, "tensor": 2} -> 'data2_fsdp2_tensor2' (size-1 axes left out)."""
  full = axis_sizes(sizes)
  return "_".join(f"{a}{full[a]}" for a in MESH_AXES if full[a] > 1) or "single"


def spec_str(spec: P) -> str:
  """Stable text of a PartitionSpec: P(None, 'tensor', ('data', 'fsdp'))."""
  def entry(e):
    if e is None:
      return "None"
    if isinstance(e, str):
      return repr(e)
    return "(" + ", ".join(repr(a) for a in e) + ")"
  return "P(" + ", ".join(entry(e) for e in spec) + ")"


def table(preset: str, sizes: Mapping[str, int], rules: Rules = DEFAULT_RULES) -> dict[str, str]:
  cfg = models.presets.get(preset)
  specs = variable_specs(cfg, sizes, rules)
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
  out = {path_str(path): spec_str(spec) for path, spec in flat}
  out["<batch>"] = spec_str(batch_spec(sizes, rules))
  out["<logits>"] = spec_str(logits_spec(sizes, rules))
  return dict(sorted(out.items()))


def golden_path(preset: str, sizes: Mapping[str, int], golden_dir: PathLike) -> pathlib.Path:
  """The table file of (preset, mesh) under `golden_dir` (required: the library never assumes
  where the tables are checked in)."""
  return pathlib.Path(golden_dir) / f"{preset}__{mesh_name(sizes)}.json"


def dumps(t: Mapping[str, str]) -> str:
  return json.dumps(t, indent=1, sort_keys=True) + "\n"


def diff(preset: str, sizes: Mapping[str, int], golden_dir: PathLike) -> str:
  """'' when the table checked in under `golden_dir` equals the current one, else a unified
  diff."""
  path = golden_path(preset, sizes, golden_dir)
  want = path.read_text() if path.exists() else ""
  got = dumps(table(preset, sizes))
  if want == got:
    return ""
  return "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                      f"{path} (checked in)", "current"))


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--write", action="store_true", help="regenerate every golden table")
  mode.add_argument("--check", action="store_true", help="compare; exit 1 on any difference")
  parser.add_argument("--golden_dir", type=pathlib.Path, required=True,
                      help="directory of the checked-in tables (this repo: tests/golden/sharding)")
  args = parser.parse_args(argv)
  bad = 0
  for preset, sizes in CASES:
    path = golden_path(preset, sizes, args.golden_dir)
    if args.write:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(dumps(table(preset, sizes)))
      print(f"wrote {path}")
    else:
      d = diff(preset, sizes, args.golden_dir)
      if d:
        bad += 1
        print(d)
  if args.check:
    print(f"{len(CASES) - bad}/{len(CASES)} golden sharding tables match")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
