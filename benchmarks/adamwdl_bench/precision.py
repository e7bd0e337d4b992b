"""bf16 parameters beside float32 ones: ``optax.adamw`` on bf16 state, ``adamwdl`` + multi_precision.

The four configurations (:data:`~adamwdl_bench.problems.BF16`) are held by the tree's main worker
(:mod:`adamwdl_bench.step`) and timed in rounds of their own; the ratios are to float32 adamwdl.
"""

from adamwdl_bench import tables
from adamwdl_bench.step import session_rows


def bf16_rows(result: dict) -> list[dict]:
  """bf16 parameters beside float32, timed in the same rounds: ratios to float32 adamwdl."""
  if not result["sessions"]["bf16"]["calls"]:
    return []
  return session_rows(result, "bf16", ["adamwdl", "optax.adamw, bf16"])


def bf16_table(rows: list[dict], machine: dict) -> list[str]:
  columns = [
    ("tree", lambda r: r["tree"]),
    ("optimizer", lambda r: r["optimizer"]),
    ("B / param", lambda r: tables.fmt(r.get("bytes_per_param"), "{}")),
    *tables.TRAFFIC_COLUMNS,
    *tables.timing_columns("adamwdl float32", machine, "step (ms)"),
    ("× optax.adamw bf16: paired median", lambda r: tables.q(r.get("ratio_paired_1"))),
    ("GB/s", lambda r: tables.fmt(r.get("gb_s"), "{:.2f}")),
  ]
  return tables.markdown(columns + tables.memory_columns(machine)[:3], rows)
