"""Optimizer benchmarks on any JAX backend: step time, bandwidth, memory, compile time, a whole step.

  python benchmarks/bench.py           # CPU: BERT-base and BERT-large trees -> benchmarks/results.*
                                       # GPU: + a 1.3B tree and device time -> benchmarks/results-gpu.*
  python benchmarks/bench.py --quick   # tiny sizes, about a minute: a smoke test (the test suite
                                       # runs it) -> benchmarks/results-quick.* (git-ignored), or --out

Method. The JAX configurations of a table (optax.adamw, adamwdl, multi_transform,
the floor, the bf16 ones) are held warm in one worker process and timed in
turn: a round takes one jitted, donated step of each, in a rotating order, so
that all of them meet the same load from the machine's other tenants. Two
ratios are printed: the ratio of the medians in the row, and the median (with
quartiles) of the per-round ratios, paired by round. When memory allows, a
second worker holds steps compiled with XLA:CPU's multi-output fusion (CPU
only), timed in the same rounds; the ``single_pass`` rows wrap the optimizer in
``optax_adamwdl.single_pass`` explicitly. For its peak memory (RSS; device
memory where JAX reports it), each configuration also takes two steps in a
process of its own, untimed. PyTorch's ``AdamW`` (one param group per layer
ratio and decay, as timm builds them; on CUDA when JAX runs on a GPU) and
Paddle's (CPU only) are timed alone: median of a few steps after a warm-up.

Per call, a step pays its dispatch (on a GPU, ~1 ms for ~800 buffers at
BERT-base). ``--device-time`` (the default on a GPU) also runs N steps inside
one jit with ``lax.fori_loop``, so that dispatch is paid once, and compares that
device time per step with the floor: the bytes the step must move at the
bandwidth of a measured device copy (read + write). On the CPU the floor is a
triad ``a += s*b*c`` over the same tree, timed in the same rounds.

The end-to-end section times a whole fine-tuning step of the package's demo
``TransformerEncoder`` (forward, backward, optimizer) written two ways: a pure
``jax.jit`` over the ``nnx.split`` state with donation (Flax's performance
guidance) and ``nnx.jit`` with ``nnx.Optimizer``.
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from queue import Empty
from typing import Any, NamedTuple

import numpy as np

DECAY, LR, WD = 0.75, 1e-3, 0.01
BYTES_PER_TRIAD_ELEMENT = 16  # a += s * b * c: read a, b, c and write a (float32)
BYTES_PER_COPY_ELEMENT = 8  # x -> x + 1: read and write x (float32)
MULTI_OUTPUT_FUSION = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0"  # --quick: compile fast, measure nothing

TREES = {
  "bert-base": dict(layers=12, hidden=768, vocab=30522, positions=512),
  "bert-large": dict(layers=24, hidden=1024, vocab=30522, positions=512),
  "1.3b": dict(layers=24, hidden=2048, vocab=30522, positions=512),
  "tiny": dict(layers=2, hidden=64, vocab=1000, positions=64),
}

# Per configuration: the parameters' dtype and the bytes a step must move per parameter.
CONFIGS = {
  "optax.adamw": ("float32", 28),  # read p, g, m, v and write p, m, v
  "adamwdl": ("float32", 28),
  "multi_transform": ("float32", 28),  # the hand-written alternative: one adamw per ratio
  "optax.adamw, single_pass": ("float32", 28),
  "adamwdl, single_pass": ("float32", 28),
  "optax.adamw, bf16": ("bfloat16", 14),  # 7 bf16 arrays: Adam's state in the params' dtype
  # bf16 p and g, float32 master, m and v: 2 + 2 + 12 bytes read, 2 + 12 written
  "adamwdl, bf16 + multi_precision": ("bfloat16", 30),
}
NAMES = {  # how the tables print a configuration
  "optax.adamw, bf16": "optax.adamw, bf16 params and state",
  "adamwdl, bf16 + multi_precision": "adamwdl, bf16 params + multi_precision",
}
MAIN = ["optax.adamw", "adamwdl", "multi_transform"]
BF16 = ["optax.adamw", "adamwdl", "optax.adamw, bf16", "adamwdl, bf16 + multi_precision"]
FUSED = ["optax.adamw", "optax.adamw, single_pass", "adamwdl, single_pass"]
FUSED_SUFFIX = " + multi-output fusion"

# The demo's TransformerEncoder for the end-to-end step (batch x length tokens, two classes).
E2E_SIZES = {
  "bert-base": dict(vocab=30522, length=128, dim=768, heads=12, n_layers=12, batch=32),
  "bert-mini": dict(vocab=30522, length=128, dim=256, heads=4, n_layers=4, batch=4),
  "tiny": dict(vocab=1000, length=16, dim=32, heads=2, n_layers=2, batch=4),
}
PATTERNS = {
  "jit": "`jax.jit` of a pure step over the `nnx.split` state, donated",
  "nnx": "`nnx.jit` + `nnx.Optimizer(model, tx, wrt=nnx.Param)`",
}
E2E_WHAT = ["forward + backward", "optax.adamw", "adamwdl"]


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


def n_params(tree: str) -> int:
  return sum(int(np.prod(s)) for s in bert_shapes(**TREES[tree]).values())


def no_decay(name: str) -> bool:
  return name.endswith("bias") or "norm" in name


def layer_ratios(shapes: dict[str, tuple]) -> dict[str, float]:
  """Each parameter's ratio, as adamwdl's default ladder gives it (multi_transform, torch, paddle)."""
  import jax

  from optax_adamwdl import lr_ratios

  abstract = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
  return {k: float(np.max(r)) for k, r in lr_ratios(abstract, DECAY).items()}


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_device_mib() -> float | None:
  """Peak device memory of this process, where the backend reports it (GPU, TPU; not CPU)."""
  import jax

  stats = jax.local_devices()[0].memory_stats()
  return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def _median_time(step: Callable[[], None], warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# --- JAX optimizer steps -----------------------------------------------------------------------


def make_tx(label: str, shapes: dict[str, tuple]):
  """The optimizer of configuration ``label`` for a tree of ``shapes``."""
  import optax

  from optax_adamwdl import adamwdl, single_pass

  mask = {k: not no_decay(k) for k in shapes}
  base, _, variant = label.partition(", ")
  if base == "optax.adamw":
    tx = optax.adamw(LR, weight_decay=WD, mask=mask)
  elif base == "adamwdl":
    multi_precision = variant == "bf16 + multi_precision"
    tx = adamwdl(
      LR, weight_decay=WD, mask=mask, layerwise_decay=DECAY, multi_precision=multi_precision
    )
  elif base == "multi_transform":
    labels = {k: repr(r) for k, r in layer_ratios(shapes).items()}
    tx = optax.multi_transform(
      {
        lab: optax.adamw(LR * float(lab), weight_decay=WD, mask=mask)
        for lab in set(labels.values())
      },
      labels,
    )
  else:
    raise ValueError(label)
  return single_pass(tx) if variant == "single_pass" else tx


def jax_problem(tree: str, dtype: str = "float32"):
  """The parameters and one gradient of a BERT-shaped tree, on the default device.

  Each leaf repeats a block of 2**20 normal draws: values do not change what a
  step costs, and this is quick at 1.3B parameters (nor is any program compiled
  per leaf shape).
  """
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  shapes = bert_shapes(**TREES[tree])
  trees = []
  for scale in (0.02, 1e-3):
    block = (scale * rng.standard_normal(2**20, np.float32)).astype(jnp.dtype(dtype))
    trees.append({k: jax.device_put(np.resize(block, s)) for k, s in shapes.items()})
  return tuple(trees)


def tree_map_jit(fn: Callable, *trees):
  """``jax.tree.map(fn, *trees)`` as one program, rather than one eager op per leaf shape."""
  import jax

  return jax.jit(lambda *t: jax.tree.map(fn, *t))(*trees)


class Stepper(NamedTuple):
  """A warm configuration: ``call`` runs one step, ``device`` N steps in one jit (or None)."""

  call: Callable[[], None] | None
  device: Callable[[], None] | None
  info: dict


def _state_sizes(state_leaves) -> dict:
  """Bytes of the state's arrays, and how many scalars (step counts, ratios) it has besides."""
  arrays = [x for x in state_leaves if x.shape]
  return dict(
    state_bytes=sum(x.nbytes for x in arrays), state_scalars=len(state_leaves) - len(arrays)
  )


def _floor_stepper(label: str, n: int, grads, device_steps: int) -> Stepper:
  """The floors: a triad over the tree (per call, CPU) or a device copy as big as the tree."""
  import jax
  import jax.numpy as jnp

  if label == "triad":
    carry = {"a": tree_map_jit(jnp.zeros_like, grads)}
    c = tree_map_jit(jnp.ones_like, grads)
    triad = jax.jit(
      lambda a, b, c: jax.tree.map(lambda x, y, z: x + 1e-3 * y * z, a, b, c), donate_argnums=0
    )

    def call():
      carry["a"] = jax.block_until_ready(triad(carry["a"], grads, c))

    info = dict(n=n, bytes_per_param=BYTES_PER_TRIAD_ELEMENT, per_call=1, per_device=0)
    return Stepper(call, None, info)
  carry = {"x": jnp.zeros(n, jnp.float32)}
  stream = jax.jit(
    lambda x: jax.lax.fori_loop(0, device_steps, lambda i, x: x + 1.0, x), donate_argnums=0
  )

  def device():
    carry["x"] = jax.block_until_ready(stream(carry["x"]))

  info = dict(n=n, bytes_per_param=BYTES_PER_COPY_ELEMENT, per_call=0, per_device=device_steps)
  return Stepper(None, device, info)


def jax_stepper(label: str, tree: str, params, grads, device_steps: int = 0, own=False) -> Stepper:
  """A jitted, donated step of ``label`` on (a copy of) ``params``, and what it moves and keeps."""
  import jax
  import jax.numpy as jnp
  import optax

  n = sum(x.size for x in jax.tree.leaves(grads))
  if label in ("triad", "copy"):
    return _floor_stepper(label, n, grads, device_steps)
  dtype, bytes_per_param = CONFIGS[label]
  if jax.tree.leaves(params)[0].dtype != dtype:
    params, grads, own = *tree_map_jit(lambda x: x.astype(dtype), (params, grads)), True
  carry = {"p": params if own else tree_map_jit(jnp.copy, params)}  # donated: its own copy
  tx = make_tx(label, bert_shapes(**TREES[tree]))
  carry["s"] = jax.jit(tx.init)(carry["p"])

  def one(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  def many(p, s, g):
    # The gradient is scaled by the step number, so that XLA cannot hoist its work out of the loop.
    def body(i, c):
      return one(*c, jax.tree.map(lambda x: x * (i + 1).astype(x.dtype), g))

    return jax.lax.fori_loop(0, device_steps, body, (p, s))

  step = jax.jit(one, donate_argnums=(0, 1)).lower(carry["p"], carry["s"], grads).compile()
  steps = jax.jit(many, donate_argnums=(0, 1))

  def call():
    carry["p"], carry["s"] = jax.block_until_ready(step(carry["p"], carry["s"], grads))

  def device():
    carry["p"], carry["s"] = jax.block_until_ready(steps(carry["p"], carry["s"], grads))

  info = dict(n=n, bytes_per_param=bytes_per_param, param_bytes=n * jnp.dtype(dtype).itemsize)
  info |= _state_sizes(jax.tree.leaves(carry["s"])) | dict(per_call=1, per_device=device_steps)
  info |= compiled_traffic(step, n, len(jax.tree.leaves(grads)))
  return Stepper(call, device if device_steps else None, info)


def compiled_traffic(compiled, n: int, leaves: int) -> dict:
  """What the compiled step moves: XLA's bytes accessed per parameter, and its loops per leaf.

  A loop is a fusion with an array result (each reads its operands and writes its results once), so
  the loops per leaf count the passes over memory, and the bytes are those passes' reads and writes.
  """
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  text = compiled.as_text()
  entry = text[text.index("\nENTRY") :]
  results = re.findall(r"= ([(][^)]*[)]|[^ ]+) fusion[(]", entry)
  loops = sum(bool(re.search(r"\[[0-9]", r)) for r in results)
  moved = cost.get("bytes accessed")
  return dict(moved_per_param=moved / n if moved else None, loops_per_leaf=loops / leaves)


def optimizer_steppers(tree: str, labels: list[str], device_steps: int, warmup: int) -> dict:
  """A worker's configurations on one tree: all warm (and compiled for device time)."""
  params, grads = jax_problem(tree)
  steppers = {}
  for label in labels:
    s = steppers[label] = jax_stepper(label, tree, params, grads, device_steps)
    for fn in (s.call, s.device):
      for _ in range(warmup if fn else 0):
        fn()
  return steppers


def jax_memory(label: str, tree: str) -> dict:
  """Peak memory of a process that takes two steps of ``label`` (and holds nothing else)."""
  params, grads = jax_problem(tree, CONFIGS[label][0])
  step = jax_stepper(label, tree, params, grads, own=True).call
  del params
  step()
  step()
  return dict(peak_rss_mib=_peak_rss_mib(), peak_device_mib=_peak_device_mib())


def compile_seconds(labels: list[str], tree: str, rounds: int) -> dict[str, list[float]]:
  """Seconds to trace, lower and compile a donated step of each label, in turn, ``rounds`` times."""
  import jax
  import optax

  shapes = bert_shapes(**TREES[tree])
  abstract = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
  times = {k: [] for k in labels}
  for r in range(-1, rounds):  # round -1 warms up (first-use costs), and is dropped
    for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
      tx = make_tx(label, shapes)
      state = jax.eval_shape(tx.init, abstract)

      def step(params, opt_state, grads, tx=tx):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      start = time.perf_counter()
      jax.jit(step, donate_argnums=(0, 1)).lower(abstract, state, abstract).compile()
      if r >= 0:
        times[label].append(time.perf_counter() - start)
  return times


# --- The whole fine-tuning step ----------------------------------------------------------------


def _decay_mask(params):
  """Weight decay on the kernels and embeddings, not on biases and norm scales."""
  import jax

  from optax_adamwdl import param_names

  return jax.tree.map(lambda name: not name.endswith(("bias", "scale")), param_names(params))


def e2e_tx(what: str):
  import optax

  from optax_adamwdl import adamwdl

  schedule = optax.warmup_cosine_decay_schedule(0.0, 5e-5, 100, 10_000)
  if what == "optax.adamw":
    return optax.adamw(schedule, weight_decay=WD, mask=_decay_mask)
  return adamwdl(schedule, weight_decay=WD, mask=_decay_mask, layerwise_decay=DECAY)


def _repeat(run: Callable[[], Any], steps: int) -> Callable[[], None]:
  """``steps`` calls dispatched back to back, as a training loop does, then one wait."""

  def call():
    for _ in range(steps):
      out = run()
    __import__("jax").block_until_ready(out)

  return call


def _jit_pattern(model, what: str, batch) -> Callable[[], Any]:
  """One step as Flax's performance guidance writes it: a pure, donated jax.jit over split state."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = tree_map_jit(jnp.copy, params)  # donated: not the arrays the other models share

  def loss_fn(params, rest, tokens, labels):
    logits = nnx.merge(graphdef, params, rest)(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  if what == "forward + backward":
    grads = jax.jit(jax.value_and_grad(loss_fn))
    return lambda: grads(params, rest, *batch)
  tx = e2e_tx(what)
  carry = [params, jax.jit(tx.init)(params)]

  def train_step(params, opt_state, rest, tokens, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, tokens, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(train_step, donate_argnums=(0, 1))

  def run():
    carry[0], carry[1], loss = train_step(*carry, rest, *batch)
    return loss

  return run


def _nnx_pattern(model, what: str, batch) -> Callable[[], Any]:
  """One step as nnx's stateful API writes it: nnx.jit, nnx.Optimizer, optimizer.update."""
  import optax
  from flax import nnx

  def loss_fn(model, tokens, labels):
    return optax.softmax_cross_entropy_with_integer_labels(model(tokens), labels).mean()

  if what == "forward + backward":
    grads = nnx.jit(nnx.value_and_grad(loss_fn))
    return lambda: grads(model, *batch)
  optimizer = nnx.Optimizer(model, e2e_tx(what), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, tokens, labels):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, labels)
    optimizer.update(model, grads)
    return loss

  return lambda: train_step(model, optimizer, *batch)


def demo_model(size: str):
  from flax import nnx

  from optax_adamwdl.demo import TransformerEncoder

  c = E2E_SIZES[size]
  return TransformerEncoder(
    c["vocab"],
    c["length"],
    2,
    dim=c["dim"],
    heads=c["heads"],
    n_layers=c["n_layers"],
    rngs=nnx.Rngs(0),
  )


def e2e_steppers(size: str, steps: int, warmup: int, whats: tuple = tuple(E2E_WHAT)) -> dict:
  """Whole steps of the demo model, each pattern with each of ``whats`` (optimizers, or none), warm."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  c = E2E_SIZES[size]
  rng = np.random.default_rng(0)
  batch = (
    jnp.asarray(rng.integers(c["vocab"], size=(c["batch"], c["length"])), jnp.int32),
    jnp.asarray(rng.integers(2, size=c["batch"]), jnp.int32),
  )
  model = demo_model(size)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  steppers = {}
  for pattern, build in (("jit", _jit_pattern), ("nnx", _nnx_pattern)):
    for what in whats:
      call = _repeat(build(nnx.clone(model), what, batch), steps)  # same initial values
      for _ in range(warmup):
        call()
      steppers[f"{pattern}/{what}"] = Stepper(call, None, dict(n=n, per_call=steps, per_device=0))
  return steppers


# --- PyTorch and Paddle ------------------------------------------------------------------------


def torch_step(kind: str, tree: str, warmup: int, repeats: int, backend: str) -> dict:
  """PyTorch's AdamW, one param group per (ratio, decay) as timm builds them; CUDA on a GPU."""
  import torch

  on_gpu = backend == "gpu"
  if on_gpu and not torch.cuda.is_available():
    raise RuntimeError(f"torch {torch.__version__} has no CUDA")
  device = "cuda" if on_gpu else "cpu"
  if not on_gpu:
    torch.set_num_threads(os.cpu_count())
  shapes = bert_shapes(**TREES[tree])
  ratios = layer_ratios(shapes)
  gen = torch.Generator(device).manual_seed(0)
  params = {}
  for k, s in shapes.items():
    params[k] = torch.nn.Parameter(0.02 * torch.randn(s, generator=gen, device=device))
    params[k].grad = 1e-3 * torch.randn(s, generator=gen, device=device)
  groups = {}
  for k, p in params.items():
    groups.setdefault((ratios[k], 0.0 if no_decay(k) else WD), []).append(p)
  param_groups = [dict(params=ps, lr=LR * r, weight_decay=wd) for (r, wd), ps in groups.items()]
  options = {"torch foreach": dict(foreach=True), "torch fused": dict(fused=True)}[kind]
  opt = torch.optim.AdamW(param_groups, lr=LR, **options)

  def step():
    opt.step()
    if on_gpu:
      torch.cuda.synchronize()

  seconds = _median_time(step, warmup, repeats)
  n = sum(p.numel() for p in params.values())
  state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
  return dict(
    seconds=seconds,
    n=n,
    bytes_per_param=28,
    param_bytes=4 * n,
    state_bytes=sum(t.numel() * t.element_size() for t in state if t.dim()),
    state_scalars=sum(1 for t in state if not t.dim()),
    peak_rss_mib=_peak_rss_mib(),
    peak_device_mib=torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
  )


def paddle_step(kind: str, tree: str, warmup: int, repeats: int, backend: str) -> dict:
  import paddle

  paddle.set_device("cpu")
  shapes = bert_shapes(**TREES[tree])
  ratios = layer_ratios(shapes)
  rng = np.random.default_rng(0)
  params = []
  for k, s in shapes.items():
    attr = paddle.ParamAttr(name=k, learning_rate=ratios[k])
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
  return dict(seconds=seconds, n=n, bytes_per_param=28, peak_rss_mib=_peak_rss_mib())


# --- Processes: alone, and held warm in workers timed in turn -------------------------------------


def _many(jobs: list[tuple]) -> list:
  """Runs each (runner, *args) in turn, in this process; an error is returned as its message."""
  results = []
  for runner, *args in jobs:
    try:
      results.append(runner(*args))
    except Exception as error:  # reported in the table, not raised: one missing extra is no failure
      results.append(f"{type(error).__name__}: {error}")
  return results


def _child(queue, jobs):
  queue.put(_many(jobs))


def _start(jobs: list[tuple]):
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  process = context.Process(target=_child, args=(queue, jobs))
  process.start()
  return process, queue, len(jobs)


def _collect(started) -> list:
  process, queue, n = started
  while True:
    try:
      results = queue.get(timeout=1)
      break
    except Empty:
      if not process.is_alive() and queue.empty():  # killed, e.g. out of memory
        results = [f"process exited with code {process.exitcode}"] * n
        break
  process.join()
  return results


def isolated(*jobs: tuple) -> list:
  """Runs the jobs (runner, *args) in one fresh process; each gives its result or an error message."""
  return _collect(_start(list(jobs)))


def side_by_side(jobs: list[tuple], sizes: list[float], budget: float) -> list:
  """Each job alone in its own process, as many at once as fit in ``budget`` bytes (untimed work)."""
  results = []
  while len(results) < len(jobs):
    first, total, batch = len(results), 0.0, []
    for job, size in zip(jobs[first:], sizes[first:]):
      if batch and total + size > budget:
        break
      total += size
      batch.append(_start([job]))
    results += [_collect(started)[0] for started in batch]
  return results


def _serve(conn, factory, args, xla_flags: str) -> None:
  """A worker process: holds the warm steppers ``factory(*args)``, times one call per request."""
  try:
    if xla_flags:  # before jax loads in this fresh process
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
    steppers = factory(*args)
  except Exception as error:
    conn.send(f"{type(error).__name__}: {error}")
    return
  conn.send({label: s.info for label, s in steppers.items()})
  while (request := conn.recv()) is not None:
    label, device = request
    fn = steppers[label].device if device else steppers[label].call
    start = time.perf_counter()
    fn()
    conn.send(time.perf_counter() - start)


class Worker:
  """A process holding warm steppers; ``info`` is theirs, or an error message.

  Started at once; ``wait=False`` returns before it is ready (only where its
  compiling may slow the others, as in --quick): ``info`` then waits for it.
  """

  def __init__(self, factory, *args, xla_flags: str = "", wait: bool = True):
    context = multiprocessing.get_context("spawn")
    self.conn, child = context.Pipe()
    self.process = context.Process(target=_serve, args=(child, factory, args, xla_flags))
    self.process.start()
    child.close()  # so that recv() sees the end of a worker that died
    self._info = None
    if wait:
      self.info  # noqa: B018 (waits)

  @property
  def info(self) -> dict | str:
    if self._info is None:
      try:
        self._info = self.conn.recv()
      except EOFError:  # the process died, e.g. on an XLA flag this jaxlib does not know
        self.process.join()
        self._info = f"worker exited with code {self.process.exitcode}"
    return self._info

  def time(self, label: str, device: bool) -> float:
    self.conn.send((label, device))
    return self.conn.recv()

  def close(self) -> None:
    if self.process.is_alive() and isinstance(self.info, dict):
      self.conn.send(None)
    self.process.join()


def in_turn(entries: list[tuple], rounds: int, device: bool = False) -> dict:
  """Times (worker, label, name) entries in turn, one call each per round, in a rotating order.

  Taking the configurations in turn exposes them to the same load from the
  machine's other tenants, so that per-round ratios are far steadier than
  times taken one configuration after the other. Returns {name: [seconds per
  step, one per round]} (device: per step of the N run inside one jit), or an
  error message for a worker that did not start.
  """
  times, live, key = {}, [], "per_device" if device else "per_call"
  for worker, label, name in entries:
    if isinstance(worker.info, str):
      times[name] = worker.info
    elif label in worker.info and (steps := worker.info[label][key]):
      times[name] = []
      live.append((worker, label, name, steps))
  for r in range(rounds):
    shift = r % max(len(live), 1)
    for worker, label, name, steps in live[shift:] + live[:shift]:
      times[name].append(worker.time(label, device) / steps)
  return times


# --- One tree: plan, run, rows -----------------------------------------------------------------


def plan(tree: str, memory_bytes: float, backend: str, device_time: bool) -> tuple[list, list]:
  """The configurations the main worker holds for ``tree``, and the fused worker's, within memory.

  Bytes held per parameter: the float32 gradient 4, a float32 configuration 12
  (p, m, v), the bf16 pair 24 (bf16 gradients, p, m, v; float32 master, m, v),
  the triad 8, the copy 4, the fused worker 40.
  """
  n = n_params(tree)
  floors = (["triad"] if backend == "cpu" else []) + (["copy"] if device_time else [])
  held = 4 + 8 * ("triad" in floors) + 4 * ("copy" in floors) + 24
  labels = [*floors, "optax.adamw", "adamwdl"]

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


def run_tree(tree: str, args, machine: dict) -> dict:
  """Times one tree: alone (memory, torch, paddle), then in turn (JAX); returns its rows."""
  device_steps = args.device_steps if args.device_time else 0
  labels, fused = plan(tree, machine["memory_bytes"], machine["backend"], args.device_time)
  memory = {}
  if args.memory:  # nothing is timed here: processes side by side, as many as fit at once
    alone = [label for label in labels if label in CONFIGS]
    jobs = [(jax_memory, label, tree) for label in alone]
    sizes = [20 * n_params(tree)] * len(jobs)  # params, gradients, state, and some to spare
    memory = dict(zip(alone, side_by_side(jobs, sizes, 0.6 * machine["memory_bytes"])))
  others = [("torch foreach", torch_step), ("torch fused", torch_step)] * _available("torch")
  others += [("paddle AdamW", paddle_step)] * (_available("paddle") and machine["backend"] == "cpu")
  jobs = [(run, kind, tree, args.warmup, args.repeats, machine["backend"]) for kind, run in others]
  results = isolated(*jobs) if args.quick and jobs else [isolated(job)[0] for job in jobs]
  solo = {kind: r for (kind, _), r in zip(others, results)}
  workers = [Worker(optimizer_steppers, tree, labels, device_steps, args.warmup)]
  if fused:
    workers.append(
      Worker(optimizer_steppers, tree, fused, 0, args.warmup, xla_flags=MULTI_OUTPUT_FUSION)
    )
  try:
    main = [(workers[0], k, k) for k in labels if k not in BF16[2:]]
    main += [(workers[-1], k, k + FUSED_SUFFIX) for k in fused]
    bf16 = [(workers[0], k, k) for k in BF16 if k in labels]
    sessions = {}
    for name, entries in (("main", main), ("bf16", bf16 if len(bf16) == 4 else [])):
      sessions[name] = dict(
        calls=in_turn(entries, args.rounds),
        devices=in_turn(entries, args.device_rounds, device=True) if device_steps else {},
      )
  finally:
    for worker in workers:
      worker.close()
  infos = {}
  for worker in workers:
    if isinstance(worker.info, dict):
      suffix = FUSED_SUFFIX if worker is not workers[0] else ""
      infos |= {k + suffix: v for k, v in worker.info.items()}
  return dict(tree=tree, n=n_params(tree), sessions=sessions, infos=infos, memory=memory, solo=solo)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
  q1, q2, q3 = np.percentile(values, [25, 50, 75])
  return float(q1), float(q2), float(q3)


def _paired(times: list[float], reference: list[float]) -> tuple[float, float, float]:
  return _quartiles([t / r for t, r in zip(times, reference)])


def _memory_fields(info: dict | None, memory: dict | None) -> dict:
  info, memory = info if isinstance(info, dict) else {}, memory if isinstance(memory, dict) else {}
  state = info.get("state_bytes")
  return dict(
    state_over_params=state / info["param_bytes"] if state else None,
    state_scalars=info.get("state_scalars"),
    state_mib=state / 2**20 if state else None,
    peak_rss_mib=memory.get("peak_rss_mib"),
    peak_device_mib=memory.get("peak_device_mib"),
  )


def session_rows(result: dict, session: str, references: list[str]) -> list[dict]:
  """Rows of the configurations timed in turn in ``session``, with ratios to each reference."""
  tree, n, infos = result["tree"], result["n"], result["infos"]
  calls, devices = result["sessions"][session]["calls"], result["sessions"][session]["devices"]
  triad, copy = calls.get("triad"), result["sessions"]["main"]["devices"].get("copy")
  rows = []
  for name, times in calls.items():
    if name in ("triad", "copy"):
      continue
    if isinstance(times, str):
      rows.append(dict(tree=tree, optimizer=NAMES.get(name, name), error=times))
      continue
    bpp = infos[name]["bytes_per_param"]
    step = statistics.median(times)
    row = dict(tree=tree, optimizer=NAMES.get(name, name), params_m=n / 1e6, bytes_per_param=bpp)
    row |= dict(step_ms=1e3 * step, gb_s=bpp * n / step / 1e9, rounds=times)
    row |= {k: infos[name].get(k) for k in ("moved_per_param", "loops_per_leaf")}
    for i, ref in enumerate(references):
      if isinstance(calls.get(ref), list):
        row[f"ratio_medians_{i}"] = step / statistics.median(calls[ref])
        row[f"ratio_paired_{i}"] = _paired(times, calls[ref])
    if isinstance(triad, list):  # paired: the triad of the same round
      ratios = [bpp / BYTES_PER_TRIAD_ELEMENT * d / t for t, d in zip(times, triad)]
      row["pct_triad"] = 100 * statistics.median(ratios)
    if isinstance(devices.get(name), list):
      row |= _device_fields(devices[name], devices.get(references[0]), copy, bpp, n)
    row |= _memory_fields(infos.get(name), result["memory"].get(name))
    rows.append(row)
  return rows


def _device_fields(times, reference, copy, bpp: int, n: int) -> dict:
  step = statistics.median(times)
  fields = dict(device_ms=1e3 * step, device_rounds=times)
  if isinstance(reference, list):
    fields["device_ratio_paired"] = _paired(times, reference)
  if isinstance(copy, list):
    floor = bpp * n / (BYTES_PER_COPY_ELEMENT * n / statistics.median(copy))
    fields |= dict(floor_ms=1e3 * floor, pct_floor=100 * floor / step)
  return fields


def tree_rows(result: dict) -> list[dict]:
  """The main table's rows for one tree: JAX in turn, the others alone, the floors."""
  tree, n = result["tree"], result["n"]
  rows = session_rows(result, "main", ["optax.adamw"])
  calls = result["sessions"]["main"]["calls"]
  devices = result["sessions"]["main"]["devices"]
  adamw, triad, copy = calls.get("optax.adamw"), calls.get("triad"), devices.get("copy")
  for kind, r in result["solo"].items():
    if isinstance(r, str):
      rows.append(dict(tree=tree, optimizer=kind, error=r))
      continue
    s, bpp = r["seconds"], r["bytes_per_param"]
    row = dict(tree=tree, optimizer=kind, params_m=n / 1e6, bytes_per_param=bpp, step_ms=1e3 * s)
    row["gb_s"] = bpp * n / s / 1e9
    if isinstance(adamw, list):
      row["ratio_medians_0"] = s / statistics.median(adamw)
    if isinstance(triad, list):
      row["pct_triad"] = 100 * bpp / BYTES_PER_TRIAD_ELEMENT * statistics.median(triad) / s
    if isinstance(copy, list):  # one synchronised step: per call is about device time here
      row["pct_floor"] = 100 * bpp / BYTES_PER_COPY_ELEMENT * statistics.median(copy) / s
    rows.append(row | _memory_fields(r, r))
  if isinstance(triad, list):
    t = statistics.median(triad)
    rows.append(
      dict(tree=tree, optimizer="triad a += s*b*c", params_m=n / 1e6, bytes_per_param=16)
      | dict(step_ms=1e3 * t, gb_s=16 * n / t / 1e9, pct_triad=100.0, rounds=triad)
    )
  if isinstance(copy, list):
    t = statistics.median(copy)
    rows.append(
      dict(tree=tree, optimizer="device copy x -> x + 1", params_m=n / 1e6, bytes_per_param=8)
      | dict(device_ms=1e3 * t, gb_s=8 * n / t / 1e9, pct_floor=100.0, device_rounds=copy)
    )
  return rows


def bf16_rows(result: dict) -> list[dict]:
  """bf16 parameters beside float32, timed in the same rounds: ratios to float32 adamwdl."""
  if not result["sessions"]["bf16"]["calls"]:
    return []
  return session_rows(result, "bf16", ["adamwdl", "optax.adamw, bf16"])


def e2e_rows(times: dict) -> dict:
  """Medians and paired ratios of the whole steps: adamwdl/adamw, and nnx pattern / jit pattern."""
  out = {}
  for pattern in PATTERNS:
    for what in E2E_WHAT:
      t = times.get(f"{pattern}/{what}")
      out[f"{pattern}/{what}"] = 1e3 * statistics.median(t) if isinstance(t, list) else t
    dl, aw = times.get(f"{pattern}/adamwdl"), times.get(f"{pattern}/optax.adamw")
    if isinstance(dl, list) and isinstance(aw, list):
      out[f"{pattern}/ratio_medians"] = statistics.median(dl) / statistics.median(aw)
      out[f"{pattern}/ratio_paired"] = _paired(dl, aw)
  for what in E2E_WHAT:
    slow, fast = times.get(f"nnx/{what}"), times.get(f"jit/{what}")
    if isinstance(slow, list) and isinstance(fast, list):
      out[f"nnx_over_jit/{what}"] = _paired(slow, fast)
  return out


# --- Tables ------------------------------------------------------------------------------------


def _ms(value) -> str:
  if value is None:
    return ""
  return f"{value:.1f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _fmt(value, pattern: str) -> str:
  return "" if value is None else pattern.format(value)


def _q(quartiles) -> str:
  if quartiles is None:
    return ""
  q1, median, q3 = quartiles
  return f"{median:.3f} ({q1:.3f}–{q3:.3f})"


def _markdown(columns: list[tuple[str, Callable]], rows: list[dict]) -> list[str]:
  lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + " --- |" * len(columns)]
  for r in rows:
    if "error" in r:
      cells = [r.get("tree", ""), r["optimizer"], f"not run: {r['error'][:70]}"]
      cells += [""] * (len(columns) - len(cells))
    else:
      cells = [cell(r) for _, cell in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _timing_columns(ref: str, machine: dict, per_call: str) -> list:
  device = machine["device_time"]
  columns = [
    (per_call, lambda r: _ms(r.get("step_ms"))),
    (f"× {ref}: ratio of medians", lambda r: _fmt(r.get("ratio_medians_0"), "{:.3f}")),
    (
      f"× {ref}: median of paired per-round ratios (quartiles)",
      lambda r: _q(r.get("ratio_paired_0")),
    ),
  ]
  if device:
    columns += [
      ("device time / step (ms)", lambda r: _ms(r.get("device_ms"))),
      (f"device × {ref}: paired median (quartiles)", lambda r: _q(r.get("device_ratio_paired"))),
      ("floor (ms)", lambda r: _ms(r.get("floor_ms"))),
      ("% of floor", lambda r: _fmt(r.get("pct_floor"), "{:.0f}%")),
    ]
  return columns


def _memory_columns(machine: dict) -> list:
  on_device = machine["backend"] != "cpu"
  peak = "peak_device_mib" if on_device else "peak_rss_mib"
  return [
    ("state / params", lambda r: _fmt(r.get("state_over_params"), "{:.4f}")),
    ("+ scalars", lambda r: _fmt(r.get("state_scalars"), "{}")),
    ("state (MiB)", lambda r: _fmt(r.get("state_mib"), "{:.0f}")),
    (
      "peak device memory (MiB)" if on_device else "peak RSS (MiB)",
      lambda r: _fmt(r.get(peak), "{:.0f}"),
    ),
  ]


_TRAFFIC_COLUMNS = [  # of the compiled step (compiled_traffic)
  ("B / param moved (XLA)", lambda r: _fmt(r.get("moved_per_param"), "{:.1f}")),
  ("loops / leaf", lambda r: _fmt(r.get("loops_per_leaf"), "{:.2f}")),
]


def main_table(rows: list[dict], machine: dict) -> list[str]:
  per_call = "per call (ms)" if machine["device_time"] else "step (ms)"
  columns = [
    ("tree", lambda r: r["tree"]),
    ("optimizer", lambda r: r["optimizer"]),
    ("params (M)", lambda r: _fmt(r.get("params_m"), "{:.1f}")),
    ("B / param", lambda r: _fmt(r.get("bytes_per_param"), "{}")),
    *_TRAFFIC_COLUMNS,
    *_timing_columns("optax.adamw", machine, per_call),
  ]
  if machine["backend"] == "cpu":
    columns += [
      ("GB/s", lambda r: _fmt(r.get("gb_s"), "{:.2f}")),
      ("% of triad", lambda r: _fmt(r.get("pct_triad"), "{:.0f}%")),
    ]
  return _markdown(columns + _memory_columns(machine), rows)


def bf16_table(rows: list[dict], machine: dict) -> list[str]:
  columns = [
    ("tree", lambda r: r["tree"]),
    ("optimizer", lambda r: r["optimizer"]),
    ("B / param", lambda r: _fmt(r.get("bytes_per_param"), "{}")),
    *_TRAFFIC_COLUMNS,
    *_timing_columns("adamwdl float32", machine, "step (ms)"),
    ("× optax.adamw bf16: paired median", lambda r: _q(r.get("ratio_paired_1"))),
    ("GB/s", lambda r: _fmt(r.get("gb_s"), "{:.2f}")),
  ]
  return _markdown(columns + _memory_columns(machine)[:3], rows)


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
      f"| {_q(_paired(seconds, adamw))} |"
    )
  return lines


def e2e_table(e2e: dict) -> list[str]:
  size, r = e2e["size"], e2e["rows"]
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
    return _ms(value) if not isinstance(value, str) else f"not run: {value[:40]}"

  for pattern, text in PATTERNS.items():
    lines.append(
      f"| {text} | "
      + " | ".join(cell(r.get(f"{pattern}/{w}")) for w in E2E_WHAT)
      + f" | {_fmt(r.get(f'{pattern}/ratio_medians'), '{:.4f}')}"
      + f" | {_q(r.get(f'{pattern}/ratio_paired'))} |"
    )
  lines.append(
    "| nnx.Optimizer pattern / jax.jit pattern: median of paired ratios | "
    + " | ".join(_q(r.get(f"nnx_over_jit/{w}")) for w in E2E_WHAT)
    + " | | |"
  )
  return lines


def _paired_of(rows: list[dict], tree: str, optimizer: str, key: str = "ratio_paired_0") -> str:
  for r in rows:
    if r.get("tree") == tree and r["optimizer"] == optimizer and r.get(key):
      return f"{r[key][1]:.3f}"
  return ""


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
  e2e = results.get("e2e")
  if e2e and "rows" in e2e:
    r = e2e["rows"]
    for pattern in PATTERNS:
      lines.append(
        f"- whole step, adamwdl / optax.adamw, {pattern} pattern: "
        f"{_q(r.get(f'{pattern}/ratio_paired'))}"
      )
    lines.append(
      f"- whole step with adamwdl, nnx.Optimizer pattern / jax.jit pattern: "
      f"{_q(r.get('nnx_over_jit/adamwdl'))}"
    )
  compiles = results.get("compiles")
  if isinstance(compiles, dict):
    ratio = _paired(compiles["adamwdl"], compiles["optax.adamw"])
    lines.append(f"- compile, adamwdl / optax.adamw: {_q(ratio)}")
  return lines


def format_results(results: dict) -> str:
  m = results["machine"]
  lines = [
    f"# Optimizer benchmarks: {m['device_name']}, {m['date']}",
    "",
    f"{m['description']}. {m['versions']}.",
  ]
  if results["quick"]:
    lines[-1] += (
      f" --quick: a smoke test at tiny sizes, with {QUICK_XLA_FLAGS} to compile faster: "
      "its times measure nothing."
    )
  lines += [
    "",
    f"Float32 BERT-shaped trees with Paddle's names, layerwise_decay {DECAY}, weight decay {WD} "
    "(not on biases and norms). JAX steps: `jax.jit`, donated, held warm and taken in turn, one step "
    f"each per round in a rotating order, {results['rounds']} rounds; times are medians. "
    '"Ratio of medians" divides the medians of the row; "paired" is the median (quartiles) of '
    "the per-round ratios, which cancels the load the rounds share. "
    f"torch and paddle: alone, median of {results['repeats']} steps after a warm-up. "
    '"B / param" is the least a step must read and write; "moved (XLA)" is what the compiled '
    "step reads and writes (XLA's cost analysis), in as many loops over memory per leaf as "
    '"loops / leaf" says.',
  ]
  if m["device_time"]:
    lines[-1] += (
      f" Device time: {results['device_steps']} steps inside one jit (`lax.fori_loop`), "
      f"{results['device_rounds']} rounds in turn; floor: the step's bytes at the bandwidth of "
      "the device copy (bytes read + written)."
    )
  lines += ["", *main_table(results["rows"], m)]
  if results["bf16_rows"]:
    lines += ["", "bf16 parameters, timed in the same rounds as float32 ones:", ""]
    lines += bf16_table(results["bf16_rows"], m)
  if "compiles" in results:
    lines += ["", *compile_table(results["compiles"], results["compile_tree"])]
  if "e2e" in results:
    lines += ["", *e2e_table(results["e2e"])]
  lines += ["", *summary(results)]
  return "\n".join(lines)


# --- The run -----------------------------------------------------------------------------------


def _available(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info() -> dict:
  """The backend, its device and memory, the date and the versions, for the table's header."""
  import jax

  backend = jax.default_backend()
  cpu = f"{_cpu_model()}, {platform.machine()}, {os.cpu_count()} cores"
  if backend == "cpu":
    name = _cpu_model()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    description = f"JAX backend cpu: {cpu}, {memory / 2**30:.0f} GiB"
  else:
    device = jax.local_devices()[0]
    name = f"{device.device_kind} ({len(jax.local_devices())} visible, one used)"
    memory = (device.memory_stats() or {}).get("bytes_limit", 16 * 2**30)
    description = f"JAX backend {backend}: {name}, {memory / 2**30:.0f} GiB usable; host {cpu}"
  packages = ["jax", "jaxlib", "optax", "flax", "torch", "paddlepaddle"]
  versions = ", ".join(f"{p} {v}" for p in packages if (v := _version(p)))
  return dict(
    backend=backend,
    device_name=name,
    memory_bytes=memory,
    description=description,
    versions=f"Python {platform.python_version()}, {versions}",
    date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
  )


def run_e2e(args, worker: "Worker | None" = None) -> dict:
  """The whole steps, taken in turn in one worker."""
  worker = worker or Worker(e2e_steppers, args.e2e_size, args.e2e_steps, args.warmup)
  names = list(worker.info) if isinstance(worker.info, dict) else []
  try:
    times = in_turn([(worker, k, k) for k in names], args.e2e_rounds)
  finally:
    worker.close()
  e2e = dict(size=args.e2e_size, rounds=args.e2e_rounds, steps=args.e2e_steps, times=times)
  if isinstance(worker.info, str):
    return e2e | dict(error=worker.info, n=0)
  return e2e | dict(n=next(iter(worker.info.values()))["n"], rows=e2e_rows(times))


def parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps (tests)")
  parser.add_argument("--trees", nargs="*", choices=sorted(TREES), default=None)
  parser.add_argument("--sections", nargs="*", choices=["step", "compile", "e2e"], default=None)
  parser.add_argument("--rounds", type=int, default=None, help="rounds in turn, JAX")
  parser.add_argument("--repeats", type=int, default=None, help="timed steps, PyTorch and Paddle")
  parser.add_argument(
    "--device-time",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="also N steps inside one jit (default: on a GPU or TPU)",
  )
  parser.add_argument("--device-steps", type=int, default=None, help="steps inside one jit")
  parser.add_argument("--device-rounds", type=int, default=None)
  parser.add_argument(
    "--memory",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="each configuration alone, for its peak memory (not in --quick)",
  )
  parser.add_argument("--e2e-size", choices=sorted(E2E_SIZES), default=None)
  parser.add_argument("--e2e-rounds", type=int, default=None)
  parser.add_argument("--e2e-steps", type=int, default=None, help="steps per round")
  parser.add_argument("--compile-rounds", type=int, default=None)
  parser.add_argument("--out", default=None, help="path without suffix for .md, .json (, .png)")
  return parser.parse_args(argv)


def complete(args: argparse.Namespace, machine: dict) -> argparse.Namespace:
  """The defaults that depend on the backend (and --quick)."""
  gpu, quick = machine["backend"] != "cpu", args.quick

  def default(name, quick_value, cpu_value, gpu_value):
    if getattr(args, name) is None:
      setattr(args, name, quick_value if quick else gpu_value if gpu else cpu_value)

  big = 36 * n_params("1.3b") < 0.7 * machine["memory_bytes"]  # adamw and adamwdl held at once
  trees = ["bert-base", "bert-large"]
  default("trees", ["tiny"], trees, trees + ["1.3b"] * big)
  default(
    "sections", ["step", "compile", "e2e"], ["step", "compile", "e2e"], ["step", "compile", "e2e"]
  )
  default("rounds", 5, 30, 15)
  default("repeats", 3, 10, 30)
  default("device_steps", 3, 20, 20)
  default("device_rounds", 2, 5, 5)
  default("memory", False, True, True)
  default("device_time", gpu, False, True)
  default("e2e_size", "tiny", "bert-mini", "bert-base")
  default("e2e_rounds", 3, 20, 12)
  default("e2e_steps", 1, 1, 5)
  default("compile_rounds", 1, 8, 5)
  results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
  suffix = ("-gpu" if gpu else "") + ("-quick" if quick else "")  # quick: git-ignored
  default("out", results + suffix, results + suffix, results + suffix)
  args.warmup = 1 if quick else 3
  args.compile_tree = "tiny" if quick else "bert-large"
  return args


def _progress(start: float, text: str) -> None:
  t = os.times()  # processes ended so far: CPU seconds, to see where a slow run went
  cpu = t.user + t.system + t.children_user + t.children_system
  print(
    f"[{time.perf_counter() - start:4.0f} s, cpu {cpu:4.0f} s] {text}", file=sys.stderr, flush=True
  )


def main(argv=None) -> dict:
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # processes share one GPU
  start = time.perf_counter()
  args = parse_args(argv)
  if args.quick:  # before jax starts here and in every process started from here
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_XLA_FLAGS}".strip()
  machine = machine_info()
  args = complete(args, machine)
  machine["device_time"] = args.device_time
  results = dict(machine=machine, quick=args.quick, trees=[], rows=[], bf16_rows=[])
  results |= {k: getattr(args, k) for k in ("rounds", "repeats", "device_steps", "device_rounds")}
  _progress(start, f"{machine['description']}; writing {args.out}.*")
  e2e_worker = None
  if args.quick and "e2e" in args.sections:  # compiling beside the rest: quick, not measured
    whats = tuple(E2E_WHAT[1:])  # the optimizers only: forward + backward is one compile more
    e2e_worker = Worker(e2e_steppers, args.e2e_size, args.e2e_steps, args.warmup, whats, wait=False)
  for tree in args.trees if "step" in args.sections else []:
    _progress(start, f"optimizer steps, {tree} tree")
    result = run_tree(tree, args, machine)
    results["trees"].append(result)
    results["rows"] += tree_rows(result)
    results["bf16_rows"] += bf16_rows(result)
    write_results(args.out, results)
  if "compile" in args.sections:
    _progress(start, f"compile times, {args.compile_tree} tree")
    labels = ["optax.adamw", "adamwdl"]
    results["compiles"] = isolated(
      (compile_seconds, labels, args.compile_tree, args.compile_rounds)
    )[0]
    results["compile_tree"] = args.compile_tree
    write_results(args.out, results)
  if "e2e" in args.sections:
    _progress(start, f"whole steps, demo model at {args.e2e_size} width")
    results["e2e"] = run_e2e(args, e2e_worker)
  table = format_results(results)
  print(table)
  write_results(args.out, results, final=True, chart=machine["backend"] == "cpu")
  _progress(start, "done")
  return results


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
  try:
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


if __name__ == "__main__":
  if not _available("optax_adamwdl"):  # run from a checkout without installing it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
