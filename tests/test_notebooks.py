"""Every notebook runs top to bottom in a real kernel in its reduced mode (NOTEBOOK_QUICK=1), and
follows the convention of notebooks/README.md (the notebooks are documentation that must work).

A notebook is executed by nbclient in a fresh kernel of this interpreter (notebooks/_build.py:
execute), in a temporary working directory; a cell that raises fails the test with that cell's
traceback. Notebooks built from a source (notebooks/_src/NAME.py) must equal what it builds.
"""

import importlib.util
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _build_module():
  spec = importlib.util.spec_from_file_location("notebooks_build", ROOT / "notebooks" / "_build.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _cells(path):
  return json.loads(path.read_text())["cells"]


def _text(cell):
  return "".join(cell["source"])


def test_notebooks_exist():
  assert NOTEBOOKS, "notebooks/ should hold at least the quickstart"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_convention(path):
  """Cell 1: markdown title with the Colab badge of this notebook; cell 2: the install cell,
  which installs only when agentic_jax is not importable; cell 3: the parameters, QUICK read
  from NOTEBOOK_QUICK."""
  cells = _cells(path)
  assert len(cells) >= 3, f"{path.name}: fewer than the 3 cells every notebook starts with"
  title, install, params = cells[:3]
  assert title["cell_type"] == "markdown" and _text(title).startswith("# "), \
      f"{path.name}: cell 1 must be a markdown title ('# ...')"
  badge = re.search(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/main/"
                    r"notebooks/([^)\s]+\.ipynb)", _text(title))
  assert badge and badge.group(1) == path.name, \
      f"{path.name}: cell 1 must hold the Colab badge linking notebooks/{path.name}"
  src = _text(install)
  assert install["cell_type"] == "code" and 'find_spec("agentic_jax") is None' in src \
      and "pip" in src and "install" in src, \
      f"{path.name}: cell 2 must install the package only when find_spec('agentic_jax') is None"
  assert params["cell_type"] == "code" and "NOTEBOOK_QUICK" in _text(params) \
      and "QUICK" in _text(params).replace("NOTEBOOK_QUICK", ""), \
      f"{path.name}: cell 3 must be the parameter cell setting QUICK from NOTEBOOK_QUICK"


SOURCES = sorted(p.stem for p in (ROOT / "notebooks" / "_src").glob("*.py"))


def test_sources_exist():
  assert SOURCES, "notebooks/_src holds no source"


@pytest.mark.parametrize("name", SOURCES)
def test_fetched_configs_outlive_the_quick_modes_workdir_cleanup(name):
  # Outside a checkout (Colab) a notebook downloads configs/*.py; the quick mode deletes
  # WORKDIR after its runs, and flow_grpo read configs/recipe.py again after that: the
  # download must not go under WORKDIR (it failed in a fresh Python 3.12 venv).
  src = (ROOT / "notebooks" / "_src" / f"{name}.py").read_text()
  for line in src.splitlines():
    if re.match(r"\s*CONFIGS? = ", line) and "PKG_ROOT" not in line:
      assert "WORKDIR" not in line, f"{name}: {line.strip()}"


@pytest.mark.parametrize("name", SOURCES)
def test_built_notebook_matches_its_source(name):
  diffs = _build_module().check(name)
  assert not diffs, "\n".join(diffs) + f"\n(rebuild: python notebooks/_build.py {name})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  import nbformat  # pylint: disable=import-outside-toplevel
  nb = nbformat.read(path, as_version=4)
  assert any(c.cell_type == "code" for c in nb.cells), f"{path} has no code cells"
  _build_module().execute(nb, quick=True, cwd=str(tmp_path), timeout=600)
  # Every code cell ran (nbclient stops at the first error, which raises above).
  assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def test_execute_runs_this_python_in_quick_mode_and_reports_a_failing_cell(tmp_path):
  """The runner itself: the kernel is this interpreter, sees NOTEBOOK_QUICK=1 and runs in the
  given directory; a raising cell stops the run with its error (later cells do not run)."""
  import sys  # pylint: disable=import-outside-toplevel
  import nbclient  # pylint: disable=import-outside-toplevel
  import nbformat  # pylint: disable=import-outside-toplevel
  nb = nbformat.v4.new_notebook()
  nb.cells = [
      nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable, os.environ.get('NOTEBOOK_QUICK'), "
                                "os.getcwd())"),
      nbformat.v4.new_code_cell("raise ValueError('cell two fails')"),
      nbformat.v4.new_code_cell("print('never')"),
  ]
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="cell two fails"):
    _build_module().execute(nb, quick=True, cwd=str(tmp_path), timeout=120)
  out = "".join(o.get("text", "") for o in nb.cells[0].outputs)
  assert out.split() == [sys.executable, "1", str(tmp_path)]
  assert not nb.cells[2].get("execution_count")


def test_execute_shuts_its_kernel_down(tmp_path):
  """Each run's kernel exits when the run ends (CI runs every notebook in one process: a kernel
  left behind keeps its ~2 GB of JAX state until pytest exits)."""
  import nbformat  # pylint: disable=import-outside-toplevel
  import psutil  # pylint: disable=import-outside-toplevel
  nb = nbformat.v4.new_notebook()
  nb.cells = [nbformat.v4.new_code_cell("import os\nprint(os.getpid())")]
  before = {c.pid for c in psutil.Process().children(recursive=True)}
  _build_module().execute(nb, quick=True, cwd=str(tmp_path), timeout=120)
  pid = int(nb.cells[0].outputs[0]["text"].strip())
  assert pid not in before
  try:
    psutil.Process(pid).wait(timeout=30)
  except psutil.NoSuchProcess:
    pass
  assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, \
      f"kernel {pid} still running after execute() returned"
