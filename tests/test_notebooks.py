"""Every notebook's code cells run top to bottom (the notebooks are documentation that must work)."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
  cells = json.loads(path.read_text())["cells"]
  code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
  assert code, f"{path} has no code cells"
  namespace: dict = {}
  for i, src in enumerate(code):
    exec(compile(src, f"{path.name}[cell {i}]", "exec"), namespace)


def test_notebooks_exist():
  assert NOTEBOOKS, "notebooks/ should hold at least the quickstart"
