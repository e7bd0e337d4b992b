"""The floors a step is measured against: a triad over the tree (CPU, per call), a device copy.

A step must move ``bytes_per_param`` bytes per parameter; a floor times a loop that moves a known
number of bytes per element, so that a step's time can be put as a fraction of the least it takes.
"""

import statistics

import jax
import jax.numpy as jnp

from adamwdl_bench.problems import tree_map_jit
from adamwdl_bench.workers import Stepper

BYTES_PER_TRIAD_ELEMENT = 16  # a += s * b * c: read a, b, c and write a (float32)
BYTES_PER_COPY_ELEMENT = 8  # x -> x + 1: read and write x (float32)
FLOORS = ("triad", "copy")


def floor_stepper(label: str, n: int, grads, device_steps: int) -> Stepper:
  """The triad over the tree of ``grads`` (per call), or a device copy of ``n`` elements."""
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


def pct_triad(bpp: int, times: list[float], triad: list[float]) -> float:
  """A step's bandwidth as a percentage of the triad's, paired by round."""
  ratios = [bpp / BYTES_PER_TRIAD_ELEMENT * d / t for t, d in zip(times, triad)]
  return 100 * statistics.median(ratios)


def floor_seconds(bpp: int, copy: list[float]) -> float:
  """The least time a step moving ``bpp`` bytes per parameter takes, at the copy's bandwidth."""
  return bpp / BYTES_PER_COPY_ELEMENT * statistics.median(copy)


def alone_fields(bpp: int, seconds: float, triad, copy) -> dict:
  """A step timed alone (torch, paddle) against the floors' medians."""
  fields = {}
  if isinstance(triad, list):
    fields["pct_triad"] = 100 * bpp / BYTES_PER_TRIAD_ELEMENT * statistics.median(triad) / seconds
  if isinstance(copy, list):  # one synchronised step: per call is about device time here
    fields["pct_floor"] = 100 * floor_seconds(bpp, copy) / seconds
  return fields


def floor_rows(tree: str, n: int, triad, copy) -> list[dict]:
  """The floors' own rows in the main table."""
  rows = []
  if isinstance(triad, list):
    t, bpp = statistics.median(triad), BYTES_PER_TRIAD_ELEMENT
    rows.append(
      dict(tree=tree, optimizer="triad a += s*b*c", params_m=n / 1e6, bytes_per_param=bpp)
      | dict(step_ms=1e3 * t, gb_s=bpp * n / t / 1e9, pct_triad=100.0, rounds=triad)
    )
  if isinstance(copy, list):
    t, bpp = statistics.median(copy), BYTES_PER_COPY_ELEMENT
    rows.append(
      dict(tree=tree, optimizer="device copy x -> x + 1", params_m=n / 1e6, bytes_per_param=bpp)
      | dict(device_ms=1e3 * t, gb_s=bpp * n / t / 1e9, pct_floor=100.0, device_rounds=copy)
    )
  return rows
