"""The notebooks run top to bottom (and the benchmark's --quick mode runs), so neither can rot."""

import os
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_without_error(path):
  notebook = nbformat.read(path, as_version=4)
  assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
    "committed without outputs"
  )
  os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
  NotebookClient(
    notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
  ).execute()
  errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors


def test_notebooks_exist():
  assert {p.stem for p in NOTEBOOKS} == {"lr_curves", "why_layerwise_decay", "porting_from_paddle"}


def test_benchmark_quick_mode_prints_its_table(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "benchmarks/bench.py",
      "--quick",
      "--repeats",
      "2",
      "--out",
      str(tmp_path / "results"),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  rows = {line.split("|")[2].strip(): line for line in lines if line.startswith("| tiny |")}
  assert {"optax.adamw", "adamwdl", "multi_transform", "triad a += s*b*c"} <= set(rows)
  assert "not run" not in rows["adamwdl"]
  assert "| 2.0000 |" in rows["adamwdl"]  # state = 2x the parameters (+ scalars)
  assert re.search(r"\| \d\.\d{3} \(\d\.\d{3}–\d\.\d{3}\) \|", rows["adamwdl"])  # paired ratio
  compile_rows = [line for line in lines if line.startswith("| adamwdl |")]
  assert len(compile_rows) == 1 and "not run" not in compile_rows[0]
  assert (tmp_path / "results.md").read_text().strip() == result.stdout.strip()
