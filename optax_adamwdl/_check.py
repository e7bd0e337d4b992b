"""Checking the ladder against the model: the order in which its forward pass reads each parameter.

:func:`check_ladder` traces a forward pass with ``jax.make_jaxpr`` (nothing is
compiled or run), numbers its equations in execution order and finds the
equations that read each parameter; the result, a :class:`LadderCheck`, names
the parameters whose ratios contradict that order, the shared ones and the
unused ones.
"""

import dataclasses
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.extend import core as jex

from optax_adamwdl._ladder import Placement, placements
from optax_adamwdl._ladder_options import LadderOptions, SetParamLrFun
from optax_adamwdl._names import leaf_names

# Equations that only change a parameter's dtype, shape or layout, or stack parameters together:
# their output stands for the parameters, and an equation that reads it reads them.
_VIEWS = frozenset(
  {
    "broadcast_in_dim",
    "concatenate",
    "convert_element_type",
    "copy",
    "reduce_precision",
    "reshape",
    "sharding_constraint",
    "squeeze",
    "stack",
    "stop_gradient",
    "transpose",
  }
)
_PASS_THROUGH = frozenset({"device_put", "optimization_barrier"})  # output i is input i
_SHOWN = 4
_RTOL = 1e-9


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
class _Loop:
  """A scan or while loop: how each parameter entered it ("const", "carry" or "xs", sliced per
  iteration) and which of them its body reads."""

  entries: dict[int, str]
  reverse: bool
  parent: "_Loop | None"
  read: set[int] = dataclasses.field(default_factory=set)


def _open(jaxpr: Any) -> Any:
  return jaxpr.jaxpr if isinstance(jaxpr, jex.ClosedJaxpr) else jaxpr


class _Reads:
  """The positions, in execution order, of the equations that read each parameter.

  Every equation gets the next position, the equations of a called function
  (``jit``, ``custom_jvp``/``custom_vjp``, ``checkpoint``) or of a ``cond``
  branch in place, a loop's body once. A variable stands for the parameters
  it is a view of (``_VIEWS``), also inside called functions and loops.
  """

  def __init__(self, n: int):
    self.at: list[list[int]] = [[] for _ in range(n)]
    self.loops: list[_Loop] = []
    self._clock = 0
    self._active: list[_Loop] = []

  def walk(self, jaxpr: Any, env: dict) -> list:
    """Walks ``jaxpr`` whose variables ``env`` maps to parameters; returns its outputs' ones."""
    for eqn in jaxpr.eqns:
      self._clock += 1
      ins = [None if isinstance(v, jex.Literal) else env.get(v) for v in eqn.invars]
      if any(ins):
        self._equation(eqn, ins, env)
    return [None if isinstance(v, jex.Literal) else env.get(v) for v in jaxpr.outvars]

  def read(self, ins: list) -> None:
    for params in ins:
      for i in params or ():
        self.at[i].append(self._clock)
        for loop in self._active:
          if i in loop.entries:
            loop.read.add(i)

  def finish(self, outs: list) -> None:
    """Counts the parameters that the forward pass returns as read after everything."""
    self._clock += 1
    self.read(outs)

  def _call(self, jaxpr: Any, ins: list) -> list:
    jaxpr = _open(jaxpr)
    return self.walk(jaxpr, {v: a for v, a in zip(jaxpr.invars, ins) if a})

  def _loop(self, ins: list, kinds: list[str], reverse: bool, bodies: list) -> None:
    entries = {i: kind for a, kind in zip(ins, kinds) if a for i in a}
    loop = _Loop(entries, reverse, self._active[-1] if self._active else None)
    self.loops.append(loop)
    self._active.append(loop)
    for jaxpr, args in bodies:
      self._call(jaxpr, args)
    self._active.pop()

  def _equation(self, eqn: Any, ins: list, env: dict) -> None:
    name, params = eqn.primitive.name, eqn.params
    if name == "scan":
      consts, carry = params["num_consts"], params["num_carry"]
      kinds = ["const"] * consts + ["carry"] * carry + ["xs"] * (len(ins) - consts - carry)
      self._loop(ins, kinds, params["reverse"], [(params["jaxpr"], ins)])
    elif name == "while":
      cond, body = params["cond_nconsts"], params["body_nconsts"]
      carry = ins[cond + body :]
      kinds = ["const"] * (cond + body) + ["carry"] * len(carry)
      bodies = [(params["cond_jaxpr"], ins[:cond] + carry), (params["body_jaxpr"], ins[cond:])]
      self._loop(ins, kinds, False, bodies)
    elif name == "cond":
      self.read(ins[:1])
      for branch in params["branches"]:
        self._call(branch, ins[1:])
    else:
      subs = list(jex.jaxprs_in_params(params))
      if len(subs) == 1 and len(subs[0].invars) == len(ins):
        env.update((v, a) for v, a in zip(eqn.outvars, self._call(subs[0], ins)) if a)
      elif not subs and name in _PASS_THROUGH:
        env.update((v, a) for v, a in zip(eqn.outvars, ins) if a)
      elif (
        not subs
        and name in _VIEWS
        and all(a for a, v in zip(ins, eqn.invars) if not isinstance(v, jex.Literal))
      ):
        env[eqn.outvars[0]] = tuple(sorted({i for a in ins if a for i in a}))
      else:
        self.read(ins)


def _is_array(x: Any) -> bool:
  return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def _trace(forward: Callable, params: Any, example_inputs: tuple) -> tuple[Any, _Reads]:
  """The parameter tree and where ``forward(params, *example_inputs)`` reads each leaf."""
  leaves, treedef = jax.tree.flatten(example_inputs)
  arrays = [x for x in leaves if _is_array(x)]

  def inputs(traced):
    traced = iter(traced)
    return treedef.unflatten([next(traced) if _is_array(x) else x for x in leaves])

  nnx = sys.modules.get("flax.nnx")  # A Module exists only if flax.nnx was imported.
  if nnx is not None and isinstance(params, nnx.Module):
    graphdef, tree, rest = nnx.split(params, nnx.Param, ...)  # rest: rng counts, statistics
    call = lambda t, r, traced: forward(nnx.merge(graphdef, t, r), *inputs(traced))
  else:
    tree, rest = params, None
    call = lambda t, _, traced: forward(t, *inputs(traced))
  jaxpr = jax.make_jaxpr(call)(tree, rest, arrays).jaxpr
  n = len(jax.tree.leaves(tree))
  reads = _Reads(n)
  reads.finish(reads.walk(jaxpr, {v: (i,) for i, v in enumerate(jaxpr.invars[:n])}))
  return tree, reads


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


class _Analysis:
  """The ladder's placements against the reads: regions, shared parameters and problems."""

  def __init__(self, names, placed, reads: _Reads, head_ratio: float):
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

  def layer_loops(self) -> list[tuple[_Loop, str]]:
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


def check_ladder(
  forward: Callable[..., Any],
  params: Any,
  *example_inputs: Any,
  layerwise_decay: float = 0.5,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  **options: Any,
) -> LadderCheck:
  """Checks the ladder against the order in which the model's forward pass reads its parameters.

  Traces ``forward(params, *example_inputs)`` with ``jax.make_jaxpr``
  (nothing is compiled or run: ``jax.ShapeDtypeStruct`` leaves will do) and
  numbers its equations in execution order: those of a called function
  (``jit``, ``custom_jvp``, ``custom_vjp``, ``checkpoint``) and of ``cond``
  branches in place, a loop's body once. An equation *reads* a parameter
  when it takes the parameter (or a cast, reshape, transpose or stack of it)
  as an operand.

  Each layer of the ladder (one position of a stack; a stack's scanned leaves
  are one layer) *starts* at the first read of any of its parameters. A
  parameter is compared with the layers of its stack
  (:attr:`Placement.stack`), one outside every stack with the layers of all
  stacks. Each read falls *before the layers* (before the first starts),
  *in* a layer (from its start until the next one starts), or *after the
  layers* (after the last first read of every layer's parameters).

  - **Shared**: a parameter read in two or more of these places (a tied input
    and output embedding, a bias read by every layer), or read without being
    sliced inside the innermost loop that runs several layers. Shared
    parameters are listed, not checked.
  - **Problem**: a parameter whose ratio is above that of a layer starting
    after its first read, or below that of a layer starting before it (a
    parameter outside the layers first read after every layer has started
    needs only the smaller of that ratio and ``head_ratio``). A layer's
    parameters are compared with the other layers, so this also says that the
    layers run in the order of their ratios; when every parameter of a layer
    is a problem, the layer is one entry. Also a problem: a parameter outside
    the layers sliced per iteration of a loop over layers (a layer axis the
    ladder does not know), and scanned leaves that their loop runs against
    their ratios (``reverse=True``).
  - **Unused**: a parameter never read.

  Args:
    forward: the forward pass, called as ``forward(params, *example_inputs)``;
      when ``params`` is a flax nnx ``Module``, it receives a copy of that
      module whose parameters (and other state, such as rng counts) are
      traced. Evaluation mode (no dropout) is enough: the order of the
      layers does not depend on it.
    params: a pytree of parameters (arrays or ``jax.ShapeDtypeStruct``), a
      flax nnx ``State``, or a flax nnx ``Module`` (its ``nnx.Param``
      variables are the parameters).
    *example_inputs: the inputs of one call. Their array leaves (and
      ``jax.ShapeDtypeStruct``) are traced; any other leaf (a Python flag, a
      number) is passed as it is.
    layerwise_decay: the decay rate you train with (below 1, or every ratio
      is 1 and nothing can contradict the order).
    n_layers: as for :func:`optax_adamwdl.scale_by_layerwise_lr`.
    set_param_lr_fun: as for :func:`optax_adamwdl.scale_by_layerwise_lr`.
    **options: its keyword options (``stacks``, ``scan_axes``, ``stage_wise``,
      ``head_ratio``, ``depth_normalized``, ``min_ratio``, ``freeze_below``),
      so that the check sees the ladder you train with.

  Returns:
    A :class:`LadderCheck`: ``problems``, ``shared`` and ``unused``; ``ok``
    when there are neither problems nor unused parameters.

  Raises:
    ValueError: for traced hyperparameters (the check needs their values), or
      any error of the ladder itself (see
      :func:`optax_adamwdl.scale_by_layerwise_lr`).

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"embed": jnp.zeros((10, 4)), "layers": [jnp.zeros((4, 4))] * 2,
    ...           "head": jnp.zeros((4, 2))}
    >>> def forward(p, ids):
    ...   x = p["embed"][ids]
    ...   for w in p["layers"]:
    ...     x = jnp.tanh(x @ w)
    ...   return x @ p["head"]
    >>> check_ladder(forward, params, jnp.zeros(3, int)).ok
    True
    >>> head_low = lambda decay, n_layers, name: decay if name == "head" else 1.0
    >>> print(check_ladder(forward, params, jnp.zeros(3, int), set_param_lr_fun=head_low))
    problems (1):
      head
        ladder:  at the top, ratio 0.5 (custom)
        forward: first read after the layers; layers.1 starts before it, so it should get at least 1
  """
  ladder = LadderOptions.build(layerwise_decay, n_layers, set_param_lr_fun, **options)
  if not ladder.concrete:
    raise ValueError("check_ladder needs concrete hyperparameters (numbers, not traced values).")
  tree, reads = _trace(forward, params, example_inputs)
  return _Analysis(
    leaf_names(tree), placements(ladder, tree), reads, float(ladder.head_ratio)
  ).check()
