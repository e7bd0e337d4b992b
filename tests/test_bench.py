"""The benchmark (benchmarks/adamwdl_bench): its structure, its arithmetic, and its --quick run.

What is asserted is structure and sanity: table headers and row names, ratios computed from known
times, and the bytes a compiled step moves within bands (the exact counts are one XLA version's).
"""

import ast
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from optax_adamwdl import demo
from tests import reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
COMMITTED = [BENCH / f"results.{suffix}" for suffix in ("md", "json", "png")]
sys.path.insert(0, str(BENCH))  # the package beside benchmarks/bench.py

from adamwdl_bench import jax_steps, problems, report, step, train_step, workers  # noqa: E402
from adamwdl_bench.precision import bf16_rows  # noqa: E402
from adamwdl_bench.timing import in_turn  # noqa: E402

OPTIONAL = {"torch", "paddle", "matplotlib", "matplotlib.pyplot"}  # imported where they are used


def _code_lines(source: list[str], node: ast.AST) -> int:
  """Lines of code in ``node``: not blank, not comments, not its docstring."""
  skip = set()
  if ast.get_docstring(node) is not None:
    skip = set(range(node.body[0].lineno, node.body[0].end_lineno + 1))
  lines = range(node.lineno, node.end_lineno + 1)
  return sum(1 for i in lines if i not in skip and source[i - 1].strip()[:1] not in ("", "#"))


def test_the_benchmark_is_a_package_of_small_modules_and_functions():
  modules = sorted((BENCH / "adamwdl_bench").glob("*.py"))
  assert {p.stem for p in modules} >= {"problems", "workers", "timing", "report", "step", "cli"}
  assert len((BENCH / "bench.py").read_text().splitlines()) <= 20  # a thin entry point
  for path in modules:
    text = path.read_text()
    assert len(text.splitlines()) <= 300, path.name
    tree, source = ast.parse(text), text.splitlines()
    for node in ast.walk(tree):
      if isinstance(node, ast.FunctionDef):
        assert _code_lines(source, node) <= 60, f"{path.name}: {node.name}"
        for inner in ast.walk(node):  # imports at the top, but for the optional dependencies
          if isinstance(inner, ast.Import):
            assert {a.name for a in inner.names} <= OPTIONAL, f"{path.name}: {node.name}"
          assert not isinstance(inner, ast.ImportFrom), f"{path.name}: {node.name}"


def test_bert_shapes_are_bert_sized_and_generalize_the_tests_tree():
  assert 108e6 < problems.n_params("bert-base") < 111e6
  assert 333e6 < problems.n_params("bert-large") < 337e6
  assert 1.2e9 < problems.n_params("1.3b") < 1.4e9
  small = problems.bert_shapes(3, 8, 30, 16, ffn=2, classes=3)
  assert list(small.items()) == list(reference.bert_paddle_names(3).items())


def test_one_weight_decay_rule_for_the_trees_the_demo_and_torch_and_paddle():
  names = problems.bert_shapes(**problems.TREES["tiny"])
  decayed = {k for k in names if problems.decays(k)}
  assert decayed and all(not k.endswith("bias") and "norm" not in k for k in decayed)
  assert "encoder.layers.0.linear1.weight" in decayed
  mask = problems.decay_mask({k: 0.0 for k in names})
  assert mask == {k: k in decayed for k in names}
  demo = ["layers.0.attention_norm.scale", "final_norm.bias", "head.kernel", "embeddings.embedding"]
  assert [problems.decays(k) for k in demo] == [False, False, True, True]


def test_the_whole_step_is_the_demos_own_train_step():
  assert train_step.make_train_step is demo.make_train_step


def test_a_compiled_step_moves_bytes_per_parameter_within_a_band():
  params, grads = problems.jax_problem("tiny")
  infos = {
    label: jax_steps.jax_stepper(label, "tiny", params, grads).info
    for label in ("optax.adamw", "adamwdl", "adamwdl, bf16 + multi_precision")
  }
  for label in ("optax.adamw", "adamwdl"):  # float32 Adam: 28 B is the floor, 3 loops XLA's default
    info = infos[label]
    assert 28.0 <= info["moved_per_param"] <= 48.0 and 1.0 <= info["loops_per_leaf"] <= 4.0, info
    assert info["state_bytes"] == 2 * info["param_bytes"] and info["state_scalars"] <= 2, info
  adamw, dl = infos["optax.adamw"], infos["adamwdl"]
  assert dl["moved_per_param"] <= 1.1 * adamw["moved_per_param"]  # the ratios cost no traffic
  bf16 = infos["adamwdl, bf16 + multi_precision"]  # bf16 p, g; float32 master, m, v: 30 B
  assert 30.0 <= bf16["moved_per_param"] <= 60.0 and 1.0 <= bf16["loops_per_leaf"] <= 8.0, bf16
  assert 6.0 <= bf16["state_bytes"] / bf16["param_bytes"] < 6.1, bf16


def _result(device: bool = False) -> dict:
  """A tree's results as ``step.run_tree`` returns them, with known times: adamwdl is 2x adamw."""
  n, base = problems.n_params("tiny"), [1.0, 1.2, 0.9, 1.1, 1.0]
  info = dict(n=n, bytes_per_param=28, param_bytes=4 * n, state_bytes=8 * n, state_scalars=1)
  info |= dict(moved_per_param=40.0, loops_per_leaf=3.0, per_call=1, per_device=3 * device)
  calls = {"triad": [0.5 * t for t in base], "optax.adamw": base, "adamwdl": [2 * t for t in base]}
  calls["multi_transform"] = "RuntimeError: out of luck"
  devices = {k: [t / 10 for t in calls[k]] for k in ("optax.adamw", "adamwdl")} if device else {}
  devices |= {"copy": [0.01] * 5} if device else {}
  solo = {"torch fused": dict(seconds=0.5, n=n, bytes_per_param=28, peak_rss_mib=100.0)}
  solo["paddle AdamW"] = "ModuleNotFoundError: No module named 'paddle'"
  sessions = {"main": dict(calls=calls, devices=devices), "bf16": dict(calls={}, devices={})}
  infos = {"optax.adamw": info, "adamwdl": info}
  return dict(tree="tiny", n=n, sessions=sessions, infos=infos, memory={}, solo=solo)


def test_rows_compute_both_ratios_and_the_floors_from_the_rounds():
  rows = {r["optimizer"]: r for r in step.tree_rows(_result())}
  assert list(rows) == [
    "optax.adamw",
    "adamwdl",
    "multi_transform",
    "torch fused",
    "paddle AdamW",
    "triad a += s*b*c",
  ]
  dl = rows["adamwdl"]
  assert dl["ratio_medians_0"] == 2.0 and dl["ratio_paired_0"] == (2.0, 2.0, 2.0)
  assert dl["pct_triad"] == pytest.approx(100 * 28 / 16 * 0.5 / 2)  # paired with the triad
  assert dl["state_over_params"] == 2.0 and dl["step_ms"] == pytest.approx(2000.0)
  assert rows["torch fused"]["ratio_medians_0"] == 0.5 and "error" in rows["paddle AdamW"]
  assert rows["triad a += s*b*c"]["pct_triad"] == 100.0
  on_device = {r["optimizer"]: r for r in step.tree_rows(_result(device=True))}
  assert on_device["adamwdl"]["device_ratio_paired"] == (2.0, 2.0, 2.0)
  assert on_device["adamwdl"]["floor_ms"] == pytest.approx(1e3 * 28 / 8 * 0.01)
  assert on_device["device copy x -> x + 1"]["pct_floor"] == 100.0


def _results(device: bool = False) -> dict:
  result = _result(device)
  machine = dict(backend="cpu", device_time=device, device_name="a CPU", date="2026-01-01")
  machine |= dict(description="JAX backend cpu: a CPU", versions="jax 0.0")
  times = {f"{p}/{w}": [1.0, 1.1, 0.9] for p in train_step.PATTERNS for w in train_step.E2E_WHAT}
  e2e = dict(size="tiny", rounds=3, steps=1, times=times, n=50_000)
  return dict(
    machine=machine,
    quick=False,
    trees=[result],
    rows=step.tree_rows(result),
    bf16_rows=bf16_rows(result),
    rounds=5,
    repeats=3,
    device_steps=3,
    device_rounds=5,
    compiles={"optax.adamw": [1.0, 2.0], "adamwdl": [1.5, 3.0]},
    compile_tree="tiny",
    e2e=e2e | dict(rows=train_step.e2e_rows(times)),
  )


def test_the_page_has_every_table_with_its_headers_and_rows():
  page = report.format_results(_results()).splitlines()
  assert page[0] == "# Optimizer benchmarks: a CPU, 2026-01-01"
  header = next(line for line in page if line.startswith("| tree | optimizer | params (M) |"))
  for column in ("B / param moved (XLA)", "loops / leaf", "% of triad", "peak RSS (MiB)"):
    assert f"| {column} |" in header
  assert "| tiny | multi_transform | not run: RuntimeError: out of luck |" in "\n".join(page)
  assert "| adamwdl | 2.25 | 1.500 | 1.500 (1.500–1.500) |" in page  # compile: 1.5x, paired
  assert any(line.startswith("| `jax.jit` of a pure step") for line in page)
  assert any(line.startswith("| `nnx.jit` + `nnx.Optimizer") for line in page)
  assert "- step, adamwdl / optax.adamw (float32): tiny 2.000" in page
  assert "- compile, adamwdl / optax.adamw: 1.500 (1.500–1.500)" in page
  assert not any("bf16 parameters" in line for line in page)  # no bf16 session, no bf16 table
  on_device = report.format_results(_results(device=True))
  assert "| device time / step (ms) |" in on_device and "| % of floor |" in on_device
  assert "- device time, adamwdl / optax.adamw: tiny 2.000" in on_device


@pytest.mark.slow
def test_workers_answer_one_way_results_errors_and_times():
  error = workers.alone(jax_steps.jax_memory, "no such configuration", "tiny")
  assert error.startswith("KeyError: "), error  # the error, as the table prints it
  held = workers.Worker(jax_steps.optimizer_steppers, "tiny", ["triad", "adamwdl"], 0, 1)
  try:
    assert set(held.info) == {"triad", "adamwdl"} and held.info["adamwdl"]["per_call"] == 1
    times = in_turn([(held, k, k) for k in ("triad", "adamwdl")], rounds=3)
  finally:
    held.close()
  assert all(len(t) == 3 and min(t) > 0 for t in times.values()), times


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


def _quick(out: pathlib.Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  command = [sys.executable, "benchmarks/bench.py", "--quick", "--repeats", "2", "--out", str(out)]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_benchmark_quick_mode_prints_its_tables(tmp_path):
  before = _digests()
  result = _quick(tmp_path / "results")
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
  # within bands: float32 Adam reads p, g, m, v and writes m, v, p (28 B is the floor) in up to
  # three loops; adamwdl moves what optax.adamw moves; under multi-output fusion, single_pass
  # makes it one loop (the worker's XLA flag took effect).
  moved, loops = _moved(rows["adamwdl"], 28)
  assert 28.0 <= moved <= 48.0 and 1.0 <= loops <= 4.0, rows["adamwdl"]
  assert moved <= 1.1 * _moved(rows["optax.adamw"], 28)[0], rows["optax.adamw"]
  single = _moved(rows["adamwdl, single_pass + multi-output fusion"], 28)
  assert 28.0 <= single[0] <= 32.0 and single[1] <= 1.5, single

  # bf16 parameters beside float32 adamwdl, from the same rounds: more loops (the master, then the
  # bf16 parameter); its check of the parameters reads the first elements of each leaf (on this
  # tiny tree XLA's cost analysis counts each of those reads as a whole operand).
  bf16 = [line for line in lines if "multi_precision" in line and line.startswith("| tiny |")]
  assert len(bf16) == 1 and "| 6.0" in bf16[0], bf16  # master, m, v: 3x float32 for bf16
  moved, loops = _moved(bf16[0], 30)
  assert 30.0 <= moved <= 60.0 and 1.0 <= loops <= 8.0, bf16[0]
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

  # Written where --out says (the page, every round's times, the chart), the committed results
  # left alone.
  assert (tmp_path / "results.md").read_text().strip() == result.stdout.strip()
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["quick"] and {r["optimizer"] for r in saved["rows"]} >= {"optax.adamw", "adamwdl"}
  timed = [r for r in saved["rows"] if r["optimizer"] == "adamwdl"]
  assert len(timed[0]["rounds"]) == saved["rounds"]
  assert (tmp_path / "results.png").stat().st_size > 0
  assert not [p.name for p in tmp_path.iterdir() if ".partial" in p.name]  # removed at the end
  assert _digests() == before
