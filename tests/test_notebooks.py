"""The notebooks run top to bottom, so they cannot rot (the benchmark's --quick mode: test_bench.py)."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_without_error(path):
  notebook = nbformat.read(path, as_version=4)
  assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
    "committed without outputs"
  )
  os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
  os.environ["NOTEBOOK_QUICK"] = "1"  # a shorter experiment where a notebook offers one
  NotebookClient(
    notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
  ).execute()
  errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors


def test_notebooks_exist():
  assert {p.stem for p in NOTEBOOKS} == {
    "lr_curves",
    "why_layerwise_decay",
    "porting_from_paddle",
    "finetune_experiment",
  }
