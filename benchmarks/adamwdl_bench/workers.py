"""The processes. Every measurement runs in a fresh (spawned) worker process, which speaks one way.

A worker calls ``factory(*args)``, which returns a dict, and answers with that dict in which each
:class:`Stepper` is replaced by its ``info`` (or with the error message, if the factory raised).
Then it times one call of a stepper per request until it is closed. A job with nothing to time
(a torch step, a peak memory, compile times) is a factory whose dict holds no stepper: its answer
is its result.
"""

import contextlib
import importlib.util
import multiprocessing
import os
import time
from collections.abc import Callable
from typing import NamedTuple


class Stepper(NamedTuple):
  """A warm configuration: ``call`` runs one step, ``device`` N steps in one jit (or None)."""

  call: Callable[[], None] | None
  device: Callable[[], None] | None
  info: dict


def _serve(conn, factory: Callable[..., dict], args: tuple) -> None:
  """A worker process: holds ``factory(*args)``, times one stepper's call per request."""
  try:
    held = factory(*args)
  except Exception as error:  # reported in the table, not raised: one missing extra is no failure
    conn.send(f"{type(error).__name__}: {error}")
    return
  conn.send({k: v.info if isinstance(v, Stepper) else v for k, v in held.items()})
  while (request := conn.recv()) is not None:
    label, device = request
    fn = held[label].device if device else held[label].call
    start = time.perf_counter()
    fn()
    conn.send(time.perf_counter() - start)


@contextlib.contextmanager
def _xla_flags(flags: str):
  """XLA_FLAGS with ``flags`` added while processes start: they have it before jax reads it."""
  saved = os.environ.get("XLA_FLAGS")
  if flags:
    os.environ["XLA_FLAGS"] = f"{saved or ''} {flags}".strip()
  try:
    yield
  finally:
    if saved is None:
      os.environ.pop("XLA_FLAGS", None)
    else:
      os.environ["XLA_FLAGS"] = saved


class Worker:
  """A process holding what ``factory(*args)`` built; ``info`` is its answer, or an error message.

  Started at once; ``wait=False`` returns before it has answered (``info`` then waits for it).
  """

  def __init__(self, factory: Callable[..., dict], *args, xla_flags: str = "", wait: bool = True):
    context = multiprocessing.get_context("spawn")
    self.conn, child = context.Pipe()
    self.process = context.Process(target=_serve, args=(child, factory, args))
    with _xla_flags(xla_flags):
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
      except EOFError:  # the process died: out of memory, or an XLA flag this jaxlib does not know
        self.process.join()
        self._info = f"worker exited with code {self.process.exitcode}"
    return self._info

  def time(self, label: str, device: bool) -> float:
    """Seconds of one call of stepper ``label`` (``device``: its N steps inside one jit)."""
    self.conn.send((label, device))
    return self.conn.recv()

  def close(self) -> None:
    if self.process.is_alive() and isinstance(self.info, dict):
      self.conn.send(None)
    self.process.join()


def alone(factory: Callable[..., dict], *args) -> dict | str:
  """``factory(*args)`` in a process of its own: its result, or an error message."""
  return side_by_side([(factory, *args)], [0.0], 0.0)[0]


def side_by_side(jobs: list[tuple], sizes: list[float], budget: float) -> list:
  """Each job (factory, *args) in a process of its own, as many at once as fit in ``budget``.

  The jobs' results (or error messages), in order. A job larger than the budget runs alone.
  """
  results = []
  while len(results) < len(jobs):
    first, total, batch = len(results), 0.0, []
    for job, size in zip(jobs[first:], sizes[first:]):
      if batch and total + size > budget:
        break
      total += size
      batch.append(Worker(*job, wait=False))
    for worker in batch:
      worker.close()
    results += [worker.info for worker in batch]
  return results


def available(module: str) -> bool:
  return importlib.util.find_spec(module) is not None
