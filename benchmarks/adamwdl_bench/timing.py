"""Timing: configurations taken in turn (paired rounds), ratios paired by round, peak memory."""

import resource
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np


def rotated(items: list, shift: int) -> list:
  """``items`` in round ``shift``'s order: each round starts one further along."""
  shift %= max(len(items), 1)
  return items[shift:] + items[:shift]


def median_time(step: Callable[[], None], warmup: int, repeats: int) -> float:
  """The median of ``repeats`` timed calls after ``warmup`` untimed ones (a configuration alone)."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


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
    for worker, label, name, steps in rotated(live, r):
      times[name].append(worker.time(label, device) / steps)
  return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
  q1, q2, q3 = np.percentile(values, [25, 50, 75])
  return float(q1), float(q2), float(q3)


def paired(times: list[float], reference: list[float]) -> tuple[float, float, float]:
  """The quartiles of the per-round ratios ``times / reference`` (the same rounds)."""
  return quartiles([t / r for t, r in zip(times, reference)])


def ratio_of_medians(times: list[float], reference: list[float]) -> float:
  return statistics.median(times) / statistics.median(reference)


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_device_mib() -> float | None:
  """Peak device memory of this process, where the backend reports it (GPU, TPU; not CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None
