"""Compile time: tracing, lowering and compiling the donated step of each optimizer, in turn."""

import statistics
import time

import jax
import numpy as np

from adamwdl_bench.problems import TREES, bert_shapes, make_tx, optimizer_step
from adamwdl_bench.tables import q
from adamwdl_bench.timing import paired, rotated
from adamwdl_bench.workers import alone

LABELS = ["optax.adamw", "adamwdl", "adamwdl, multipliers"]


def compile_seconds(labels: list[str], tree: str, rounds: int) -> dict[str, list[float]]:
  """Seconds to trace, lower and compile a donated step of each label, in turn, ``rounds`` times."""
  shapes = bert_shapes(**TREES[tree])
  abstract = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
  times = {k: [] for k in labels}
  for r in range(-1, rounds):  # round -1 warms up (first-use costs), and is dropped
    for label in rotated(labels, r):
      tx = make_tx(label, shapes)
      state = jax.eval_shape(tx.init, abstract)
      start = time.perf_counter()
      jax.jit(optimizer_step(tx), donate_argnums=(0, 1)).lower(abstract, state, abstract).compile()
      if r >= 0:
        times[label].append(time.perf_counter() - start)
  return times


def run_compile(tree: str, rounds: int) -> dict[str, list[float]] | str:
  """The compile times, in a fresh process (no program compiled before), or an error message."""
  return alone(compile_seconds, LABELS, tree, rounds)


def compile_table(compiles, tree: str) -> list[str]:
  lines = [f"jit compile time of the step, {tree} tree, compiled in turn:", ""]
  if isinstance(compiles, str):
    return lines + [f"not run: {compiles[:70]}"]
  lines += [
    "| optimizer | compile (s) | × optax.adamw: ratio of medians "
    "| × optax.adamw: median of paired per-round ratios (quartiles) |",
    "| --- | --- | --- | --- |",
  ]
  adamw = compiles["optax.adamw"]
  for name, seconds in compiles.items():
    median = statistics.median(seconds)
    lines.append(
      f"| {name} | {median:.2f} | {median / statistics.median(adamw):.3f} "
      f"| {q(paired(seconds, adamw))} |"
    )
  return lines
