"""A whole fine-tuning step of the demo's ``TransformerEncoder``, written two ways, per optimizer.

The ``jax.jit`` pattern is the demo's own train step (``optax_adamwdl.demo.make_train_step``: a
pure, donated ``jax.jit`` over the ``nnx.split`` state); the other is ``nnx.jit`` with
``nnx.Optimizer``. Each runs forward and backward alone, and with each optimizer, in turn; the
``jax.jit`` pattern also runs adamwdl's step returning ``optax_adamwdl.layer_metrics`` (the cost of
logging each layer's learning rate and update size, paired with the same step without them).
"""

import functools
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamwdl_bench.problems import DECAY, E2E_SIZES, make_tx, tree_map_jit
from adamwdl_bench.tables import fmt, ms, q
from adamwdl_bench.timing import in_turn, paired, ratio_of_medians
from adamwdl_bench.workers import Stepper, Worker

try:  # flax is optional (the package's demo extra): without it this section says "not run"
  from flax import nnx

  from optax_adamwdl import layer_metrics
  from optax_adamwdl.demo import TransformerEncoder, make_train_step
except ModuleNotFoundError as missing:
  nnx = None
  FLAX_MISSING = f"{type(missing).__name__}: {missing}"

PATTERNS = {
  "jit": "`jax.jit` of a pure step over the `nnx.split` state, donated",
  "nnx": "`nnx.jit` + `nnx.Optimizer(model, tx, wrt=nnx.Param)`",
}
E2E_WHAT = ["forward + backward", "optax.adamw", "adamwdl"]
METRICS = "adamwdl + layer_metrics"  # the jax.jit pattern only: nnx.Optimizer keeps the updates
LOG_EVERY = 10  # the logged step once in so many, as a training loop logs
METRICS_EVERY = f"{METRICS} every {LOG_EVERY} steps"  # timed LOG_EVERY steps per call
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 5e-5, 100, 10_000)


def _loss(model, tokens, labels):
  return optax.softmax_cross_entropy_with_integer_labels(model(tokens), labels).mean()


def _metrics_step(graphdef, tx, metrics):
  """The demo's train step, also returning ``metrics(params, updates, opt_state)``."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, rest, tokens, labels):
    loss_fn = lambda params: _loss(nnx.merge(graphdef, params, rest), tokens, labels)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    logged = metrics(params, updates, opt_state)
    return optax.apply_updates(params, updates), opt_state, (loss, logged)

  return train_step


def _jit_pattern(model, what: str, batch) -> Callable[[], Any]:
  """One step as Flax's performance guidance writes it: the demo's pure, donated step."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = tree_map_jit(jnp.copy, params)  # donated: not the arrays the other models share
  if what == "forward + backward":
    loss = lambda params, rest, *batch: _loss(nnx.merge(graphdef, params, rest), *batch)
    grads = jax.jit(jax.value_and_grad(loss))
    return lambda: grads(params, rest, *batch)
  tx = make_tx("adamwdl" if what.startswith(METRICS) else what, learning_rate=SCHEDULE)
  carry = [params, jax.jit(tx.init)(params)]
  plain = make_train_step(graphdef, tx)
  logged = plain  # the configuration make_tx gives adamwdl, less what the metrics ignore
  if what.startswith(METRICS):
    logged = _metrics_step(
      graphdef, tx, layer_metrics(learning_rate=SCHEDULE, layerwise_decay=DECAY)
    )
  every = LOG_EVERY if what == METRICS_EVERY else 1
  count = [0]

  def run():
    train_step = logged if count[0] % every == 0 else plain
    count[0] += 1
    carry[0], carry[1], loss = train_step(*carry, rest, *batch)
    return loss

  return run


def _nnx_pattern(model, what: str, batch) -> Callable[[], Any]:
  """One step as nnx's stateful API writes it: nnx.jit, nnx.Optimizer, optimizer.update."""
  if what == "forward + backward":
    grads = nnx.jit(nnx.value_and_grad(_loss))
    return lambda: grads(model, *batch)
  optimizer = nnx.Optimizer(model, make_tx(what, learning_rate=SCHEDULE), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, tokens, labels):
    loss, grads = nnx.value_and_grad(_loss)(model, tokens, labels)
    optimizer.update(model, grads)
    return loss

  return lambda: train_step(model, optimizer, *batch)


def _repeat(run: Callable[[], Any], steps: int) -> Callable[[], None]:
  """``steps`` calls dispatched back to back, as a training loop does, then one wait."""

  def call():
    for _ in range(steps):
      out = run()
    jax.block_until_ready(out)

  return call


def e2e_steppers(size: str, steps: int, warmup: int, whats: tuple = tuple(E2E_WHAT)) -> dict:
  """Whole steps of the demo model, each pattern with each of ``whats`` (optimizers, or none), warm."""
  if nnx is None:
    raise ModuleNotFoundError(FLAX_MISSING)
  c = E2E_SIZES[size]
  rng = np.random.default_rng(0)
  batch = (
    jnp.asarray(rng.integers(c["vocab"], size=(c["batch"], c["length"])), jnp.int32),
    jnp.asarray(rng.integers(2, size=c["batch"]), jnp.int32),
  )
  shape = dict(dim=c["dim"], heads=c["heads"], n_layers=c["n_layers"], rngs=nnx.Rngs(0))
  model = TransformerEncoder(c["vocab"], c["length"], 2, **shape)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  steppers = {}
  for pattern, build in (("jit", _jit_pattern), ("nnx", _nnx_pattern)):
    for what in whats:
      if pattern == "nnx" and what.startswith(METRICS):
        continue
      call = _repeat(build(nnx.clone(model), what, batch), steps)  # same initial values
      for _ in range(warmup):
        call()
      steppers[f"{pattern}/{what}"] = Stepper(call, None, dict(n=n, per_call=steps, per_device=0))
  return steppers


def start_e2e(args, whats: tuple = (*E2E_WHAT, METRICS), wait: bool = True) -> Worker:
  return Worker(e2e_steppers, args.e2e_size, args.e2e_steps, args.warmup, whats, wait=wait)


def run_e2e(args, worker: Worker | None = None) -> dict:
  """The whole steps, taken in turn in one worker."""
  worker = worker or start_e2e(args)
  names = list(worker.info) if isinstance(worker.info, dict) else []
  try:
    times = in_turn([(worker, k, k) for k in names], args.e2e_rounds)
  finally:
    worker.close()
  e2e = dict(size=args.e2e_size, rounds=args.e2e_rounds, steps=args.e2e_steps, times=times)
  if isinstance(worker.info, str):
    return e2e | dict(error=worker.info, n=0)
  return e2e | dict(n=next(iter(worker.info.values()))["n"], rows=e2e_rows(times))


def e2e_rows(times: dict) -> dict:
  """Medians and paired ratios of the whole steps: adamwdl/adamw, and nnx pattern / jit pattern."""
  out = {}
  for pattern in PATTERNS:
    for what in E2E_WHAT:
      t = times.get(f"{pattern}/{what}")
      out[f"{pattern}/{what}"] = 1e3 * statistics.median(t) if isinstance(t, list) else t
    dl, aw = times.get(f"{pattern}/adamwdl"), times.get(f"{pattern}/optax.adamw")
    if isinstance(dl, list) and isinstance(aw, list):
      out[f"{pattern}/ratio_medians"] = ratio_of_medians(dl, aw)
      out[f"{pattern}/ratio_paired"] = paired(dl, aw)
  logged, plain = times.get(f"jit/{METRICS}"), times.get("jit/adamwdl")
  if isinstance(logged, list) and isinstance(plain, list):
    out["jit/metrics_paired"] = paired(logged, plain)
  for what in E2E_WHAT:
    slow, fast = times.get(f"nnx/{what}"), times.get(f"jit/{what}")
    if isinstance(slow, list) and isinstance(fast, list):
      out[f"nnx_over_jit/{what}"] = paired(slow, fast)
  return out


def e2e_table(e2e: dict) -> list[str]:
  size, r = e2e["size"], e2e.get("rows", {})
  c = E2E_SIZES[size]
  lines = [
    f"A whole fine-tuning step: the demo's `TransformerEncoder` at {size} width (dim {c['dim']}, "
    f"{c['heads']} heads, {c['n_layers']} layers, vocab {c['vocab']}, length {c['length']}; "
    f"{e2e['n'] / 1e6:.2f}M parameters), batch {c['batch']}, float32, two classes; "
    f"{e2e['rounds']} rounds in turn, {e2e['steps']} step(s) each (dispatched back to back, one wait), "
    "ms per step, medians:",
    "",
    "| step as written | forward + backward only | with optax.adamw | with adamwdl (0.75) "
    "| adamwdl / adamw: ratio of medians | adamwdl / adamw: median of paired ratios (quartiles) |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  if isinstance(e2e.get("error"), str):
    return lines + [f"| not run: {e2e['error'][:70]} | | | | | |"]

  def cell(value):
    return ms(value) if not isinstance(value, str) else f"not run: {value[:40]}"

  for pattern, text in PATTERNS.items():
    lines.append(
      f"| {text} | "
      + " | ".join(cell(r.get(f"{pattern}/{w}")) for w in E2E_WHAT)
      + f" | {fmt(r.get(f'{pattern}/ratio_medians'), '{:.4f}')}"
      + f" | {q(r.get(f'{pattern}/ratio_paired'))} |"
    )
  lines.append(
    "| nnx.Optimizer pattern / jax.jit pattern: median of paired ratios | "
    + " | ".join(q(r.get(f"nnx_over_jit/{w}")) for w in E2E_WHAT)
    + " | | |"
  )
  lines.append(
    "| `jax.jit` pattern with adamwdl, returning `layer_metrics` / without: median of paired "
    f"ratios | | | {q(r.get('jit/metrics_paired'))} | | |"
  )
  return lines


def metrics_cost(size: str = "bert-mini", rounds: int = 20, warmup: int = 1) -> dict | str:
  """adamwdl's whole step returning ``layer_metrics`` at every step, and once in ``LOG_EVERY``.

  Each call runs ``LOG_EVERY`` steps; the ratios are paired per round against the same steps
  without the metrics (quartiles). Run from ``benchmarks/``: ``python -c "from
  adamwdl_bench.train_step import metrics_cost; print(metrics_cost())"``.
  """
  whats = ("adamwdl", METRICS, METRICS_EVERY)
  worker = Worker(e2e_steppers, size, LOG_EVERY, warmup, whats)
  try:
    times = in_turn([(worker, f"jit/{w}", w) for w in whats], rounds)
  finally:
    worker.close()
  if isinstance(worker.info, str):
    return worker.info
  ms_per_step = {w: 1e3 * statistics.median(t) for w, t in times.items()}
  ratios = {w: paired(times[w], times["adamwdl"]) for w in whats[1:]}
  return dict(size=size, rounds=rounds, ms_per_step=ms_per_step, ratio=ratios)
