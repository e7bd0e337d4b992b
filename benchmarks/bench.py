"""Optimizer benchmarks: step time, bandwidth, memory and compile time.

  python benchmarks/bench.py            # BERT-base (110M) and BERT-large (335M) trees
  python benchmarks/bench.py --quick    # small trees, seconds: the CI smoke test

The JAX configurations (optax.adamw, adamwdl, multi_transform, the triad) are
timed in turn: one worker process holds them all, warm, and a round takes one
step of each, in a rotating order; times are medians over the rounds and
ratios are medians of the per-round ratios, with their quartiles. When memory
allows, a second worker holds optax.adamw and adamwdl compiled with XLA:CPU's
multi-output fusion, timed in the same rounds. Each configuration also runs
alone in its own process, for its peak memory; PyTorch (``pip install torch``)
and Paddle (``pip install paddlepaddle``), when installed, are timed there
(median after a warm-up). The table is printed and written, with a bar chart
when matplotlib is installed, to ``--out`` (default ``benchmarks/results``).
"""

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

BYTES_PER_ADAMW_PARAM = 28  # read p, g, m, v and write p, m, v: 7 float32 arrays
BYTES_PER_TRIAD_ELEMENT = 16  # a += s * b * c: read a, b, c and write a
DECAY, LR, WD = 0.75, 1e-3, 0.01

TREES = {
  "bert-base": dict(layers=12, hidden=768, vocab=30522, positions=512),
  "bert-large": dict(layers=24, hidden=1024, vocab=30522, positions=512),
  "tiny": dict(layers=4, hidden=64, vocab=1000, positions=64),
}


def bert_shapes(layers: int, hidden: int, vocab: int, positions: int) -> dict[str, tuple]:
  """A BERT-shaped tree with Paddle's parameter names (110M for base, 335M for large)."""
  h, f = hidden, 4 * hidden
  shapes = {
    "embeddings.word_embeddings.weight": (vocab, h),
    "embeddings.position_embeddings.weight": (positions, h),
    "embeddings.token_type_embeddings.weight": (2, h),
    "embeddings.layer_norm.weight": (h,),
    "embeddings.layer_norm.bias": (h,),
  }
  for i in range(layers):
    p = f"encoder.layers.{i}."
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      shapes[p + f"self_attn.{proj}.weight"] = (h, h)
      shapes[p + f"self_attn.{proj}.bias"] = (h,)
    shapes.update(
      {
        p + "linear1.weight": (h, f),
        p + "linear1.bias": (f,),
        p + "linear2.weight": (f, h),
        p + "linear2.bias": (h,),
      }
    )
    for norm in ("norm1", "norm2"):
      shapes.update({p + f"{norm}.weight": (h,), p + f"{norm}.bias": (h,)})
  shapes.update(
    {
      "pooler.dense.weight": (h, h),
      "pooler.dense.bias": (h,),
      "classifier.weight": (h, 2),
      "classifier.bias": (2,),
    }
  )
  return shapes


def no_decay(name: str) -> bool:
  return name.endswith("bias") or "norm" in name


def _ratio(name: str, layers: int) -> float:
  from optax_adamwdl import layerwise_lr_decay

  return layerwise_lr_decay(DECAY, layers, name)


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_time(step: Callable[[], None], warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# --- JAX ---------------------------------------------------------------------------------------


def _jax_optimizer(kind: str, shapes: dict, layers: int):
  import optax

  from optax_adamwdl import adamwdl

  mask = {k: not no_decay(k) for k in shapes}
  if kind == "optax.adamw":
    return optax.adamw(LR, weight_decay=WD, mask=mask)
  if kind == "adamwdl":
    return adamwdl(LR, weight_decay=WD, layerwise_decay=DECAY, mask=mask)
  if kind == "multi_transform":  # the hand-written alternative: one adamw per layer
    labels = {k: f"{_ratio(k, layers)!r}" for k in shapes}
    transforms = {
      label: optax.adamw(LR * float(label), weight_decay=WD, mask=mask)
      for label in set(labels.values())
    }
    return optax.multi_transform(transforms, labels)
  raise ValueError(kind)


def _jax_problem(tree: str):
  """The parameters and one gradient of a BERT-shaped tree, and its parameter count."""
  import jax

  shapes = bert_shapes(**TREES[tree])
  key = iter(jax.random.split(jax.random.key(0), 2 * len(shapes)))
  params = {k: 0.02 * jax.random.normal(next(key), s) for k, s in shapes.items()}
  grads = {k: 1e-3 * jax.random.normal(next(key), s) for k, s in shapes.items()}
  return params, grads, sum(int(np.prod(s)) for s in shapes.values())


def _state_sizes(state_leaves) -> dict:
  """Bytes of the state's arrays, and how many scalars (step counts, ratios) it has besides."""
  shapes = [tuple(x.shape) for x in state_leaves]
  return dict(
    state_bytes=sum(x.nbytes for x, s in zip(state_leaves, shapes) if s),
    state_scalars=sum(1 for s in shapes if not s),
  )


def _jax_stepper(kind: str, tree: str, params, grads) -> tuple[Callable[[], None], dict]:
  """A jitted, donated step of ``kind`` on a copy of ``params``, and what it moves and keeps."""
  import jax
  import jax.numpy as jnp
  import optax

  n = sum(x.size for x in jax.tree.leaves(params))
  carry = {"p": jax.tree.map(jnp.copy, params)}  # each configuration donates its own copy
  if kind == "triad":
    c = jax.tree.map(jnp.ones_like, grads)
    triad = jax.jit(
      lambda a, b, c: jax.tree.map(lambda x, y, z: x + 1e-3 * y * z, a, b, c), donate_argnums=0
    )

    def step():
      carry["p"] = triad(carry["p"], grads, c)
      jax.block_until_ready(carry["p"])

    return step, dict(n=n, bytes=BYTES_PER_TRIAD_ELEMENT * n)
  shapes = {k: v.shape for k, v in params.items()}
  tx = _jax_optimizer(kind, shapes, TREES[tree]["layers"])
  carry["s"] = tx.init(carry["p"])

  def _step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  train_step = jax.jit(_step, donate_argnums=(0, 1))

  def step():
    carry["p"], carry["s"] = train_step(carry["p"], carry["s"], grads)
    jax.block_until_ready(carry["p"])

  info = dict(n=n, bytes=BYTES_PER_ADAMW_PARAM * n, param_bytes=4 * n)
  return step, info | _state_sizes(jax.tree.leaves(carry["s"]))


def run_jax(kind: str, tree: str, warmup: int, repeats: int) -> dict:
  params, grads, _ = _jax_problem(tree)
  step, info = _jax_stepper(kind, tree, params, grads)
  del params
  seconds = _median_time(step, warmup, repeats)
  return info | dict(seconds=seconds, peak_mib=_peak_rss_mib())


def compile_seconds(kinds: list[str], tree: str, rounds: int) -> dict[str, list[float]]:
  """Seconds to trace, lower and compile a donated step of each kind, in turn, ``rounds`` times."""
  import jax
  import optax

  spec = TREES[tree]
  shapes = bert_shapes(**spec)
  abstract = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
  times = {k: [] for k in kinds}
  for r in range(-1, rounds):  # round -1 warms up (first-use costs), and is dropped
    for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
      tx = _jax_optimizer(kind, shapes, spec["layers"])
      state = jax.eval_shape(tx.init, abstract)

      def step(params, opt_state, grads, tx=tx):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      start = time.perf_counter()
      jax.jit(step, donate_argnums=(0, 1)).lower(abstract, state, abstract).compile()
      if r >= 0:
        times[kind].append(time.perf_counter() - start)
  return times


# --- PyTorch and Paddle ------------------------------------------------------------------------


def run_torch(kind: str, tree: str, warmup: int, repeats: int) -> dict:
  import torch

  torch.set_num_threads(os.cpu_count())
  spec = TREES[tree]
  shapes = bert_shapes(**spec)
  gen = torch.Generator().manual_seed(0)
  params = {k: torch.nn.Parameter(0.02 * torch.randn(s, generator=gen)) for k, s in shapes.items()}
  for p in params.values():
    p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
  groups = {}  # timm's param_groups_layer_decay: one group per (ratio, decay or not)
  for k, p in params.items():
    ratio, wd = _ratio(k, spec["layers"]), 0.0 if no_decay(k) else WD
    groups.setdefault((ratio, wd), []).append(p)
  param_groups = [dict(params=ps, lr=LR * r, weight_decay=wd) for (r, wd), ps in groups.items()]
  options = {"torch foreach": dict(foreach=True), "torch fused": dict(fused=True)}[kind]
  opt = torch.optim.AdamW(param_groups, lr=LR, **options)
  n = sum(p.numel() for p in params.values())
  seconds = _median_time(opt.step, warmup, repeats)
  state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
  return dict(
    seconds=seconds,
    n=n,
    bytes=BYTES_PER_ADAMW_PARAM * n,
    param_bytes=4 * n,
    peak_mib=_peak_rss_mib(),
    **_state_sizes(state),
  )


def run_paddle(kind: str, tree: str, warmup: int, repeats: int) -> dict:
  import paddle

  paddle.set_device("cpu")
  spec = TREES[tree]
  shapes = bert_shapes(**spec)
  rng = np.random.default_rng(0)
  params = []
  for k, s in shapes.items():
    attr = paddle.ParamAttr(name=k, learning_rate=_ratio(k, spec["layers"]))
    p = paddle.create_parameter(list(s), "float32", attr=attr)
    p.set_value((0.02 * rng.standard_normal(s)).astype(np.float32))
    params.append(p)
  loss = sum(
    (p * paddle.to_tensor((1e-3 * rng.standard_normal(p.shape)).astype(np.float32))).sum()
    for p in params
  )
  loss.backward()  # the gradients stay in place; each timed call is one optimizer step
  opt = paddle.optimizer.AdamW(
    LR, parameters=params, weight_decay=WD, apply_decay_param_fun=lambda name: not no_decay(name)
  )
  n = sum(int(np.prod(s)) for s in shapes.values())
  seconds = _median_time(opt.step, warmup, repeats)
  return dict(
    seconds=seconds,
    n=n,
    bytes=BYTES_PER_ADAMW_PARAM * n,
    state_bytes=None,
    param_bytes=4 * n,
    peak_mib=_peak_rss_mib(),
  )


RUNNERS = {
  "triad": run_jax,
  "optax.adamw": run_jax,
  "adamwdl": run_jax,
  "multi_transform": run_jax,
  "torch foreach": run_torch,
  "torch fused": run_torch,
  "paddle AdamW": run_paddle,
}


def _child(queue, runner, args):
  try:
    queue.put(("ok", runner(*args)))
  except Exception as error:  # reported in the table, not raised: one missing extra is no failure
    queue.put(("error", f"{type(error).__name__}: {error}"))


def isolated(runner, *args) -> dict | str:
  """Runs ``runner(*args)`` in a fresh process; returns its result or an error message."""
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  process = context.Process(target=_child, args=(queue, runner, args))
  process.start()
  status, value = queue.get()
  process.join()
  return value if status == "ok" else str(value)


MULTI_OUTPUT_FUSION = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
JAX_KINDS = ["triad", "optax.adamw", "adamwdl", "multi_transform"]


def _serve(conn, tree: str, kinds: list[str], xla_flags: str, warmup: int) -> None:
  """A worker process: holds a warm step of each of ``kinds``, times one step per request."""
  try:
    if xla_flags:  # before jax loads in this fresh process
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
    params, grads, _ = _jax_problem(tree)
    steps = {k: _jax_stepper(k, tree, params, grads)[0] for k in kinds}
    del params
    for step in steps.values():
      for _ in range(warmup):
        step()
  except Exception as error:
    conn.send(f"{type(error).__name__}: {error}")
    return
  conn.send("ready")
  while (kind := conn.recv()) is not None:
    start = time.perf_counter()
    steps[kind]()
    conn.send(time.perf_counter() - start)


def interleaved(tree: str, workers: dict[str, list[str]], rounds: int, warmup: int) -> dict:
  """Step times of several configurations, taken in turn, one step each per round.

  ``workers`` maps XLA_FLAGS to the kinds one process holds with them (all in
  memory at once). Taking the configurations in turn, in a rotating order,
  exposes them to the same load from the machine's other tenants, so that the
  per-round ratios are far steadier than times taken one configuration after
  the other. Returns {label: [seconds per round] or an error message}; a label
  is the kind, with " + multi-output fusion" under that flag.
  """
  context = multiprocessing.get_context("spawn")
  times, order = {}, []
  live = []
  for flags, kinds in workers.items():
    suffix = " + multi-output fusion" if flags == MULTI_OUTPUT_FUSION else ""
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, tree, kinds, flags, warmup))
    process.start()  # one at a time: a worker compiling would slow the others
    child.close()  # so that recv() sees the end of a worker that died
    try:
      status = parent.recv()
    except EOFError:  # the process died, e.g. on an XLA flag this jaxlib does not know
      process.join()
      status = f"worker exited with code {process.exitcode}"
    for kind in kinds:
      times[kind + suffix] = [] if status == "ready" else status
      if status == "ready":
        order.append((parent, kind, kind + suffix))
    live.append((parent, process))
  for r in range(rounds):
    shift = r % max(len(order), 1)
    for conn, kind, label in order[shift:] + order[:shift]:
      conn.send(kind)
      times[label].append(conn.recv())
  for conn, process in live:
    if process.is_alive():
      conn.send(None)
    process.join()
  return times


def _available(module: str) -> bool:
  import importlib.util

  return importlib.util.find_spec(module) is not None


def _memory_bytes() -> int:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _quartiles(values: list[float]) -> tuple[float, float, float]:
  q1, q2, q3 = np.percentile(values, [25, 50, 75])
  return float(q1), float(q2), float(q3)


def tree_rows(tree: str, n: int, times: dict, solo: dict) -> list[dict]:
  """The table's rows for one tree: JAX from ``times`` (in turn), the rest from ``solo``."""
  triad, adamw = times["triad"], times["optax.adamw"]
  if isinstance(triad, str) or isinstance(adamw, str):
    error = triad if isinstance(triad, str) else adamw
    return [dict(tree=tree, optimizer=k, error=error) for k in times]
  triad_s, adamw_s = statistics.median(triad), statistics.median(adamw)
  bytes_ratio = BYTES_PER_ADAMW_PARAM / BYTES_PER_TRIAD_ELEMENT
  rows = []

  def row(kind, seconds, vs_adamw, pct_triad, memory):
    memory = memory if isinstance(memory, dict) else {}
    state = memory.get("state_bytes")
    return dict(
      tree=tree,
      optimizer=kind,
      params_m=n / 1e6,
      step_ms=1e3 * seconds,
      vs_adamw=vs_adamw,
      gb_s=BYTES_PER_ADAMW_PARAM * n / seconds / 1e9,
      pct_triad=pct_triad,
      state_over_params=state / memory["param_bytes"] if state else None,
      state_scalars=memory.get("state_scalars"),
      state_mib=state / 2**20 if state else None,
      peak_mib=memory.get("peak_mib"),
    )

  for label, seconds in times.items():
    if label == "triad":
      continue
    if isinstance(seconds, str):
      rows.append(dict(tree=tree, optimizer=label, error=seconds))
      continue
    ratios = [t / a for t, a in zip(seconds, adamw)]  # paired: the same round
    pct = [100 * bytes_ratio * d / t for t, d in zip(seconds, triad)]
    rows.append(
      row(
        label, statistics.median(seconds), _quartiles(ratios), _quartiles(pct)[1], solo.get(label)
      )
    )
  for kind, r in solo.items():
    if kind in times:
      continue
    if isinstance(r, str):
      rows.append(dict(tree=tree, optimizer=kind, error=r))
      continue
    pct = 100 * bytes_ratio * triad_s / r["seconds"]
    rows.append(row(kind, r["seconds"], (None, r["seconds"] / adamw_s, None), pct, r))
  triad_memory = solo.get("triad")
  rows.append(
    dict(
      tree=tree,
      optimizer="triad a += s*b*c",
      params_m=n / 1e6,
      step_ms=1e3 * triad_s,
      gb_s=BYTES_PER_TRIAD_ELEMENT * n / triad_s / 1e9,
      pct_triad=100.0,
      peak_mib=triad_memory.get("peak_mib") if isinstance(triad_memory, dict) else None,
    )
  )
  return rows


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny trees, a few steps (CI)")
  parser.add_argument("--trees", nargs="*", default=None)
  parser.add_argument("--repeats", type=int, default=None, help="timed steps, PyTorch and Paddle")
  parser.add_argument("--rounds", type=int, default=None, help="timed steps in turn, JAX")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  trees = args.trees or (["tiny"] if args.quick else ["bert-base", "bert-large"])
  repeats = args.repeats or (3 if args.quick else 10)
  rounds = args.rounds or (5 if args.quick else 30)
  warmup = 1 if args.quick else 3

  others = [
    k
    for k, module in (
      ("torch foreach", "torch"),
      ("torch fused", "torch"),
      ("paddle AdamW", "paddle"),
    )
    if _available(module)
  ]
  rows = []
  for tree in trees:
    n = sum(int(np.prod(s)) for s in bert_shapes(**TREES[tree]).values())
    # Alone, each configuration's own process gives its peak memory (and the
    # others' step times); taken in turn, the JAX ones give the step times.
    solo = {k: isolated(RUNNERS[k], k, tree, 1, 2) for k in JAX_KINDS}
    solo |= {k: isolated(RUNNERS[k], k, tree, warmup, repeats) for k in others}
    workers = {"": JAX_KINDS}
    if 76 * n < 0.7 * _memory_bytes():  # 48 bytes/param for those, 28 for these
      workers[MULTI_OUTPUT_FUSION] = ["optax.adamw", "adamwdl"]
    times = interleaved(tree, workers, rounds, warmup)
    rows += tree_rows(tree, n, times, solo)

  compile_tree = "tiny" if args.quick else "bert-large"
  compile_rounds = 2 if args.quick else 15
  compiles = isolated(compile_seconds, ["optax.adamw", "adamwdl"], compile_tree, compile_rounds)
  table = format_table(rows, compiles, compile_tree)
  print(table)
  write_results(args.out, table, rows, compiles)
  return rows


def _fmt(value, pattern):
  return "" if value is None else pattern.format(value)


def _vs_adamw(quartiles) -> str:
  if quartiles is None:
    return ""
  q1, median, q3 = quartiles
  return f"{median:.3f}" if q1 is None else f"{median:.3f} ({q1:.3f}–{q3:.3f})"


def format_table(rows: list[dict], compiles: dict, compile_tree: str) -> str:
  header = (
    "| tree | optimizer | params (M) | step (ms) | × optax.adamw | GB/s | % of triad "
    "| state / params | + scalars | state (MiB) | peak RSS (MiB) |"
  )
  lines = [header, "|" + " --- |" * 11]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['tree']} | {r['optimizer']} | not run: {r['error'][:60]} |" + " |" * 8)
      continue
    lines.append(
      f"| {r['tree']} | {r['optimizer']} | {r['params_m']:.1f} | {r['step_ms']:.1f} "
      f"| {_vs_adamw(r.get('vs_adamw'))} | {r['gb_s']:.2f} | {r['pct_triad']:.0f}% "
      f"| {_fmt(r.get('state_over_params'), '{:.4f}')} | {_fmt(r.get('state_scalars'), '{}')} "
      f"| {_fmt(r.get('state_mib'), '{:.0f}')} | {_fmt(r.get('peak_mib'), '{:.0f}')} |"
    )
  lines += ["", f"jit compile time of the step, {compile_tree} tree, compiled in turn:", ""]
  if isinstance(compiles, str):
    lines.append(f"not run: {compiles[:60]}")
  else:
    lines += ["| optimizer | compile (s) | × optax.adamw |", "| --- | --- | --- |"]
    for name, seconds in compiles.items():
      ratios = [t / a for t, a in zip(seconds, compiles["optax.adamw"])]
      lines.append(
        f"| {name} | {statistics.median(seconds):.2f} | {_vs_adamw(_quartiles(ratios))} |"
      )
  machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
  lines += ["", f"Machine: {machine}; jax {_version('jax')}, optax {_version('optax')}."]
  return "\n".join(lines)


def _version(module: str) -> str:
  try:
    return __import__(module).__version__
  except Exception:
    return "?"


def write_results(out: str, table: str, rows: list[dict], compiles: dict) -> None:
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".md", "w") as f:
    f.write(table + "\n")
  with open(out + ".json", "w") as f:
    json.dump(dict(rows=rows, compiles=compiles), f, indent=1, default=str)
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return
  good = [r for r in rows if "vs_adamw" in r]
  trees = sorted({r["tree"] for r in good}, key=[r["tree"] for r in good].index)
  kinds = sorted({r["optimizer"] for r in good}, key=[r["optimizer"] for r in good].index)
  fig, ax = plt.subplots(figsize=(8, 3.5))
  width = 0.8 / len(kinds)
  for i, kind in enumerate(kinds):
    values = [
      next((r["step_ms"] for r in good if r["tree"] == t and r["optimizer"] == kind), np.nan)
      for t in trees
    ]
    ax.bar(np.arange(len(trees)) + i * width, values, width, label=kind)
  ax.set_xticks(np.arange(len(trees)) + 0.4 - width / 2, trees)
  ax.set_ylabel("optimizer step (ms, median)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out + ".png", dpi=120)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
