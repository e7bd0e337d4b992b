"""From parameter names to learning-rate ratios: the ladder, its options and its checks.

:class:`Ladder` holds the options of the ratio rule, validated once.
:meth:`Ladder.placements` reads a tree's names and shapes (with
:func:`optax_adamwdl._layers.site`), groups layers into stacks, gives each
stack its depth and returns one :class:`Placement` per leaf: its ratio and the
rule that placed it. Everything is Python at trace time; a ratio is a float, a
NumPy vector along a scanned leaf's layer axis, or a traced scalar when the
hyperparameters are traced (``optax.inject_hyperparams``).
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_adamwdl import _checks, _layers

SetParamLrFun = Callable[[Any, Any, str], Any]
ScanAxes = Mapping[str, int] | Callable[[str], int | None] | None
Stacks = Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None

_SHOWN = 5


def first_names(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:_SHOWN])
  return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


class Placement(NamedTuple):
  """Where the ladder put one parameter, and why.

  Attributes:
    name: the parameter's dotted name.
    stack: the prefix of its stack (``""`` when the model has one stack), or
      None for a parameter outside every stack.
    position: ``"bottom"`` (below the first layer), the layer's step on the
      ladder (0 is the lowest layer), ``"top"`` (above the last layer), or
      ``"layers"`` for a scanned leaf that holds every layer.
    ratio: its learning-rate ratio (a vector along the layer axis for a
      scanned leaf).
    rule: what placed it: ``"layer"``, ``"stage/block"``, ``"scan"``,
      ``"embedding"``, ``"stem"``, ``"head"``, ``"unrecognised"`` (put at the
      top), or ``"custom"`` (``set_param_lr_fun``).
  """

  name: str
  stack: str | None
  position: int | str
  ratio: Any
  rule: str


class _UnknownDepth:
  """Passed to a ``set_param_lr_fun`` as ``n_layers`` when none is given or found."""

  def _refuse(self, *_):
    raise ValueError(
      "set_param_lr_fun used n_layers, but none was given and no parameter name matches a "
      "layer pattern, so none can be inferred: pass n_layers=..."
    )

  __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
  __truediv__ = __rtruediv__ = __floordiv__ = __pow__ = __rpow__ = __neg__ = _refuse
  __int__ = __float__ = __index__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse

  def __repr__(self) -> str:
    return "<n_layers unknown>"


def _power(decay: Any, exponent: Any) -> Any:
  if isinstance(decay, jax.Array) or isinstance(exponent, jax.Array):
    return jnp.power(decay, exponent)
  return np.power(float(decay), exponent) if isinstance(exponent, np.ndarray) else decay**exponent


def _steps(indices: set[tuple[int, ...]], stage_wise: bool) -> dict[tuple[int, ...], int]:
  """Each layer index's step on its stack's ladder.

  A plain index is its own step. Blocks nested in stages, (stage, block), are
  counted stage-major across the stack (a stage's own parameters, (stage,),
  take the step of its first block), or one step per stage when
  ``stage_wise``.
  """
  if stage_wise or all(len(i) == 1 for i in indices):
    return {i: i[0] for i in indices}
  blocks: dict[int, int] = {}
  for i in indices:
    blocks[i[0]] = max(blocks.get(i[0], 0), i[1] + 1 if len(i) == 2 else 0)
  offset, total = {}, 0
  for stage in sorted(blocks):
    offset[stage], total = total, total + blocks[stage]
  return {i: offset[i[0]] + (i[1] if len(i) == 2 else 0) for i in indices}


def _roots(prefixes: list[str]) -> list[str]:
  """Each stack's root: the shortest prefix of its layers' prefix that no other stack shares."""
  if len(prefixes) == 1:
    return [""]
  split = [p.split(".") for p in prefixes]
  roots = []
  for i, parts in enumerate(split):
    others = [o for j, o in enumerate(split) if j != i]
    m = next(
      (m for m in range(1, len(parts) + 1) if all(o[:m] != parts[:m] for o in others)), len(parts)
    )
    roots.append(".".join(parts[:m]))
  return roots


def _within(name: str, prefix: str) -> bool:
  return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _sequences(names: Sequence[str], sites: Sequence[_layers.Site]) -> frozenset[str]:
  """The lists that hold different kinds of modules (an ``nnx.Sequential`` of LayerNorm and Linear).

  A stack's layers share their parameter names (one may add some, as T5's
  first block adds its relative-position bias). A list of two or more
  children none of whose names are among another's is a sequence of
  different modules, not a stack, whatever it is called.
  """
  children: dict[str, dict[int, set[str]]] = {}
  nested = set()
  for name, s in zip(names, sites):
    if s.kind != "layer":
      continue
    if len(s.index) != 1:
      nested.add(s.prefix)
    inner = name[len(s.prefix) :].lstrip("._").partition(".")[2]
    children.setdefault(s.prefix, {}).setdefault(s.index[0], set()).add(inner)
  sequences = set()
  for prefix, named in children.items():
    kinds = list(named.values())
    if prefix in nested or len(kinds) < 2:
      continue
    if not any(a <= b for i, a in enumerate(kinds) for j, b in enumerate(kinds) if i != j):
      sequences.add(prefix)
  return frozenset(sequences)


class _Stack(NamedTuple):
  decay: Any
  depth: Any  # int, traced, or None when the stack has no layer
  steps: dict[tuple[int, ...], int]


@dataclasses.dataclass(frozen=True)
class Ladder:
  """The options of the ratio rule, validated once; see :func:`optax_adamwdl.scale_by_layerwise_lr`.

  Numbers are kept as Python numbers when concrete (so that a ladder is
  hashable and its placements cached) and as they are when traced.
  """

  decay: Any = 1.0
  n_layers: Any = None
  rule: SetParamLrFun | None = None
  stacks: tuple[tuple[str, Any, Any], ...] = ()
  scan_axes: Any = None
  stage_wise: bool = False
  head_ratio: Any = 1.0
  depth_normalized: bool = False
  min_ratio: Any = 0.0
  freeze_below: Any = None

  @classmethod
  def build(
    cls,
    layerwise_decay: Any = 1.0,
    n_layers: Any = None,
    set_param_lr_fun: SetParamLrFun | None = None,
    *,
    stacks: Stacks = None,
    scan_axes: ScanAxes = None,
    stage_wise: bool = False,
    head_ratio: Any = 1.0,
    depth_normalized: bool = False,
    min_ratio: Any = 0.0,
    freeze_below: Any = None,
  ) -> "Ladder":
    """Checks the public keyword arguments and returns them as a ladder."""
    _checks.check_range("layerwise_decay", layerwise_decay, low=0.0, low_inclusive=False)
    _checks.check_range("head_ratio", head_ratio, low=0.0)
    _checks.check_range("min_ratio", min_ratio, low=0.0)
    if freeze_below is not None:
      _checks.check_range("freeze_below", freeze_below, low=0.0)
    _checks.check_callable("set_param_lr_fun", set_param_lr_fun, "(decay_rate, n_layers, name)")
    ladder = cls(
      decay=_checks.number_or_traced("layerwise_decay", layerwise_decay),
      n_layers=_checks.check_n_layers("n_layers", n_layers),
      rule=set_param_lr_fun,
      stacks=_checks.check_stacks(stacks),
      scan_axes=_checks.check_scan_axes(scan_axes),
      stage_wise=bool(stage_wise),
      head_ratio=_checks.number_or_traced("head_ratio", head_ratio),
      depth_normalized=bool(depth_normalized),
      min_ratio=_checks.number_or_traced("min_ratio", min_ratio),
      freeze_below=None
      if freeze_below is None
      else _checks.number_or_traced("freeze_below", freeze_below),
    )
    refinements = ladder.stacks or ladder.scan_axes is not None or ladder.stage_wise
    head = ladder.head_ratio  # traced under inject_hyperparams (its default too): unchecked
    if ladder.rule is not None and (
      refinements or ladder.depth_normalized or (isinstance(head, int | float) and head != 1)
    ):
      raise ValueError(
        "stacks, scan_axes, stage_wise, head_ratio and depth_normalized refine the default "
        "ladder; set_param_lr_fun replaces it. Give one or the other."
      )
    return ladder

  @property
  def numbers(self) -> tuple[Any, ...]:
    stack_numbers = [v for _, n, d in self.stacks for v in (n, d)]
    return (self.decay, self.n_layers, self.head_ratio, self.min_ratio, self.freeze_below,
            *stack_numbers)  # fmt: skip

  def with_numbers(self, numbers: Sequence[Any]) -> "Ladder":
    """This ladder with ``numbers`` (concrete values of :attr:`numbers`) in place, checked again."""
    decay, n_layers, head_ratio, min_ratio, freeze_below, *stack_numbers = numbers
    stacks = {
      p: {k: v for k, v in (("n_layers", n), ("decay", d)) if v is not None}
      for (p, _, _), n, d in zip(self.stacks, stack_numbers[::2], stack_numbers[1::2])
    }
    scan_axes = dict(self.scan_axes) if isinstance(self.scan_axes, tuple) else self.scan_axes
    return Ladder.build(
      decay, n_layers, self.rule, stacks=stacks or None, scan_axes=scan_axes,
      stage_wise=self.stage_wise, head_ratio=head_ratio, depth_normalized=self.depth_normalized,
      min_ratio=min_ratio, freeze_below=freeze_below,
    )  # fmt: skip

  @property
  def concrete(self) -> bool:
    return not any(_checks.is_traced(v) or isinstance(v, jax.Array) for v in self.numbers)

  @property
  def scales(self) -> bool:
    """False when every ratio is 1 whatever the tree (so no layer needs to be found)."""
    decays = [self.decay, *(d for _, _, d in self.stacks if d is not None)]
    return not (
      self.concrete and self.rule is None and self.head_ratio == 1 and all(d == 1 for d in decays)
    )

  def placements(
    self, names: Sequence[str], shapes: Sequence[tuple[int, ...]], hidden: Sequence[str] = ()
  ) -> list[Placement]:
    """One placement per leaf, in order; cached when every option is concrete.

    ``hidden`` names the parameters of the model that this tree leaves out (``optax.masked``
    and ``optax.partition`` put an ``optax.MaskedNode`` in their place): they are no leaves, but
    they tell a stack whose layers are partly hidden from a sequence of different modules.
    """
    if self.concrete:
      key = (tuple(names), tuple(map(tuple, shapes)), tuple(hidden))
      return list(_cached_placements(self, *key))
    return self._placements(names, shapes, hidden)

  def _placements(self, names, shapes, hidden=()) -> list[Placement]:
    if not names:
      return []  # An empty tree (or optax.tree_map_params' placeholder) has nothing to scale.
    sites = [self._site(name, shape) for name, shape in zip(names, shapes)]
    given = [p for p, _, _ in self.stacks]
    whole = [*names, *hidden]
    sequences = frozenset(
      q
      for q in _sequences(whole, sites + [_layers.site(n) for n in hidden])
      if not any(_within(q, p) for p in given)
    )
    if sequences:
      sites = [
        _layers.site(n, sequences) if s.kind == "layer" and s.prefix in sequences else s
        for n, s in zip(names, sites)
      ]
    towers = self._towers(names, sites)
    stacks = {
      t: self._stack(t, names, sites, towers) for t in dict.fromkeys(towers) if t is not None
    }
    if self.rule is not None:
      placed = self._custom(names, sites, towers, stacks)
    else:
      self._check_layers_found(names, stacks, sequences)
      placed = [self._place(n, s, t, stacks) for n, s, t in zip(names, sites, towers)]
    return [self._clamped(p) for p in placed]

  def _site(self, name: str, shape: tuple[int, ...]) -> _layers.Site:
    """The name's site; a scanned leaf's is ("scanned", (length, axis, ndim), prefix)."""
    if self.scan_axes is None:
      return _layers.site(name)
    parts = name.split(".")
    if callable(self.scan_axes):
      axis, prefix = self.scan_axes(name), "scan_axes"  # every leaf it scans: one stack
    else:
      keys = dict(self.scan_axes)
      at = next((i for i, part in enumerate(parts) if part in keys), None)
      # Not scanned: a leaf of a list (the component is followed by an index) or inside a
      # component that names where it sits ("patch_embed.layers.0.kernel": a Sequential).
      if at is not None and (
        (at + 1 < len(parts) and parts[at + 1].isdigit())
        or _layers.site(".".join(parts[:at])).kind != "unrecognised"
      ):
        at = None
      axis = None if at is None else keys[parts[at]]
      prefix = "" if at is None else ".".join(parts[: at + 1])
    if axis is None:
      return _layers.site(name)
    if not isinstance(axis, int) or isinstance(axis, bool) or not -len(shape) <= axis < len(shape):
      raise ValueError(f"scan_axes gives axis {axis!r} for parameter {name!r} of shape {shape}.")
    axis %= len(shape)
    return _layers.Site("scanned", (shape[axis], axis, len(shape)), prefix)

  def _towers(self, names, sites) -> list[str | None]:
    """Each leaf's stack: a given stack's prefix, an automatic stack's root, or None."""
    given = [p for p, _, _ in self.stacks]
    own = [max((p for p in given if _within(n, p)), key=len, default=None) for n in names]
    for p in given:
      if p not in own:
        raise ValueError(f"stacks: no parameter name starts with {p!r} ({first_names(names)}).")
    self._check_scans_found(sites)
    layered = [s.prefix for s, o in zip(sites, own) if o is None and s.kind in ("layer", "scanned")]
    prefixes = list(dict.fromkeys(layered))
    roots = _roots(prefixes + given)[: len(prefixes)] if prefixes else []
    towers = []
    for name, o in zip(names, own):
      inside = [r for r in roots if _within(name, r)]
      towers.append(o if o is not None else max(inside, key=len, default=None))
    return towers

  def _check_scans_found(self, sites) -> None:
    if self.scan_axes is None:
      return
    scanned = {s.prefix.rsplit(".", 1)[-1] for s in sites if s.kind == "scanned"}
    keys = ["scan_axes"] if callable(self.scan_axes) else [k for k, _ in self.scan_axes]
    missing = [k for k in keys if k not in scanned]
    if missing:
      raise ValueError(
        f"scan_axes: no parameter name has a component {missing[0]!r} "
        "(a function: it returned an axis for no parameter); see optax_adamwdl.param_names."
      )

  def _stack(self, tower: str, names, sites, towers) -> _Stack:
    given = dict((p, (n, d)) for p, n, d in self.stacks).get(tower, (None, None))
    decay = self.decay if given[1] is None else given[1]
    n_layers = self.n_layers if given[0] is None else given[0]
    members = [(n, s) for n, s, t in zip(names, sites, towers) if t == tower]
    lengths: dict[int, str] = {}  # number of layers -> a leaf that holds that many
    for n, s in members:
      if s.kind == "scanned":
        lengths.setdefault(s.index[0], n)
    if len(lengths) > 1:
      found = ", ".join(f"{n!r} holds {length}" for length, n in sorted(lengths.items()))
      raise ValueError(
        f"Scanned leaves of one stack hold different numbers of layers ({found}): check "
        "scan_axes (each needs the axis along which that leaf stacks its layers)."
      )
    steps = _steps({s.index for _, s in members if s.kind == "layer"}, self.stage_wise)
    found = max([*(v + 1 for v in steps.values()), *lengths], default=None)
    if _checks.is_traced(n_layers) or isinstance(n_layers, jax.Array):
      return _Stack(decay, n_layers, steps)
    if n_layers is not None and found is not None and n_layers < found and self.rule is None:
      deepest = next(
        n for n, s in members if s.kind == "scanned" or steps.get(s.index) == found - 1
      )
      raise ValueError(
        f"n_layers={n_layers} but parameter {deepest!r} is in layer {found - 1}, so n_layers "
        f"must be at least {found} (or None to infer it); a smaller value would give ratios "
        "above 1."
      )
    return _Stack(decay, found if n_layers is None else n_layers, steps)

  def _check_layers_found(self, names, stacks, sequences) -> None:
    if self.scales and self.concrete and all(s.depth is None for s in stacks.values()):
      if any(d != 1 for d in [self.decay, *(d for _, _, d in self.stacks if d is not None)]):
        raise ValueError(
          "layerwise_decay != 1 but no parameter name is recognised as a layer of a layer "
          f"stack ({first_names(names)}); every ratio would stay 1. For scanned layers (one "
          "leaf holding every layer) pass scan_axes={'<name of the scanned module>': <axis>}; "
          "otherwise pass set_param_lr_fun=lambda decay_rate, n_layers, name: ... that returns "
          "each parameter's ratio. See optax_adamwdl.param_names for the names it receives."
          + "".join(
            f" {q!r} holds a different kind of module in each child, so it is read as a "
            f"sequence, not a stack of layers; if it is a stack, pass stacks=[{q!r}]."
            for q in sorted(sequences)
          )
        )

  def _exponent_ratio(self, stack: _Stack, exponent: Any) -> Any:
    if self.depth_normalized:
      exponent = exponent / (stack.depth + 1)
    return _power(stack.decay, exponent)

  def _place(self, name, site, tower, stacks) -> Placement:
    stack = stacks.get(tower)
    if site.kind in ("layer", "scanned") and stack.depth is None:  # traced decay, no depth
      return Placement(name, tower, "top", 1.0, site.kind)
    if site.kind == "layer":
      step = stack.steps[site.index]
      rule = "stage/block" if len(site.index) == 2 and not self.stage_wise else "layer"
      return Placement(name, tower, step, self._exponent_ratio(stack, stack.depth - step), rule)
    if site.kind == "scanned":
      length, axis, ndim = site.index
      shape = [1] * ndim
      shape[axis] = length
      steps = np.arange(length).reshape(shape)
      depth = jnp.asarray(stack.depth) if isinstance(stack.depth, jax.Array) else stack.depth
      return Placement(name, tower, "layers", self._exponent_ratio(stack, depth - steps), "scan")
    if site.kind in ("embedding", "stem"):
      if stack is None:  # outside every stack: at the bottom of the deepest
        deepest = [s for s in stacks.values() if s.depth is not None]
        stack = max(deepest, key=lambda s: s.depth if isinstance(s.depth, int) else 0, default=None)
      if stack is None or stack.depth is None:
        return Placement(name, tower, "bottom", 1.0, site.kind)
      return Placement(
        name, tower, "bottom", self._exponent_ratio(stack, stack.depth + 1), site.kind
      )
    return Placement(name, tower, "top", self.head_ratio, site.kind)

  def _custom(self, names, sites, towers, stacks) -> list[Placement]:
    depths = [s.depth for s in stacks.values() if isinstance(s.depth, int)]
    n_layers = self.n_layers if self.n_layers is not None else max(depths, default=None)
    if n_layers is None:
      n_layers = _UnknownDepth()
    placed = []
    for name, site, tower in zip(names, sites, towers):
      ratio = self.rule(self.decay, n_layers, name)
      if self.concrete:
        ratio = _checks.rule_ratio(ratio, name)
      position = "layers" if site.kind == "scanned" else "bottom"
      position = site.index[0] if site.kind == "layer" else position
      position = "top" if site.kind in ("head", "unrecognised") else position
      placed.append(Placement(name, tower, position, ratio, "custom"))
    if self.concrete and self.decay != 1 and all(np.all(p.ratio == 1.0) for p in placed):
      raise ValueError(
        f"layerwise_decay={self.decay} but set_param_lr_fun gave every parameter ratio 1.0 "
        f"({first_names(names)}); check the names it matches against "
        "optax_adamwdl.param_names(params)."
      )
    return placed

  def _clamped(self, placement: Placement) -> Placement:
    """Raises the ratio to ``min_ratio``, zeroes it below ``freeze_below``, and checks it."""
    ratio = raw = placement.ratio
    traced = not self.concrete or isinstance(ratio, jax.Array)
    xp = jnp if traced else np
    if traced or self.min_ratio > 0:
      ratio = xp.maximum(ratio, self.min_ratio)
    if self.freeze_below is not None:
      ratio = xp.where(ratio < self.freeze_below, 0.0, ratio)
    if traced:
      return placement._replace(ratio=ratio)
    ratio = float(ratio) if np.ndim(ratio) == 0 else np.asarray(ratio, np.float64)
    _checks.check_representable(placement, raw, ratio, self.freeze_below)
    return placement._replace(ratio=ratio)


@functools.lru_cache(maxsize=64)
def _cached_placements(ladder: Ladder, names: tuple, shapes: tuple, hidden: tuple) -> tuple:
  return tuple(ladder._placements(names, shapes, hidden))
