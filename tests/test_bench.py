"""The benchmark's --quick mode runs (on CPU, at tiny sizes) and prints every table, so it cannot rot."""

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMITTED = [ROOT / "benchmarks" / f"results.{suffix}" for suffix in ("md", "json", "png")]


def _digests() -> dict:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in COMMITTED if p.exists()}


def _rows(lines: list[str], first_cell: str) -> dict[str, str]:
  """The table lines whose first cell is ``first_cell``, by their second cell."""
  return {
    line.split("|")[2].strip(): line for line in lines if line.startswith(f"| {first_cell} |")
  }


def _moved(row: str, floor: int) -> tuple[float, float]:
  """(B / param moved, loops / leaf) of a step row, after its floor's cell."""
  cells = [c.strip() for c in row.split("|")]
  at = cells.index(str(floor))
  return float(cells[at + 1]), float(cells[at + 2])


def test_benchmark_quick_mode_prints_its_tables(tmp_path):
  before = _digests()
  out = tmp_path / "results"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  result = subprocess.run(
    [sys.executable, "benchmarks/bench.py", "--quick", "--repeats", "2", "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()

  # The header names the machine, the date and the versions.
  assert re.match(r"# Optimizer benchmarks: .+, \d{4}-\d{2}-\d{2}$", lines[0])
  assert "JAX backend cpu" in result.stdout and "jax 0." in result.stdout
  assert "optax 0." in result.stdout

  # The step table: both ratios, labelled; the JAX rows timed in turn and their floor.
  assert "× optax.adamw: ratio of medians" in result.stdout
  assert "× optax.adamw: median of paired per-round ratios (quartiles)" in result.stdout
  rows = _rows(lines, "tiny")
  assert {
    "optax.adamw",
    "adamwdl",
    "multi_transform",
    "triad a += s*b*c",
    "optax.adamw + multi-output fusion",
    "adamwdl, single_pass + multi-output fusion",
  } <= set(rows)
  for name in ("adamwdl", "multi_transform", "adamwdl, single_pass + multi-output fusion"):
    assert "not run" not in rows[name], rows[name]
    # ratio of medians, then the paired median with its quartiles
    assert re.search(r"\| \d+\.\d{3} \| \d+\.\d{3} \(\d+\.\d{3}–\d+\.\d{3}\) \|", rows[name])
  assert "| 2.0000 |" in rows["adamwdl"]  # state = 2x the parameters (+ scalars)
  # What the compiled step moves (B / param, XLA's cost analysis) in how many loops per leaf,
  # within bands (the exact counts are one XLA version's): float32 Adam reads p, g, m, v and
  # writes m, v in two loops and p in a third that reads m, v (28 B is the floor).
  assert _moved(rows["adamwdl"], 28) == (40.0, 3.0), rows["adamwdl"]
  single = _moved(rows["adamwdl, single_pass + multi-output fusion"], 28)
  assert 28.0 <= single[0] <= 32.0 and single[1] <= 1.5, single

  # bf16 parameters beside float32 adamwdl, from the same rounds: one loop more (the master,
  # then the bf16 parameter); its check of the parameters reads the first elements of each leaf
  # (on this tiny tree XLA's cost analysis counts each of those reads as a whole operand).
  bf16 = [line for line in lines if "multi_precision" in line and line.startswith("| tiny |")]
  assert len(bf16) == 1 and "| 6.0" in bf16[0], bf16  # master, m, v: 3x float32 for bf16
  moved, loops = _moved(bf16[0], 30)
  assert 44.0 <= moved <= 56.0 and 4.0 <= loops <= 7.0, bf16[0]
  assert any("bf16 params and state" in line and "| 14 |" in line for line in lines)
  assert "× adamwdl float32: ratio of medians" in result.stdout

  # Compile times, in turn, both ratios.
  compile_rows = [line for line in lines if line.startswith("| adamwdl | ")]
  assert len(compile_rows) == 1 and "not run" not in compile_rows[0]

  # The whole fine-tuning step in both patterns, each with its adamwdl / adamw ratios.
  jit_row = next(line for line in lines if line.startswith("| `jax.jit` of a pure step"))
  nnx_row = next(line for line in lines if line.startswith("| `nnx.jit` + `nnx.Optimizer"))
  for row in (jit_row, nnx_row):
    assert "not run" not in row
    assert re.search(r"\| \d+\.\d{4} \| \d+\.\d{3} \(\d+\.\d{3}–\d+\.\d{3}\) \|$", row), row
  assert any(line.startswith("| nnx.Optimizer pattern / jax.jit pattern") for line in lines)
  assert "- whole step, adamwdl / optax.adamw, jit pattern:" in result.stdout
  assert "- step, bf16 + multi_precision / float32 adamwdl: tiny " in result.stdout

  # Written where --out says, and the committed results are left alone.
  assert (tmp_path / "results.md").read_text().strip() == result.stdout.strip()
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["quick"] and {r["optimizer"] for r in saved["rows"]} >= {"optax.adamw", "adamwdl"}
  assert not [p.name for p in tmp_path.iterdir() if ".partial" in p.name]  # removed at the end
  assert _digests() == before
