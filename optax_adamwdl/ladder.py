"""The default ladder of ratios, and its opt-in refinements.

Without options this is Paddle's ladder (:func:`optax_adamwdl.layerwise_lr_decay`).
The options cover what no other implementation does: several stacks with their
own depth and decay, scanned layers stacked in one leaf, a multiplier for the
head, and depth-normalised exponents.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_adamwdl import _checks
from optax_adamwdl.layers import LayerId, layer_id

ScanAxes = Mapping[str, int] | Callable[[str], int | None] | None
Stacks = Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None

_STACK_KEYS = frozenset({"n_layers", "decay"})
_SHOWN = 5


def first_names(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:_SHOWN])
  return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


class Position(NamedTuple):
  """Where a leaf sits: its stack (None outside every stack) and its layer.

  ``layer`` is a layer index, "embedding", None (head, norms), or "scanned" for
  a leaf that holds ``length`` layers along ``axis``.
  """

  stack: str | None
  layer: LayerId | str
  length: int = 0
  axis: int = 0
  ndim: int = 0


def check_stacks(stacks: Stacks) -> dict[str, dict[str, Any]]:
  """Returns ``stacks`` as {prefix: {"n_layers": ..., "decay": ...}}, checked."""
  if stacks is None:
    return {}
  if isinstance(stacks, str) or not isinstance(stacks, Mapping | Sequence):
    raise TypeError(
      'stacks must map a name prefix to its options, e.g. {"encoder": {}, "decoder": '
      f'{{"decay": 0.9}}}}, or list prefixes; got {stacks!r}.'
    )
  items = stacks.items() if isinstance(stacks, Mapping) else ((p, None) for p in stacks)
  checked = {}
  for prefix, options in items:
    options = dict(options or {})
    unknown = set(options) - _STACK_KEYS
    if not isinstance(prefix, str) or not prefix or unknown:
      raise ValueError(
        f"stacks[{prefix!r}] must be a non-empty prefix with options among "
        f"{sorted(_STACK_KEYS)}; got {options!r}."
      )
    decay = options.get("decay")
    if decay is not None:
      label = f"stacks[{prefix!r}]['decay']"
      _checks.check_range(label, decay, low=0.0, low_inclusive=False)
      concrete = _checks.concrete_number(label, decay)
      decay = decay if concrete is None else concrete
    _checks.check_n_layers(options.get("n_layers"))
    checked[prefix] = {"n_layers": options.get("n_layers"), "decay": decay}
  return checked


def _stack_of(name: str, stacks: Mapping[str, Any]) -> str | None:
  matches = [p for p in stacks if name == p or name.startswith(p + ".")]
  return max(matches, key=len) if matches else None


def _scan_axis(name: str, scan_axes: ScanAxes) -> int | None:
  if scan_axes is None:
    return None
  if callable(scan_axes):
    return scan_axes(name)
  dotted = f".{name}."
  for key, axis in scan_axes.items():
    if f".{key}." in dotted:
      return axis
  return None


def positions(names, shapes, stacks, scan_axes: ScanAxes) -> list[Position]:
  out = []
  for name, shape in zip(names, shapes):
    stack = _stack_of(name, stacks)
    axis = _scan_axis(name, scan_axes)
    if axis is None:
      out.append(Position(stack, layer_id(name)))
      continue
    if not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
      raise ValueError(
        f"scan_axes gives axis {axis!r} for parameter {name!r} of shape {tuple(shape)}."
      )
    axis %= len(shape)
    out.append(Position(stack, "scanned", shape[axis], axis, len(shape)))
  return out


def _reach(p: Position) -> int | None:
  """One more than the highest layer a leaf belongs to; None for embeddings and heads."""
  if p.layer == "scanned":
    return p.length
  return p.layer + 1 if isinstance(p.layer, int) else None


def depths(names, where: list[Position], n_layers, stacks) -> dict[str | None, Any]:
  """Each stack's depth (None outside stacks): given, or inferred from its leaves."""
  result = {}
  for stack in [*stacks, None]:
    members = [(n, p) for n, p in zip(names, where) if p.stack == stack]
    if stack is not None and not members:
      raise ValueError(f"stacks: no parameter name starts with {stack!r} ({first_names(names)}).")
    own = stacks[stack]["n_layers"] if stack is not None else None
    given = n_layers if own is None else own
    reaches = [(_reach(p), n) for n, p in members if _reach(p) is not None]
    found = max(reaches)[0] if reaches else None
    concrete = _checks.check_n_layers(given)
    if given is not None and concrete is None:
      result[stack] = given  # traced by inject_hyperparams; checked at init.
      continue
    if concrete is not None and found is not None and concrete < found:
      deepest = max(reaches)[1]
      raise ValueError(
        f"n_layers={concrete} but parameter {deepest!r} reaches layer {found - 1}, so n_layers "
        f"must be at least {found} (or None to infer it); a smaller value would give ratios "
        "above 1."
      )
    result[stack] = found if concrete is None else concrete
  if stacks and result[None] is None:
    # Shared parameters outside every stack (T5's "shared" embedding) sit below the deepest stack.
    known = [d for s, d in result.items() if s is not None and d is not None]
    result[None] = max(known) if known and all(isinstance(d, int) for d in known) else None
  return result


def ladder_ratios(
  names: Sequence[str],
  shapes: Sequence[tuple[int, ...]],
  layerwise_decay: Any,
  n_layers: Any,
  *,
  stacks: Mapping[str, dict[str, Any]],
  scan_axes: ScanAxes,
  head_ratio: float,
  depth_normalized: bool,
) -> list[Any]:
  """Each leaf's ratio: a scalar, or a vector broadcast along a scanned leaf's layer axis."""
  where = positions(names, shapes, stacks, scan_axes)
  depth = depths(names, where, n_layers, stacks)
  traced_decay = _checks.concrete_number("layerwise_decay", layerwise_decay) is None
  if not traced_decay and all(d is None for d in depth.values()):
    raise ValueError(
      "layerwise_decay != 1 but no parameter name is recognised as a layer of a layer stack "
      f"({first_names(names)}); every ratio would stay 1. For scanned layers (one leaf "
      "holding every layer) pass scan_axes={'<name of the scanned module>': <axis>}; "
      "otherwise pass set_param_lr_fun=lambda decay_rate, n_layers, name: ... that returns "
      "each parameter's ratio (and n_layers=...). See optax_adamwdl.param_names for the "
      "names it receives."
    )

  def power(decay, exponent, n):
    if depth_normalized:
      exponent = exponent / (n + 1)
    if isinstance(decay, jax.Array) or isinstance(exponent, jax.Array):
      return jnp.power(decay, exponent)
    return np.power(decay, exponent) if isinstance(exponent, np.ndarray) else decay**exponent

  ratios = []
  for pos in where:
    decay = layerwise_decay
    if pos.stack is not None and stacks[pos.stack]["decay"] is not None:
      decay = stacks[pos.stack]["decay"]
    n = depth[pos.stack]
    if pos.layer is None:
      ratios.append(head_ratio)
    elif n is None:
      ratios.append(1.0)  # no layer in sight, and the decay is traced: as init decided.
    elif pos.layer == "embedding":
      ratios.append(power(decay, n + 1, n))
    elif pos.layer == "scanned":
      shape = [1] * pos.ndim
      shape[pos.axis] = pos.length
      index = np.arange(pos.length).reshape(shape)
      ratios.append(
        power(decay, n - (jnp.asarray(index) if isinstance(n, jax.Array) else index), n)
      )
    else:
      ratios.append(power(decay, n - pos.layer, n))
  return ratios


def is_identity(layerwise_decay, stacks, head_ratio) -> bool:
  """Whether the default ladder scales nothing (so no layer needs to be found)."""
  decays = [layerwise_decay, *(s["decay"] for s in stacks.values() if s["decay"] is not None)]
  return _checks.concrete_number("head_ratio", head_ratio) == 1.0 and all(
    _checks.concrete_number("layerwise_decay", d) == 1.0 for d in decays
  )


def check_options(head_ratio, min_ratio, freeze_below, scan_axes) -> None:
  _checks.check_range("head_ratio", head_ratio, low=0.0)
  _checks.check_range("min_ratio", min_ratio, low=0.0)
  if freeze_below is not None:
    _checks.check_range("freeze_below", freeze_below, low=0.0)
  if scan_axes is not None and not (callable(scan_axes) or isinstance(scan_axes, Mapping)):
    raise TypeError(
      f"scan_axes must map a name component to an axis, e.g. {{'encoderblock': 0}}, or be a "
      f"function name -> axis or None; got {scan_axes!r}."
    )
