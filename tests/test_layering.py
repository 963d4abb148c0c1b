"""Import direction of agentic_jax's packages, read from the source with `ast` (no imports run):
every `import` / `from ... import` of an agentic_jax module, at module level or inside a function,
plus importlib.import_module("agentic_jax...") calls with a literal name.

The rule (README, "Imports flow one way"): launch -> rl -> train -> objectives, data, sampling,
parallel -> models, with rl -> envs -> data and envs -> sandbox. Checked here:
- models imports none of data/objectives/rl/train/parallel/sampling/envs/sandbox/convert;
- data imports none of rl/train/envs/objectives/sandbox;
- envs imports no rl/train; sandbox imports nothing from agentic_jax outside itself;
- objectives imports no rl/train; sampling, parallel and convert no rl/train/envs/sandbox;
- train imports no rl/envs/sandbox (README: `train` never imports `rl`), but for the known
  exceptions listed in KNOWN_EXCEPTIONS;
- fs (run files on disk or object storage) imports nothing of agentic_jax;
- inference (launch/generate.py, launch/eval.py) is imported by no other layer;
- nothing under agentic_jax imports launch, configs or tests.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "agentic_jax")
ALL_LAYERS = ("models", "data", "objectives", "rl", "train", "parallel", "sampling", "envs",
              "sandbox", "convert", "fs", "inference", "cli")

# layer -> layers it must not import
FORBIDDEN = {
    "models": set(ALL_LAYERS) - {"models"},
    "data": {"rl", "train", "envs", "objectives", "sandbox", "inference"},
    "envs": {"rl", "train", "inference"},
    "sandbox": set(ALL_LAYERS) - {"sandbox"},
    "objectives": {"rl", "train", "inference"},
    "sampling": {"rl", "train", "envs", "sandbox", "inference"},
    "parallel": {"rl", "train", "envs", "sandbox", "inference"},
    "convert": {"rl", "train", "envs", "sandbox", "inference"},
    "train": {"rl", "envs", "sandbox", "inference"},
    # inference (generate / eval of a checkpoint) sits beside rl, on top: nothing imports it
    "rl": {"inference"},
    "fs": set(ALL_LAYERS) - {"fs"},  # run files, local or remote: a leaf every layer may use
    "cli": set(ALL_LAYERS) - {"cli"},  # the launch scripts' one-line errors: absl only
}
OUTSIDE = ("launch", "configs", "tests")  # top-level packages nothing in agentic_jax may import

# (importing module, imported module) pairs that break the rule today and are left as they are.
# Each one is a deliberate, documented exception; a new violation fails the test, and an exception
# that no longer occurs fails it too (remove it from here).
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
  return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def is_package(path: str) -> bool:
  return os.path.basename(path) == "__init__.py"


def imported_modules(path: str, name: str | None = None) -> set[str]:
  """Every module name the file (module `name`, by default from its path) imports, relative
  imports resolved. For `from A import B`, both A and A.B are listed (B may be a submodule)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  here = (name or module_name(path)).split(".")
  package = here if is_package(path) else here[:-1]
  out: set[str] = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package[:len(package) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
      else:
        mod = node.module or ""
      out.add(mod)
      out.update(f"{mod}.{a.name}" for a in node.names if a.name != "*")
    elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)
          and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
      out.add(node.args[0].value)
  return out


def source_files() -> list[str]:
  files = []
  for d, dirs, names in os.walk(PKG):
    dirs[:] = sorted(x for x in dirs if not x.startswith((".", "__pycache__")))
    files += [os.path.join(d, n) for n in sorted(names) if n.endswith(".py")]
  return files


def layer_of(module: str) -> str | None:
  """agentic_jax.X[.…] -> X for the layers above; None for anything else."""
  parts = module.split(".")
  if len(parts) >= 2 and parts[0] == "agentic_jax" and parts[1] in ALL_LAYERS:
    return parts[1]
  return None


def violations() -> set[tuple[str, str]]:
  found = set()
  for path in source_files():
    me = module_name(path)
    mine = layer_of(me)
    for target in imported_modules(path):
      if target.split(".")[0] in OUTSIDE:
        found.add((me, target))
        continue
      theirs = layer_of(target)
      if mine and theirs and theirs in FORBIDDEN.get(mine, ()):
        found.add((me, target))
  return found


def test_the_walk_sees_the_package():
  names = {module_name(p) for p in source_files()}
  assert {"agentic_jax", "agentic_jax.models", "agentic_jax.sandbox", "agentic_jax.sandbox.run",
          "agentic_jax.envs.code", "agentic_jax.rl.loop"} <= names
  # imports inside functions count, `from agentic_jax import X` names agentic_jax.X
  code = os.path.join(PKG, "envs", "code.py")
  assert "agentic_jax.sandbox" in imported_modules(code)


@pytest.mark.parametrize("source,expected", [
    ("def f():\n  from agentic_jax.rl import loop\n", {"agentic_jax.rl", "agentic_jax.rl.loop"}),
    ("from . import limits\n", {"agentic_jax.sandbox", "agentic_jax.sandbox.limits"}),
    ("from ..rl.sandbox import run_python\n",
     {"agentic_jax.rl.sandbox", "agentic_jax.rl.sandbox.run_python"}),
    ("import importlib\nimportlib.import_module('agentic_jax.train.loop')\n",
     {"importlib", "agentic_jax.train.loop"}),
])
def test_imported_modules_reads_every_form(tmp_path, source, expected):
  path = tmp_path / "x.py"
  path.write_text(source)
  assert imported_modules(str(path), "agentic_jax.sandbox.x") == expected


def test_imports_flow_one_way():
  found = violations()
  new = sorted(found - KNOWN_EXCEPTIONS)
  assert not new, "imports against the layering rule (see this file's docstring):\n" + "\n".join(
      f"  {a} imports {b}" for a, b in new)
  gone = sorted(KNOWN_EXCEPTIONS - found)
  assert not gone, f"known exceptions that no longer occur (remove them): {gone}"


def test_envs_data_models_do_not_import_rl():
  for path in source_files():
    me = module_name(path)
    if layer_of(me) in ("envs", "data", "models", "sandbox"):
      rl = [t for t in imported_modules(path) if layer_of(t) == "rl"]
      assert not rl, f"{me} imports {rl}"


def test_old_sandbox_name_re_exports_the_package():
  from agentic_jax import sandbox  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import sandbox as old  # pylint: disable=import-outside-toplevel
  assert old.__all__ == sandbox.__all__
  assert all(getattr(old, k) is getattr(sandbox, k) for k in sandbox.__all__)
