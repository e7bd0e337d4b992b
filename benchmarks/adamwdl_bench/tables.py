"""Markdown tables: cells, and the columns that several comparisons' tables share."""

from collections.abc import Callable


def ms(value) -> str:
  if value is None:
    return ""
  return f"{value:.1f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def fmt(value, pattern: str) -> str:
  return "" if value is None else pattern.format(value)


def q(quartiles) -> str:
  """A paired median with its quartiles: ``median (q1–q3)``."""
  if quartiles is None:
    return ""
  q1, median, q3 = quartiles
  return f"{median:.3f} ({q1:.3f}–{q3:.3f})"


def markdown(columns: list[tuple[str, Callable]], rows: list[dict]) -> list[str]:
  """A table of ``rows``, one cell per (header, cell function); a row with an error says so."""
  lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + " --- |" * len(columns)]
  for r in rows:
    if "error" in r:
      cells = [r.get("tree", ""), r["optimizer"], f"not run: {r['error'][:70]}"]
      cells += [""] * (len(columns) - len(cells))
    else:
      cells = [cell(r) for _, cell in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def timing_columns(ref: str, machine: dict, per_call: str) -> list:
  """Time per call, both ratios to ``ref``; with device time, its paired ratio and the floor."""
  columns = [
    (per_call, lambda r: ms(r.get("step_ms"))),
    (f"× {ref}: ratio of medians", lambda r: fmt(r.get("ratio_medians_0"), "{:.3f}")),
    (
      f"× {ref}: median of paired per-round ratios (quartiles)",
      lambda r: q(r.get("ratio_paired_0")),
    ),
  ]
  if machine["device_time"]:
    columns += [
      ("device time / step (ms)", lambda r: ms(r.get("device_ms"))),
      (f"device × {ref}: paired median (quartiles)", lambda r: q(r.get("device_ratio_paired"))),
      ("floor (ms)", lambda r: ms(r.get("floor_ms"))),
      ("% of floor", lambda r: fmt(r.get("pct_floor"), "{:.0f}%")),
    ]
  return columns


def memory_columns(machine: dict) -> list:
  on_device = machine["backend"] != "cpu"
  peak = "peak_device_mib" if on_device else "peak_rss_mib"
  return [
    ("state / params", lambda r: fmt(r.get("state_over_params"), "{:.4f}")),
    ("+ scalars", lambda r: fmt(r.get("state_scalars"), "{}")),
    ("state (MiB)", lambda r: fmt(r.get("state_mib"), "{:.0f}")),
    (
      "peak device memory (MiB)" if on_device else "peak RSS (MiB)",
      lambda r: fmt(r.get(peak), "{:.0f}"),
    ),
  ]


TRAFFIC_COLUMNS = [  # of the compiled step (jax_steps.compiled_traffic)
  ("B / param moved (XLA)", lambda r: fmt(r.get("moved_per_param"), "{:.1f}")),
  ("loops / leaf", lambda r: fmt(r.get("loops_per_leaf"), "{:.2f}")),
]
