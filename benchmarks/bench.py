"""Optimizer benchmarks: step time, bandwidth, memory and compile time.

  python benchmarks/bench.py            # BERT-base (110M) and BERT-large (335M) trees
  python benchmarks/bench.py --quick    # small trees, seconds: the CI smoke test

Every configuration runs in its own subprocess, one after the other in one run,
so that each has its own peak memory; times are medians after a warm-up. Rows
for PyTorch (``pip install torch``) and Paddle (``pip install paddlepaddle``)
appear when those are installed. The table is printed and written, with a bar
chart when matplotlib is installed, to ``--out`` (default
``benchmarks/results``).
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


def run_jax(kind: str, tree: str, warmup: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import optax

  spec = TREES[tree]
  shapes = bert_shapes(**spec)
  key = iter(jax.random.split(jax.random.key(0), 2 * len(shapes)))
  params = {k: 0.02 * jax.random.normal(next(key), s) for k, s in shapes.items()}
  n = sum(int(np.prod(s)) for s in shapes.values())
  if kind == "triad":
    b = {k: jax.random.normal(next(key), s) for k, s in shapes.items()}
    c = jax.tree.map(jnp.ones_like, b)
    triad = jax.jit(
      lambda a, b, c: jax.tree.map(lambda x, y, z: x + 1e-3 * y * z, a, b, c), donate_argnums=0
    )
    state = {"a": params}

    def step():
      state["a"] = triad(state["a"], b, c)
      jax.block_until_ready(state["a"])

    seconds = _median_time(step, warmup, repeats)
    return dict(seconds=seconds, n=n, bytes=BYTES_PER_TRIAD_ELEMENT * n, peak_mib=_peak_rss_mib())
  grads = {k: 1e-3 * jax.random.normal(next(key), s) for k, s in shapes.items()}
  tx = _jax_optimizer(kind, shapes, spec["layers"])
  opt_state = tx.init(params)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(opt_state))

  @jax.jit
  def _step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  train_step = jax.jit(_step, donate_argnums=(0, 1))
  carry = {"p": params, "s": opt_state}

  def step():
    carry["p"], carry["s"] = train_step(carry["p"], carry["s"], grads)
    jax.block_until_ready(carry["p"])

  seconds = _median_time(step, warmup, repeats)
  return dict(
    seconds=seconds,
    n=n,
    bytes=BYTES_PER_ADAMW_PARAM * n,
    state_bytes=state_bytes,
    param_bytes=4 * n,
    peak_mib=_peak_rss_mib(),
  )


def compile_seconds(kind: str, tree: str, repeats: int) -> dict:
  import jax
  import optax

  spec = TREES[tree]
  shapes = bert_shapes(**spec)
  abstract = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
  times = []
  for _ in range(repeats):
    tx = _jax_optimizer(kind, shapes, spec["layers"])
    state = jax.eval_shape(tx.init, abstract)

    def step(params, opt_state, grads, tx=tx):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    start = time.perf_counter()
    jax.jit(step, donate_argnums=(0, 1)).lower(abstract, state, abstract).compile()
    times.append(time.perf_counter() - start)
  return dict(seconds=statistics.median(times))


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
  state_bytes = sum(
    t.numel() * t.element_size()
    for s in opt.state.values()
    for t in s.values()
    if torch.is_tensor(t)
  )
  return dict(
    seconds=seconds,
    n=n,
    bytes=BYTES_PER_ADAMW_PARAM * n,
    state_bytes=state_bytes,
    param_bytes=4 * n,
    peak_mib=_peak_rss_mib(),
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


def _available(module: str) -> bool:
  import importlib.util

  return importlib.util.find_spec(module) is not None


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny trees, a few steps (CI)")
  parser.add_argument("--trees", nargs="*", default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  trees = args.trees or (["tiny"] if args.quick else ["bert-base", "bert-large"])
  repeats = args.repeats or (3 if args.quick else 10)
  warmup = 1 if args.quick else 3

  kinds = ["triad", "optax.adamw", "adamwdl", "multi_transform"]
  if _available("torch"):
    kinds += ["torch foreach", "torch fused"]
  if _available("paddle"):
    kinds += ["paddle AdamW"]

  rows = []
  for tree in trees:
    results = {k: isolated(RUNNERS[k], k, tree, warmup, repeats) for k in kinds}
    triad, adamw = results["triad"], results["optax.adamw"]
    triad_bw = triad["bytes"] / triad["seconds"]
    for kind in kinds[1:]:
      r = results[kind]
      if isinstance(r, str):
        rows.append(dict(tree=tree, optimizer=kind, error=r))
        continue
      bandwidth = r["bytes"] / r["seconds"]
      rows.append(
        dict(
          tree=tree,
          optimizer=kind,
          params_m=r["n"] / 1e6,
          step_ms=1e3 * r["seconds"],
          vs_adamw=r["seconds"] / adamw["seconds"],
          gb_s=bandwidth / 1e9,
          pct_triad=100 * bandwidth / triad_bw,
          state_over_params=(r["state_bytes"] / r["param_bytes"]) if r.get("state_bytes") else None,
          state_mib=(r["state_bytes"] / 2**20) if r.get("state_bytes") else None,
          peak_mib=r["peak_mib"],
        )
      )
    rows.append(
      dict(
        tree=tree,
        optimizer="triad a += s*b*c",
        params_m=triad["n"] / 1e6,
        step_ms=1e3 * triad["seconds"],
        gb_s=triad_bw / 1e9,
        pct_triad=100.0,
        peak_mib=triad["peak_mib"],
      )
    )

  compile_tree = "tiny" if args.quick else "bert-large"
  compiles = {k: isolated(compile_seconds, k, compile_tree, 3) for k in ("optax.adamw", "adamwdl")}
  table = format_table(rows, compiles, compile_tree)
  print(table)
  write_results(args.out, table, rows, compiles)
  return rows


def _fmt(value, pattern):
  return "" if value is None else pattern.format(value)


def format_table(rows: list[dict], compiles: dict, compile_tree: str) -> str:
  header = (
    "| tree | optimizer | params (M) | step (ms) | × optax.adamw | GB/s | % of triad "
    "| state / params | state (MiB) | peak RSS (MiB) |"
  )
  lines = [header, "|" + " --- |" * 10]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['tree']} | {r['optimizer']} | not run: {r['error'][:60]} |" + " |" * 7)
      continue
    lines.append(
      f"| {r['tree']} | {r['optimizer']} | {r['params_m']:.1f} | {r['step_ms']:.1f} "
      f"| {_fmt(r.get('vs_adamw'), '{:.3f}')} | {r['gb_s']:.2f} | {r['pct_triad']:.0f}% "
      f"| {_fmt(r.get('state_over_params'), '{:.4f}')} | {_fmt(r.get('state_mib'), '{:.0f}')} "
      f"| {r['peak_mib']:.0f} |"
    )
  adamw = compiles["optax.adamw"]
  lines += [
    "",
    f"jit compile time, {compile_tree} tree (median of 3):",
    "",
    "| optimizer | compile (s) | × optax.adamw |",
    "| --- | --- | --- |",
  ]
  for name, c in compiles.items():
    if isinstance(c, str):
      lines.append(f"| {name} | not run: {c[:60]} | |")
    else:
      lines.append(f"| {name} | {c['seconds']:.2f} | {c['seconds'] / adamw['seconds']:.2f} |")
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
