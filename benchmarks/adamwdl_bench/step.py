"""The main comparison: one optimizer step on a BERT-shaped tree, in turn, alone and against floors.

:func:`run_tree` times one tree: each configuration's peak memory (processes side by side, untimed),
PyTorch and Paddle alone, then the JAX configurations held warm in workers and taken in turn
(float32 with the floors, and the bf16 session of :mod:`adamwdl_bench.precision`).
"""

import statistics

from adamwdl_bench import floors, tables
from adamwdl_bench.jax_steps import jax_memory, optimizer_steppers
from adamwdl_bench.problems import BF16, CONFIGS, FUSED, NAMES, n_params
from adamwdl_bench.timing import in_turn, paired, ratio_of_medians
from adamwdl_bench.torch_paddle import JOBS, jobs_here
from adamwdl_bench.workers import Worker, side_by_side

MULTI_OUTPUT_FUSION = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
FUSED_SUFFIX = " + multi-output fusion"


def plan(tree: str, memory_bytes: float, backend: str, device_time: bool) -> tuple[list, list]:
  """The configurations the main worker holds for ``tree``, and the fused worker's, within memory.

  Bytes held per parameter: the float32 gradient 4, a float32 configuration 12 (three always)
  (p, m, v), the bf16 pair 24 (bf16 gradients, p, m, v; float32 master, m, v),
  the triad 8, the copy 4, the fused worker 40.
  """
  n = n_params(tree)
  labels = (["triad"] if backend == "cpu" else []) + (["copy"] if device_time else [])
  held = 4 + 8 * ("triad" in labels) + 4 * ("copy" in labels) + 36
  labels += ["optax.adamw", "adamwdl", "adamwdl, multipliers"]

  def fits(more):
    return (held + more) * n < 0.7 * memory_bytes

  if n < 1e9 and fits(12):  # one adamw per ratio: 4-6x slower on a GPU, its compile slow too
    labels.append("multi_transform")
    held += 12
  if fits(24):
    labels += BF16[2:]
    held += 24
  fused = FUSED if backend == "cpu" and fits(40) else []
  return labels, fused


def _memory(tree: str, labels: list[str], machine: dict) -> dict:
  """Each configuration's peak memory, alone in a process (side by side, as many as fit)."""
  alone = [label for label in labels if label in CONFIGS]
  jobs = [(jax_memory, label, tree) for label in alone]
  sizes = [20 * n_params(tree)] * len(jobs)  # params, gradients, state, and some to spare
  return dict(zip(alone, side_by_side(jobs, sizes, 0.6 * machine["memory_bytes"])))


def _solo(tree: str, args, backend: str) -> dict:
  """PyTorch and Paddle, each alone (in --quick, whose times mean nothing, all at once)."""
  kinds = jobs_here(backend)
  jobs = [(JOBS[kind], kind, tree, args.warmup, args.repeats, backend) for kind in kinds]
  at_once = len(jobs) if args.quick else 1
  return dict(zip(kinds, side_by_side(jobs, [1.0] * len(jobs), at_once)))


def _sessions(workers: list[Worker], labels: list[str], fused: list[str], args) -> dict:
  """The float32 configurations (and floors) in turn, then the bf16 ones in rounds of their own."""
  main = [(workers[0], k, k) for k in labels if k not in BF16[2:]]
  main += [(workers[-1], k, k + FUSED_SUFFIX) for k in fused]
  bf16 = [(workers[0], k, k) for k in BF16 if k in labels]
  device = args.device_time and args.device_steps
  sessions = {}
  for name, entries in (("main", main), ("bf16", bf16 if len(bf16) == 4 else [])):
    sessions[name] = dict(
      calls=in_turn(entries, args.rounds),
      devices=in_turn(entries, args.device_rounds, device=True) if device else {},
    )
  return sessions


def run_tree(tree: str, args, machine: dict) -> dict:
  """Times one tree: alone (memory, torch, paddle), then in turn (JAX); returns its results."""
  device_steps = args.device_steps if args.device_time else 0
  labels, fused = plan(tree, machine["memory_bytes"], machine["backend"], args.device_time)
  memory = _memory(tree, labels, machine) if args.memory else {}  # nothing timed meanwhile
  solo = _solo(tree, args, machine["backend"])
  workers = [Worker(optimizer_steppers, tree, labels, device_steps, args.warmup)]
  if fused:
    fusing = dict(xla_flags=MULTI_OUTPUT_FUSION)
    workers.append(Worker(optimizer_steppers, tree, fused, 0, args.warmup, **fusing))
  try:
    sessions = _sessions(workers, labels, fused, args)
  finally:
    for worker in workers:
      worker.close()
  infos = {}
  for worker, suffix in zip(workers, ["", FUSED_SUFFIX]):
    if isinstance(worker.info, dict):
      infos |= {k + suffix: v for k, v in worker.info.items()}
  return dict(tree=tree, n=n_params(tree), sessions=sessions, infos=infos, memory=memory, solo=solo)


def memory_fields(info: dict | None, memory: dict | None) -> dict:
  """The state's size against the parameters', and the peak memory of a process alone."""
  info, memory = info if isinstance(info, dict) else {}, memory if isinstance(memory, dict) else {}
  state = info.get("state_bytes")
  return dict(
    state_over_params=state / info["param_bytes"] if state else None,
    state_scalars=info.get("state_scalars"),
    state_mib=state / 2**20 if state else None,
    peak_rss_mib=memory.get("peak_rss_mib"),
    peak_device_mib=memory.get("peak_device_mib"),
  )


def _device_fields(times, reference, copy, bpp: int) -> dict:
  step = statistics.median(times)
  fields = dict(device_ms=1e3 * step, device_rounds=times)
  if isinstance(reference, list):
    fields["device_ratio_paired"] = paired(times, reference)
  if isinstance(copy, list):
    floor = floors.floor_seconds(bpp, copy)
    fields |= dict(floor_ms=1e3 * floor, pct_floor=100 * floor / step)
  return fields


def session_rows(result: dict, session: str, references: list[str]) -> list[dict]:
  """Rows of the configurations timed in turn in ``session``, with ratios to each reference."""
  tree, n, infos = result["tree"], result["n"], result["infos"]
  calls, devices = result["sessions"][session]["calls"], result["sessions"][session]["devices"]
  triad, copy = calls.get("triad"), result["sessions"]["main"]["devices"].get("copy")
  rows = []
  for name, times in calls.items():
    if name in floors.FLOORS:
      continue
    if isinstance(times, str):
      rows.append(dict(tree=tree, optimizer=NAMES.get(name, name), error=times))
      continue
    bpp, step = infos[name]["bytes_per_param"], statistics.median(times)
    row = dict(tree=tree, optimizer=NAMES.get(name, name), params_m=n / 1e6, bytes_per_param=bpp)
    row |= dict(step_ms=1e3 * step, gb_s=bpp * n / step / 1e9, rounds=times)
    row |= {k: infos[name].get(k) for k in ("moved_per_param", "loops_per_leaf")}
    for i, ref in enumerate(references):
      if isinstance(calls.get(ref), list):
        row[f"ratio_medians_{i}"] = ratio_of_medians(times, calls[ref])
        row[f"ratio_paired_{i}"] = paired(times, calls[ref])
    if isinstance(triad, list):  # paired: the triad of the same round
      row["pct_triad"] = floors.pct_triad(bpp, times, triad)
    if isinstance(devices.get(name), list):
      row |= _device_fields(devices[name], devices.get(references[0]), copy, bpp)
    row |= memory_fields(infos.get(name), result["memory"].get(name))
    rows.append(row)
  return rows


def tree_rows(result: dict) -> list[dict]:
  """The main table's rows for one tree: JAX in turn, the others alone, the floors."""
  tree, n = result["tree"], result["n"]
  rows = session_rows(result, "main", ["optax.adamw"])
  calls = result["sessions"]["main"]["calls"]
  adamw, triad = calls.get("optax.adamw"), calls.get("triad")
  copy = result["sessions"]["main"]["devices"].get("copy")
  for kind, r in result["solo"].items():
    if isinstance(r, str):
      rows.append(dict(tree=tree, optimizer=kind, error=r))
      continue
    s, bpp = r["seconds"], r["bytes_per_param"]
    row = dict(tree=tree, optimizer=kind, params_m=n / 1e6, bytes_per_param=bpp, step_ms=1e3 * s)
    row["gb_s"] = bpp * n / s / 1e9
    if isinstance(adamw, list):
      row["ratio_medians_0"] = s / statistics.median(adamw)
    rows.append(row | floors.alone_fields(bpp, s, triad, copy) | memory_fields(r, r))
  return rows + floors.floor_rows(tree, n, triad, copy)


def main_table(rows: list[dict], machine: dict) -> list[str]:
  per_call = "per call (ms)" if machine["device_time"] else "step (ms)"
  columns = [
    ("tree", lambda r: r["tree"]),
    ("optimizer", lambda r: r["optimizer"]),
    ("params (M)", lambda r: tables.fmt(r.get("params_m"), "{:.1f}")),
    ("B / param", lambda r: tables.fmt(r.get("bytes_per_param"), "{}")),
    *tables.TRAFFIC_COLUMNS,
    *tables.timing_columns("optax.adamw", machine, per_call),
  ]
  if machine["backend"] == "cpu":
    columns += [
      ("GB/s", lambda r: tables.fmt(r.get("gb_s"), "{:.2f}")),
      ("% of triad", lambda r: tables.fmt(r.get("pct_triad"), "{:.0f}%")),
    ]
  return tables.markdown(columns + tables.memory_columns(machine), rows)
