"""The ladder's order against the forward pass's: regions, shared parameters and problems.

:class:`Analysis` places each read of a parameter (:mod:`optax_adamwdl._trace`)
before the layers of its stack, in a layer, or after them, and compares that
with the ladder's ratios; :func:`optax_adamwdl.check_ladder` reports it.
"""

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from optax_adamwdl import _trace
from optax_adamwdl._ladder import Placement

_RTOL = 1e-9
_SHOWN = 4


class LadderProblem(NamedTuple):
  """A parameter, or a whole layer, whose ratio contradicts the order of the forward pass.

  Attributes:
    name: the parameter's dotted name, or the layer's prefix (e.g.
      ``"encoder.layers.3"``) when every checked parameter of that layer is
      wrong.
    placement: the ladder's :class:`Placement` of the parameter (of the
      layer's first-read parameter).
    ladder: what the ladder says, in one sentence.
    forward: what the forward pass says, in one sentence.
  """

  name: str
  placement: Placement
  ladder: str
  forward: str


class SharedParameter(NamedTuple):
  """A parameter read in several places of the forward pass, which no single ratio can follow.

  Attributes:
    name: the parameter's dotted name.
    placement: the ladder's :class:`Placement` of it.
    used_in: where the forward pass reads it, in order: ``"before the
      layers"``, ``"in encoder.layers.2"``, ``"between ... and ..."``,
      ``"after the layers"``, ``"every layer of layers"`` (a loop over layers).
  """

  name: str
  placement: Placement
  used_in: tuple[str, ...]


class LadderCheck(NamedTuple):
  """What :func:`check_ladder` found; ``print`` shows it.

  Attributes:
    problems: the parameters (or layers) whose ratios contradict the forward
      pass, in the order the forward pass first reads them.
    shared: the parameters read in several places (tied embeddings, a bias
      every layer reads): named, not checked.
    unused: the names of the parameters that the forward pass never reads.
  """

  problems: tuple[LadderProblem, ...]
  shared: tuple[SharedParameter, ...]
  unused: tuple[str, ...]

  @property
  def ok(self) -> bool:
    """True when nothing contradicts the ladder and every parameter is read."""
    return not self.problems and not self.unused

  def __str__(self) -> str:
    lines = ["the ladder agrees with the forward pass"] if self.ok else []
    if self.problems:
      lines.append(f"problems ({len(self.problems)}):")
      for p in self.problems:
        lines += [f"  {p.name}", f"    ladder:  {p.ladder}", f"    forward: {p.forward}"]
    if self.shared:
      lines.append(f"shared, not checked ({len(self.shared)}):")
      for s in self.shared:
        shown = list(s.used_in)
        if len(shown) > _SHOWN:
          shown = [*shown[: _SHOWN - 1], f"... {shown[-1]} ({len(s.used_in)} places)"]
        lines.append(f"  {s.name}: {'; '.join(shown)}")
    if self.unused:
      lines.append(f"never read by the forward pass ({len(self.unused)}):")
      lines += [f"  {name}" for name in self.unused]
    return "\n".join(lines)

  __repr__ = __str__


@dataclasses.dataclass
class _Layer:
  """One layer of the ladder (a scanned leaf's layers are one) as the forward pass runs it."""

  key: tuple
  label: str
  members: list[int]
  start: int  # the first read of any of its parameters
  end: int  # the last first read of its parameters
  entry: float  # the highest ratio it starts with (a scanned leaf: its first iteration)
  exit: float  # the lowest ratio it ends with


def _is_layer(placement: Placement) -> bool:
  return placement.position == "layers" or not isinstance(placement.position, str)


def _prefix(names: list[str]) -> str:
  """A layer's name: its parameters' common prefix, up to its last index if it has one."""
  common = []
  for column in zip(*(n.split(".") for n in names)):
    if len(set(column)) > 1:
      break
    common.append(column[0])
  indices = [k for k, part in enumerate(common) if part.isdigit()]
  return ".".join(common[: indices[-1] + 1] if indices else common)


def _claim(placement: Placement, layer: str) -> str:
  """What the ladder says about one parameter, in words."""
  r = np.ravel(placement.ratio)
  ratios = f"ratio {r[0]:.4g}" if r.size == 1 else f"ratios {r[0]:.4g} to {r[-1]:.4g}"
  where = {"bottom": "at the bottom", "top": "at the top", "layers": f"in the scanned {layer}"}
  where = where.get(placement.position, f"in layer {placement.position} ({layer})")
  return f"{where}, {ratios} ({placement.rule})"


class Analysis:
  """The ladder's placements against the reads: regions, shared parameters and problems."""

  def __init__(self, names, placed, reads: _trace.Reads, head_ratio: float):
    self.names, self.placed, self.reads, self.head_ratio = names, placed, reads, head_ratio
    self.first = [min(at) if at else None for at in reads.at]
    reverse = {
      i
      for loop in reads.loops
      if loop.reverse
      for i, kind in loop.entries.items()
      if kind == "xs" and i in loop.read
    }
    # Ratios in the order the forward pass runs them (a scanned leaf's along its iterations).
    self.ratios = [np.ravel(np.asarray(p.ratio, np.float64)) for p in placed]
    self.ratios = [r[::-1] if i in reverse else r for i, r in enumerate(self.ratios)]
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(placed):
      if _is_layer(p) and self.first[i] is not None:
        groups.setdefault((p.stack, p.position), []).append(i)
    self.layers = {key: self._layer(key, members) for key, members in groups.items()}
    self.own = {i: layer for layer in self.layers.values() for i in layer.members}

  def _layer(self, key, members) -> _Layer:
    firsts = [self.first[i] for i in members]
    label = _prefix([self.names[i] for i in members]) or f"layer {key[1]}"
    entry = max(self.ratios[i][0] for i in members)
    exit_ = min(self.ratios[i][-1] for i in members)
    return _Layer(key, label, members, min(firsts), max(firsts), entry, exit_)

  def row(self, i: int) -> list[_Layer]:
    """The layers parameter ``i`` is compared with: its stack's, or every stack's outside them."""
    stack = self.placed[i].stack
    layers = [e for e in self.layers.values() if stack is None or e.key[0] == stack]
    return sorted(layers, key=lambda e: e.start)

  def region(self, t: int, row: list[_Layer], own: _Layer | None) -> tuple[Any, str]:
    """Where read ``t`` of a parameter of layer ``own`` (or None) falls: an identity, in words.

    A layer's own parameters stay in it until the next layer starts (a layer that runs
    several times in a row, as ALBERT's, reads them again).
    """
    if own is not None and own.start <= t:
      later = [e.start for e in row if e.start > own.start]
      if not later or t < min(later):
        return own.key, f"in {own.label}"
    if t < row[0].start:
      return "before", "before the layers"
    if t > max(e.end for e in row):
      return "after", "after the layers"
    layer = [e for e in row if e.start <= t][-1]
    later = [e for e in row if e.start > t]
    if t > layer.end and later:
      return layer.key, f"between {layer.label} and {later[0].label}"
    return layer.key, f"in {layer.label}"

  def layer_loops(self) -> list[tuple[_trace.Loop, str]]:
    """The innermost loops that run several layers, with the labels of those layers."""
    runs = {}
    for loop in self.reads.loops:
      layers = {self.own[i].key for i in loop.read if i in self.own}
      scanned = any(self.placed[i].position == "layers" for i in loop.read)
      if scanned or len(layers) > 1:
        runs[id(loop)] = (loop, ", ".join(sorted(self.layers[k].label for k in layers)))
    outer = set()
    for loop, _ in runs.values():
      parent = loop.parent
      while parent is not None:
        outer.add(id(parent))
        parent = parent.parent
    return [run for key, run in runs.items() if key not in outer]

  def bounds_problem(self, i: int) -> str | None:
    """What the forward pass says against parameter ``i``'s ratio, or None when they agree."""
    t, own, row = self.first[i], self.own.get(i), self.row(i)
    lower = upper = None
    for e in row:
      if e is own:
        continue
      if e.start < t and (lower is None or e.exit >= lower.exit):
        lower = e
      if e.start > t and (upper is None or e.entry < upper.entry):
        upper = e
    where = self.region(t, row, own)[1]
    first, last = self.ratios[i][0], self.ratios[i][-1]
    if upper is not None and last - upper.entry > _RTOL * abs(upper.entry):
      return (
        f"first read {where}; {upper.label} starts after it, so it should get at most "
        f"{upper.entry:.4g}"
      )
    if lower is None:
      return None
    bound, named = lower.exit, ""
    if own is None and upper is None and self.head_ratio < bound:  # heads: head_ratio will do
      bound, named = self.head_ratio, "head_ratio, "
    if bound - first > _RTOL * abs(bound):
      return (
        f"first read {where}; {lower.label} starts before it, so it should get at least "
        f"{named}{bound:.4g}"
      )
    return None

  def shared(self) -> tuple[dict[int, list[str]], dict[int, str]]:
    """Where each shared parameter is read; the problems of parameters sliced by a layer loop."""
    where: dict[int, list[str]] = {}
    for i, at in enumerate(self.reads.at):
      row = self.row(i)
      own = self.own.get(i)
      regions = dict(self.region(t, row, own) for t in sorted(set(at))) if row else {}
      if len(regions) > 1:
        where[i] = list(regions.values())
    sliced: dict[int, str] = {}
    for loop, label in self.layer_loops():
      for i in sorted(loop.read):
        if _is_layer(self.placed[i]):
          continue
        if loop.entries[i] == "xs":
          sliced[i] = (
            f"sliced per iteration of the loop over {label}, so each layer has its own slice "
            "(give it a layer axis: scan_axes)"
          )
        else:
          where.setdefault(i, []).append(f"every layer of {label}")
    return where, sliced

  def check(self) -> LadderCheck:
    names, placed, ratios = self.names, self.placed, self.ratios
    where, found = self.shared()
    for i, first in enumerate(self.first):
      if first is None or i in where or i in found or not self.row(i):
        continue
      r = ratios[i]
      if placed[i].position == "layers" and np.any(np.diff(r) < -_RTOL * np.max(np.abs(r))):
        found[i] = "the loop runs its layers in the order in which their ratios fall"
      elif (problem := self.bounds_problem(i)) is not None:
        found[i] = problem
    # (first read, name, parameter, what the forward pass says), one per parameter or layer
    problems = [(self.first[i], names[i], i, forward) for i, forward in found.items()]
    for layer in self.layers.values():
      checked = [i for i in layer.members if i not in where]
      if len(checked) > 1 and all(i in found for i in checked):  # one entry for the layer
        t, _, i, forward = min(p for p in problems if p[2] in checked)
        problems = [p for p in problems if p[2] not in checked] + [(t, layer.label, i, forward)]
    entries = []
    for _, name, i, forward in sorted(problems):
      layer = self.own.get(i)
      claim = _claim(placed[i], layer.label if layer is not None else "")
      entries.append(LadderProblem(name, placed[i], claim, forward))
    shared = [
      SharedParameter(names[i], placed[i], tuple(where[i]))
      for i in sorted(where, key=lambda i: self.first[i])
    ]
    unused = tuple(name for name, first in zip(names, self.first) if first is None)
    return LadderCheck(tuple(entries), tuple(shared), unused)
