"""The report: the tables in one page (.md), everything measured (.json) and a chart (.png)."""

import json
import os

import numpy as np

from adamwdl_bench.compile_time import compile_table
from adamwdl_bench.machine import QUICK_XLA_FLAGS
from adamwdl_bench.precision import bf16_table
from adamwdl_bench.problems import DECAY, NAMES, WD
from adamwdl_bench.step import main_table
from adamwdl_bench.tables import q
from adamwdl_bench.timing import paired
from adamwdl_bench.train_step import PATTERNS, e2e_table


def _paired_of(rows: list[dict], tree: str, optimizer: str, key: str) -> str:
  for r in rows:
    if r.get("tree") == tree and r["optimizer"] == optimizer and r.get(key):
      return f"{r[key][1]:.3f}"
  return ""


def _e2e_summary(e2e: dict) -> list[str]:
  r = e2e["rows"]
  lines = [
    f"- whole step, adamwdl / optax.adamw, {pattern} pattern: {q(r.get(f'{pattern}/ratio_paired'))}"
    for pattern in PATTERNS
  ]
  lines.append(
    "- whole step with adamwdl, nnx.Optimizer pattern / jax.jit pattern: "
    f"{q(r.get('nnx_over_jit/adamwdl'))}"
  )
  return lines


def summary(results: dict) -> list[str]:
  """The ratios the issues set targets for, in one place (paired medians)."""
  trees = [t["tree"] for t in results["trees"]]
  rows, bf16 = results["rows"], results["bf16_rows"]

  def per_tree(table, optimizer, key="ratio_paired_0"):
    found = [(t, _paired_of(table, t, optimizer, key)) for t in trees]
    return ", ".join(f"{t} {ratio}" for t, ratio in found if ratio)

  lines = [
    "Ratios (medians of paired per-round ratios):",
    "",
    f"- step, adamwdl / optax.adamw (float32): {per_tree(rows, 'adamwdl')}",
  ]
  if results["machine"]["device_time"]:
    lines.append(
      f"- device time, adamwdl / optax.adamw: {per_tree(rows, 'adamwdl', 'device_ratio_paired')}"
    )
  if bf16:
    name = NAMES["adamwdl, bf16 + multi_precision"]
    lines.append(f"- step, bf16 + multi_precision / float32 adamwdl: {per_tree(bf16, name)}")
  if "rows" in results.get("e2e", {}):
    lines += _e2e_summary(results["e2e"])
  compiles = results.get("compiles")
  if isinstance(compiles, dict):
    ratio = paired(compiles["adamwdl"], compiles["optax.adamw"])
    lines.append(f"- compile, adamwdl / optax.adamw: {q(ratio)}")
  return lines


def _header(results: dict) -> list[str]:
  m = results["machine"]
  lines = [f"# Optimizer benchmarks: {m['device_name']}, {m['date']}", ""]
  lines.append(f"{m['description']}. {m['versions']}.")
  if results["quick"]:
    lines[-1] += (
      f" --quick: a smoke test at tiny sizes, with {QUICK_XLA_FLAGS} to compile faster: "
      "its times measure nothing."
    )
  method = (
    f"Float32 BERT-shaped trees with Paddle's names, layerwise_decay {DECAY}, weight decay {WD} "
    "(not on biases and norms). JAX steps: `jax.jit`, donated, held warm and taken in turn, one step "
    f"each per round in a rotating order, {results['rounds']} rounds; times are medians. "
    '"Ratio of medians" divides the medians of the row; "paired" is the median (quartiles) of '
    "the per-round ratios, which cancels the load the rounds share. "
    f"torch and paddle: alone, median of {results['repeats']} steps after a warm-up. "
    '"B / param" is the least a step must read and write; "moved (XLA)" is what the compiled '
    "step reads and writes (XLA's cost analysis), in as many loops over memory per leaf as "
    '"loops / leaf" says.'
  )
  if m["device_time"]:
    method += (
      f" Device time: {results['device_steps']} steps inside one jit (`lax.fori_loop`), "
      f"{results['device_rounds']} rounds in turn; floor: the step's bytes at the bandwidth of "
      "the device copy (bytes read + written)."
    )
  return lines + ["", method]


def format_results(results: dict) -> str:
  """The page: the header, then each section's table, then the summary of ratios."""
  m = results["machine"]
  lines = [*_header(results), "", *main_table(results["rows"], m)]
  if results["bf16_rows"]:
    lines += ["", "bf16 parameters, timed in the same rounds as float32 ones:", ""]
    lines += bf16_table(results["bf16_rows"], m)
  if "compiles" in results:
    lines += ["", *compile_table(results["compiles"], results["compile_tree"])]
  if "e2e" in results:
    lines += ["", *e2e_table(results["e2e"])]
  lines += ["", *summary(results)]
  return "\n".join(lines)


def write_results(out: str, results: dict, final: bool = False, chart: bool = False) -> None:
  """The table (.md), everything measured (.json, per-round times included) and a chart (.png).

  Until the run ends they go to ``out.partial.*``, so that the last complete
  results stay in place until new ones are complete.
  """
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  path = out if final else out + ".partial"
  with open(path + ".md", "w") as f:
    f.write(format_results(results) + "\n")
  with open(path + ".json", "w") as f:
    json.dump(results, f, indent=1, default=str)
  if chart:
    bar_chart(path + ".png", results["rows"])
  for suffix in (".md", ".json") if final else ():
    if os.path.exists(out + ".partial" + suffix):
      os.remove(out + ".partial" + suffix)


def bar_chart(path: str, rows: list[dict]) -> None:
  """The step's median time per tree and optimizer, as bars (skipped without matplotlib)."""
  try:  # matplotlib is optional (the bench extra): without it there is no chart
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return
  good = [r for r in rows if r.get("step_ms") and "error" not in r]
  if not good:
    return
  trees = sorted({r["tree"] for r in good}, key=[r["tree"] for r in good].index)
  kinds = sorted({r["optimizer"] for r in good}, key=[r["optimizer"] for r in good].index)
  fig, ax = plt.subplots(figsize=(9, 3.8))
  width = 0.8 / max(len(kinds), 1)
  for i, kind in enumerate(kinds):
    values = [
      next((r["step_ms"] for r in good if r["tree"] == t and r["optimizer"] == kind), np.nan)
      for t in trees
    ]
    ax.bar(np.arange(len(trees)) + i * width, values, width, label=kind)
  ax.set_xticks(np.arange(len(trees)) + 0.4 - width / 2, trees)
  ax.set_ylabel("optimizer step (ms, median)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
