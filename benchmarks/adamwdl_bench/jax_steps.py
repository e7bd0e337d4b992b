"""What a JAX worker holds: each configuration's step, jitted, donated and warm; what it moves."""

import re

import jax
import jax.numpy as jnp

from adamwdl_bench.floors import FLOORS, floor_stepper
from adamwdl_bench.problems import (
  CONFIGS,
  TREES,
  bert_shapes,
  jax_problem,
  make_tx,
  optimizer_step,
  tree_map_jit,
)
from adamwdl_bench.timing import peak_device_mib, peak_rss_mib
from adamwdl_bench.workers import Stepper


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


def _state_sizes(state_leaves) -> dict:
  """Bytes of the state's arrays, and how many scalars (step counts, ratios) it has besides."""
  arrays = [x for x in state_leaves if x.shape]
  return dict(
    state_bytes=sum(x.nbytes for x in arrays), state_scalars=len(state_leaves) - len(arrays)
  )


def jax_stepper(label: str, tree: str, params, grads, device_steps: int = 0, own=False) -> Stepper:
  """A jitted, donated step of ``label`` on (a copy of) ``params``, and what it moves and keeps."""
  n = sum(x.size for x in jax.tree.leaves(grads))
  if label in FLOORS:
    return floor_stepper(label, n, grads, device_steps)
  dtype, bytes_per_param = CONFIGS[label]
  if jax.tree.leaves(params)[0].dtype != dtype:
    params, grads, own = *tree_map_jit(lambda x: x.astype(dtype), (params, grads)), True
  carry = {"p": params if own else tree_map_jit(jnp.copy, params)}  # donated: its own copy
  tx = make_tx(label, bert_shapes(**TREES[tree]))
  carry["s"] = jax.jit(tx.init)(carry["p"])
  one = optimizer_step(tx)

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
  return dict(peak_rss_mib=peak_rss_mib(), peak_device_mib=peak_device_mib())
