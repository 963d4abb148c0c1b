"""Builds and runs the notebooks of notebooks/ (see notebooks/README.md for the convention).

    python notebooks/_build.py zero_experts              # notebooks/_src/zero_experts.py -> .ipynb
    python notebooks/_build.py zero_experts --execute    # and run it in full mode, keeping outputs
    python notebooks/_build.py zero_experts --execute --quick   # the reduced mode CI runs
    python notebooks/_build.py --check                   # every built notebook equals its source

A notebook's source is a plain Python file in "percent" format, notebooks/_src/NAME.py: cells are
separated by lines starting with `# %%`, and `# %% [markdown]` starts a markdown cell whose lines
are comments (`# ` stripped). The source starts with the title cell (markdown, `# Title` first)
and then the parameter cell; this script puts the Colab badge under the title and the install
cell between the two, so those two cells are written once, here, for every notebook.

`execute` is also what tests/test_notebooks.py runs every notebook with (nbclient, a real
kernel): a kernel spec written for the running interpreter into a temporary directory, so the
kernel is this Python whatever other kernel specs the machine has, and NOTEBOOK_QUICK=1 in the
kernel's environment for the reduced mode.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import sys
import tempfile
import time
from typing import Iterator, Optional

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE / "_src"

# PLACEHOLDER: the GitHub owner/name this repository is published under is not known here.
# The badge and the install cell of every notebook use it; change it here and rebuild
# (python notebooks/_build.py --all) once the repository has its public home.
REPO = "agentic-jax/agentic_jax"

KERNEL_NAME = "agentic-jax-notebooks"

INSTALL_CELL = f'''\
# Colab / a fresh runtime: install the package from the repository; skipped when it is importable.
REPO = "{REPO}"  # placeholder: the repository's GitHub owner/name (notebooks/_build.py)
import importlib.util, os, subprocess, sys
# Where the repository's files come from: GitHub, or a local clone / mirror for an offline runtime
# (AGENTIC_JAX_SOURCE=/path/to/clone: pip installs from it, RAW is file:// of it).
SOURCE = os.environ.get("AGENTIC_JAX_SOURCE", "")
RAW = f"file://{{os.path.abspath(SOURCE)}}" if SOURCE else f"https://raw.githubusercontent.com/{{REPO}}/main"
if importlib.util.find_spec("agentic_jax") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           SOURCE or f"git+https://github.com/{{REPO}}.git"])'''


def colab_badge(name: str) -> str:
  url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb"
  return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def parse_source(text: str) -> list[tuple[str, str]]:
  """(cell_type, source) pairs of a percent-format file."""
  cells: list[tuple[str, list[str]]] = []
  for line in text.splitlines():
    if line.startswith("# %%"):
      kind = "markdown" if "[markdown]" in line else "code"
      cells.append((kind, []))
    elif cells:
      cells[-1][1].append(line)
    elif line.strip():
      raise ValueError(f"text before the first '# %%' line: {line!r}")
  out = []
  for kind, lines in cells:
    if kind == "markdown":
      lines = [re.sub(r"^# ?", "", ln) if ln.startswith("#") else ln for ln in lines]
    out.append((kind, "\n".join(lines).strip("\n")))
  return out


def build(name: str) -> nbformat.NotebookNode:
  """The notebook of notebooks/_src/NAME.py, without outputs."""
  cells = parse_source((SRC / f"{name}.py").read_text())
  if len(cells) < 2 or cells[0][0] != "markdown" or not cells[0][1].startswith("# "):
    raise ValueError(f"_src/{name}.py must start with a markdown title cell ('# Title')")
  if cells[1][0] != "code" or "NOTEBOOK_QUICK" not in cells[1][1]:
    raise ValueError(f"_src/{name}.py: the second cell must be the parameter cell "
                     "(QUICK from the NOTEBOOK_QUICK environment variable)")
  title, _, rest = cells[0][1].partition("\n")
  nb = nbformat.v4.new_notebook()
  nb.cells.append(nbformat.v4.new_markdown_cell(
      f"{title}\n\n{colab_badge(name)}\n{rest}".rstrip("\n")))
  nb.cells.append(nbformat.v4.new_code_cell(INSTALL_CELL))
  for kind, source in cells[1:]:
    new = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
    nb.cells.append(new(source))
  nb.metadata = {
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
      "colab": {"provenance": []},
  }
  for i, cell in enumerate(nb.cells):  # stable ids: rebuilding gives the same file
    cell["id"] = f"{name[:20]}-{i}"
  return nb


@contextlib.contextmanager
def kernel_manager() -> Iterator[object]:
  """A KernelManager whose kernel is the running interpreter (a kernel spec written for
  sys.executable into a temporary directory and found only there)."""
  from ipykernel.kernelspec import write_kernel_spec  # pylint: disable=import-outside-toplevel
  from jupyter_client import KernelManager  # pylint: disable=import-outside-toplevel
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(prefix="nb-kernels-") as tmp:
    write_kernel_spec(os.path.join(tmp, KERNEL_NAME), overrides={"display_name": "Python 3"})
    ksm = KernelSpecManager(kernel_dirs=[tmp])
    spec = ksm.get_kernel_spec(KERNEL_NAME)
    if spec.argv[0] != sys.executable:
      raise RuntimeError(f"kernel spec runs {spec.argv[0]}, not {sys.executable}")
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    try:
      yield km
    finally:  # nbclient shuts down only kernels it created itself (owns_km); this one is ours
      if km.has_kernel:
        km.shutdown_kernel(now=True)


def execute(nb: nbformat.NotebookNode, *, quick: bool, cwd: Optional[str] = None,
            timeout: int = 900) -> nbformat.NotebookNode:
  """Runs every cell of `nb` in place in a fresh kernel (this interpreter) with NOTEBOOK_QUICK
  set to "1" (quick) or unset, in directory `cwd` (default: a temporary one). A cell that
  raises ends the run with nbclient's CellExecutionError, which carries the cell's traceback."""
  import nbclient  # pylint: disable=import-outside-toplevel
  env = dict(os.environ)
  env.pop("NOTEBOOK_QUICK", None)
  if quick:
    env["NOTEBOOK_QUICK"] = "1"
  with contextlib.ExitStack() as stack:
    if cwd is None:
      cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="nb-run-"))
    km = stack.enter_context(kernel_manager())
    client = nbclient.NotebookClient(nb, km=km, timeout=timeout, startup_timeout=120,
                                     resources={"metadata": {"path": cwd}})
    client.execute(env=env, cwd=cwd)
  return nb


def check(name: str) -> list[str]:
  """Differences between notebooks/NAME.ipynb's cells and what its source builds."""
  built = build(name)
  have = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
  diffs = []
  if len(have.cells) != len(built.cells):
    diffs.append(f"{name}.ipynb has {len(have.cells)} cells, its source builds {len(built.cells)}")
  for i, (a, b) in enumerate(zip(have.cells, built.cells)):
    if (a.cell_type, a.source) != (b.cell_type, b.source):
      diffs.append(f"{name}.ipynb cell {i} differs from _src/{name}.py")
  return diffs


def keep_outputs(nb: nbformat.NotebookNode, old: nbformat.NotebookNode) -> None:
  """Copies outputs, execution counts and cell metadata from `old` into `nb` cell by cell (same cells and types
  required, so a structural change cannot silently misplace results)."""
  if [c.cell_type for c in nb.cells] != [c.cell_type for c in old.cells]:
    raise ValueError("--keep_outputs: the source's cells no longer match the notebook's; "
                     "run it again (--execute)")
  for new, have in zip(nb.cells, old.cells):
    if new.cell_type == "code":
      new.outputs, new.execution_count = have.outputs, have.execution_count
      new.metadata = have.metadata  # the execution timestamps of that run
  if "language_info" in old.metadata:  # the kernel that ran it (its Python version)
    nb.metadata["language_info"] = old.metadata["language_info"]


def sources() -> list[str]:
  return sorted(p.stem for p in SRC.glob("*.py"))


def main(argv: Optional[list[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("names", nargs="*", help="notebooks to build (the stems of _src/*.py)")
  ap.add_argument("--all", action="store_true", help="every notebook with a source")
  ap.add_argument("--execute", action="store_true", help="run it and keep the outputs")
  ap.add_argument("--quick", action="store_true", help="with --execute: NOTEBOOK_QUICK=1")
  ap.add_argument("--check", action="store_true", help="compare built notebooks with sources")
  ap.add_argument("--keep_outputs", action="store_true",
                  help="rebuild keeping each cell's outputs from the committed notebook (only for "
                  "edits that cannot change what a cell prints, e.g. the install cell; anything "
                  "else needs --execute)")
  args = ap.parse_args(argv)
  names = sources() if args.all or (args.check and not args.names) else args.names
  if args.check:
    diffs = [d for n in names for d in check(n)]
    print("\n".join(diffs) or f"{len(names)} notebook(s) match their sources")
    return 1 if diffs else 0
  if not names:
    ap.error("name a notebook (or --all)")
  for name in names:
    nb = build(name)
    if args.keep_outputs:
      keep_outputs(nb, nbformat.read(HERE / f"{name}.ipynb", as_version=4))
    elif args.execute:
      t0 = time.perf_counter()
      execute(nb, quick=args.quick)
      print(f"{name}: executed ({'quick' if args.quick else 'full'} mode) in "
            f"{time.perf_counter() - t0:.0f} s")
    path = HERE / f"{name}.ipynb"
    nbformat.write(nb, path)
    print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size / 1024:.0f} KiB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
