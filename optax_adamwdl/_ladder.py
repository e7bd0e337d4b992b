"""From a tree's parameter names to learning-rate ratios: the ladder, as a pipeline of steps.

:func:`placements` reads a tree's names and shapes and returns one
:class:`Placement` per leaf, in ``jax.tree.leaves`` order:

1. sites: where each name sits (:func:`optax_adamwdl._stacks.sites`);
2. stacks: which stack each leaf belongs to (:func:`optax_adamwdl._stacks.stacks`);
3. depths: each stack's decay and number of layers (:func:`optax_adamwdl._stacks.depth`);
4. ratios: each leaf's ratio from its site and its stack (:func:`ratio`), or
   ``set_param_lr_fun``'s (:func:`custom_ratios`);
5. clamps: ``min_ratio`` and ``freeze_below``, and the check that float32 holds
   the ratio (:func:`clamped`);
6. multipliers: ``lr_mults``, the first pattern that matches the name
   multiplies the ratio (:func:`multiplied`).

Everything is Python at trace time, computed once per tree when the options
are concrete; a ratio is a float, a NumPy vector along a scanned leaf's layer
axis, or a traced scalar when the hyperparameters are traced
(``optax.inject_hyperparams``).
"""

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_adamwdl import _checks, _layers, _names, _stacks
from optax_adamwdl._ladder_options import LadderOptions
from optax_adamwdl._stacks import Stack, first_names


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
      scanned leaf), its ``lr_mults`` multiplier included.
    rule: what placed it: ``"layer"``, ``"stage/block"``, ``"scan"``,
      ``"embedding"``, ``"stem"``, ``"head"``, ``"unrecognised"`` (put at the
      top), or ``"custom"`` (``set_param_lr_fun``).
    lr_mult: the ``lr_mults`` multiplier in ``ratio`` (1.0 when no pattern
      matched).
    lr_pattern: the ``lr_mults`` pattern that matched, or None.
    weight_decay: the multiplier of the weight decay for this parameter: 0.0
      where the mask (or ``apply_decay_param_fun``) leaves it undecayed or it
      is frozen (its ratio is 0), else
      its ``wd_mults`` multiplier (1.0 when no pattern matched); None where it
      was not asked (:func:`optax_adamwdl.lr_placements` fills it in).
    wd_pattern: the ``wd_mults`` pattern that matched, or None.
    first_step: for a scanned leaf, the ladder step of its first slice (0,
      unless the list runs in series after another).
  """

  name: str
  stack: str | None
  position: int | str
  ratio: Any
  rule: str
  lr_mult: float = 1.0
  lr_pattern: str | None = None
  weight_decay: float | None = None
  wd_pattern: str | None = None
  first_step: int = 0


def _keys(tree: Any) -> tuple[tuple, tuple, tuple]:
  """The tree's names, shapes and hidden names (``optax.MaskedNode``s), hashable."""
  names = tuple(_names.leaf_names(tree))
  shapes = tuple(tuple(np.shape(x)) for x in jax.tree.leaves(tree))
  return names, shapes, tuple(_names.masked_names(tree))


def layered(options: LadderOptions, tree: Any) -> bool:
  """Whether the model of ``tree`` (its hidden parameters included) holds a layer."""
  sites, _ = _stacks.sites(options, *_keys(tree))
  return any(s.kind in ("layer", "scanned") for s in sites)


def placements(options: LadderOptions, tree: Any) -> list[Placement]:
  """The placement of each leaf of ``tree``, in ``jax.tree.leaves`` order.

  Examples:
    >>> import jax.numpy as jnp
    >>> tree = {"embed": jnp.zeros(2), "layers": [jnp.zeros(2)] * 2, "head": jnp.zeros(2)}
    >>> [p.ratio for p in placements(LadderOptions.build(0.5), tree)]
    [0.125, 1.0, 0.25, 0.5]
  """
  names, shapes, hidden = _keys(tree)
  if options.concrete:
    return list(_cached(options, names, shapes, hidden))
  return place(options, names, shapes, hidden)


@functools.lru_cache(maxsize=64)
def _cached(options: LadderOptions, names: tuple, shapes: tuple, hidden: tuple) -> tuple:
  return tuple(place(options, names, shapes, hidden))


def place(
  options: LadderOptions, names: Sequence[str], shapes: Sequence[tuple], hidden: Sequence[str] = ()
) -> list[Placement]:
  """The pipeline, on names and shapes; ``hidden`` names what ``optax.masked`` leaves out."""
  if not names:  # An empty tree (or optax.tree_map_params' placeholder) has nothing to scale,
    options.lr_mults.match(names, hidden)  # but its hidden names still check the patterns.
    return []
  whole = [*names, *hidden]
  sites, sequences = _stacks.sites(options, names, shapes, hidden)
  stack_of = _stacks.stacks(options, whole, sites, [*shapes, *[None] * len(hidden)])
  stacks = {
    k: _stacks.depth(options, k, whole, sites, stack_of)
    for k in dict.fromkeys(stack_of)
    if k is not None
  }
  sites, stack_of = sites[: len(names)], stack_of[: len(names)]
  if options.custom is not None:
    placed = custom_ratios(options, names, sites, stack_of, stacks)
  else:
    _check_layers_found(options, names, stacks, sequences)
    placed = [ratio(options, *leaf, stacks) for leaf in zip(names, sites, stack_of)]
  mults = options.lr_mults.match(names, hidden)
  return [multiplied(options, clamped(options, p), *m) for p, m in zip(placed, mults)]


def _check_layers_found(options, names, stacks, sequences) -> None:
  if not (options.scales and options.concrete) or any(
    s.depth is not None or s.hidden for s in stacks.values()
  ):
    return
  refuse_without_layers(options.decays, names, sequences)


def refuse_without_layers(decays: Sequence[Any], names: Sequence[str], sequences=()) -> None:
  """Refuses a decay other than 1 for a tree in which no layer is found."""
  if all(d == 1 for d in decays):
    return
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


def _power(decay: Any, exponent: Any) -> Any:
  if isinstance(decay, jax.Array) or isinstance(exponent, jax.Array):
    return jnp.power(decay, exponent)
  return np.power(float(decay), exponent) if isinstance(exponent, np.ndarray) else decay**exponent


def _decayed(options: LadderOptions, stack: Stack, exponent: Any) -> Any:
  if options.depth_normalized:
    exponent = exponent / (stack.depth + 1)
  return _power(stack.decay, exponent)


def ratio(
  options: LadderOptions, name: str, site: _layers.Site, key: str | None, stacks: dict
) -> Placement:
  """The default ladder's placement of one leaf, from its site and its stack."""
  stack = stacks.get(key)
  if site.kind in ("embedding", "stem", "layer", "scanned"):  # what needs a depth
    for needed in stacks.values() if stack is None else [stack]:
      _stacks.check_depth_known(key, needed)
  if site.kind in ("layer", "scanned") and stack.depth is None:  # traced decay, no depth
    return Placement(name, key, "top", 1.0, site.kind)
  if site.kind == "layer":
    step = stack.step(site)
    rule = "stage/block" if len(site.index) == 2 and not options.stage_wise else "layer"
    return Placement(name, key, step, _decayed(options, stack, stack.depth - step), rule)
  if site.kind == "scanned":
    length, axis, ndim = site.index
    shape = [1] * ndim
    shape[axis] = length
    steps = (stack.offset(site) + np.arange(length)).reshape(shape)
    depth = jnp.asarray(stack.depth) if isinstance(stack.depth, jax.Array) else stack.depth
    ratio = _decayed(options, stack, depth - steps)
    return Placement(name, key, "layers", ratio, "scan", first_step=stack.offset(site))
  if site.kind in ("embedding", "stem"):
    if stack is None:  # outside every stack: at the bottom of the deepest
      deepest = [s for s in stacks.values() if s.depth is not None]
      stack = max(deepest, key=lambda s: s.depth if isinstance(s.depth, int) else 0, default=None)
    if stack is None or stack.depth is None:
      return Placement(name, key, "bottom", 1.0, site.kind)
    return Placement(name, key, "bottom", _decayed(options, stack, stack.depth + 1), site.kind)
  return Placement(name, key, "top", options.head_ratio, site.kind)


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


def _position(site: _layers.Site) -> int | str:
  if site.kind == "layer":
    return site.index[0]
  if site.kind in ("head", "unrecognised"):
    return "top"
  return "layers" if site.kind == "scanned" else "bottom"


def custom_ratios(options, names, sites, stack_of, stacks) -> list[Placement]:
  """``set_param_lr_fun(decay, n_layers, name)`` for every leaf, checked."""
  depths = [s.depth for s in stacks.values() if isinstance(s.depth, int)]
  n_layers = options.n_layers if options.n_layers is not None else max(depths, default=None)
  if n_layers is None:
    n_layers = _UnknownDepth()
  placed = []
  for name, site, key in zip(names, sites, stack_of):
    value = options.custom(options.decay, n_layers, name)
    if options.concrete:
      value = _checks.rule_ratio(value, name)
    placed.append(Placement(name, key, _position(site), value, "custom"))
  if options.concrete and options.decay != 1 and all(np.all(p.ratio == 1.0) for p in placed):
    raise ValueError(
      f"layerwise_decay={options.decay} but set_param_lr_fun gave every parameter ratio 1.0 "
      f"({first_names(names)}); check the names it matches against "
      "optax_adamwdl.param_names(params)."
    )
  return placed


def clamped(options: LadderOptions, placement: Placement) -> Placement:
  """Raises the ratio to ``min_ratio``, zeroes it below ``freeze_below``, and checks it."""
  value = raw = placement.ratio
  traced = not options.concrete or isinstance(value, jax.Array)
  xp = jnp if traced else np
  if traced or options.min_ratio > 0:
    value = xp.maximum(value, options.min_ratio)
  if options.freeze_below is not None:
    value = xp.where(value < options.freeze_below, 0.0, value)
  if traced:
    return placement._replace(ratio=value)
  value = float(value) if np.ndim(value) == 0 else np.asarray(value, np.float64)
  _checks.check_representable(placement, raw, value, options.freeze_below)
  return placement._replace(ratio=value)


def multiplied(options: LadderOptions, placement: Placement, rule: int | None, mult: float):
  """The placement with its ``lr_mults`` multiplier in the ratio (rule: the pattern's index)."""
  if rule is None:
    return placement
  value = placement.ratio * mult
  if options.concrete and not isinstance(value, jax.Array):
    value = float(value) if np.ndim(value) == 0 else np.asarray(value, np.float64)
    tiny, huge = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    bad = (np.asarray(value) != 0) & ~((np.asarray(value) >= tiny) & (np.asarray(value) <= huge))
    if bad.any():
      raise ValueError(
        f"The learning-rate ratio of parameter {placement.name!r}, times its lr_mults "
        f"multiplier {mult!r} (pattern {options.lr_mults.rules[rule][0]!r}), is "
        f"{np.ravel(value)[np.argmax(np.ravel(bad))]!r}, which float32 cannot hold."
      )
  pattern = options.lr_mults.rules[rule][0]
  return placement._replace(ratio=value, lr_mult=mult, lr_pattern=pattern)
