"""Reading the ladder: ratios, placements and a per-layer table of a parameter tree.

Each function takes the parameters and the configuration of :func:`optax_adamwdl.adamwdl`
(or of :func:`optax_adamwdl.scale_by_layerwise_lr`), so one dict of keyword arguments
serves both: ``lr_table(params, **config)`` shows what ``adamwdl(**config)`` will do.
"""

import inspect
import math
from typing import Any, NamedTuple

import jax
import numpy as np

from optax_adamwdl import _decay, _names
from optax_adamwdl._alias import adamwdl
from optax_adamwdl._ladder import Placement, placements
from optax_adamwdl._ladder_options import LadderOptions
from optax_adamwdl._multipliers import Multipliers

LADDER_ARGUMENTS = frozenset(inspect.signature(LadderOptions.build).parameters)
_DECAY = frozenset({"weight_decay", "mask", "apply_decay_param_fun", "wd_mults"})
_OPTIMIZER = frozenset(inspect.signature(adamwdl).parameters) - LADDER_ARGUMENTS - _DECAY


def param_placements(params: Any, layerwise_decay: Any = 1.0, *args: Any, **config: Any) -> list:
  """Each leaf's :class:`Placement` (``jax.tree.leaves`` order), weight decay filled in.

  ``config`` holds any keyword arguments of :func:`optax_adamwdl.adamwdl`; those
  that only the optimizer reads (``learning_rate``, ``b1``, ...) are ignored.
  """
  unknown = set(config) - LADDER_ARGUMENTS - _DECAY - _OPTIMIZER
  if unknown:
    raise TypeError(f"Unknown argument(s) {sorted(unknown)}: give adamwdl's keyword arguments.")
  tree = _names.parameter_tree(params)
  ladder = {k: v for k, v in config.items() if k in LADDER_ARGUMENTS}
  placed = placements(LadderOptions.build(layerwise_decay, *args, **ladder), tree)
  mults = Multipliers.build("wd_mults", config.get("wd_mults"), config.get("strict_mults", False))
  factors = _decay.decay_factors(
    tree, config.get("mask"), config.get("apply_decay_param_fun"), mults
  )
  return [
    p._replace(weight_decay=0.0 if _frozen(p) else w, wd_pattern=None if _frozen(p) else k)
    for p, (w, k) in zip(placed, factors)
  ]


def _frozen(placement: Placement) -> bool:
  """A parameter whose every ratio is 0: it does not move, nor decay."""
  ratio = placement.ratio
  return not isinstance(ratio, jax.Array) and not np.any(np.asarray(ratio) != 0)


def _tree_of(params: Any, values: list) -> Any:
  return jax.tree.structure(_names.parameter_tree(params)).unflatten(values)


def lr_placements(params: Any, layerwise_decay: Any = 1.0, *args: Any, **config: Any) -> Any:
  """Returns ``params`` with each leaf replaced by its :class:`Placement`.

  Takes the arguments of :func:`lr_ratios`. A placement says where the ladder
  put the parameter and why (``rule``), its ratio (its ``lr_mults``
  multiplier included) and its weight-decay multiplier (0.0: not decayed).

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"embed": jnp.zeros(2), "layers": [jnp.zeros(2)], "head": jnp.zeros(2)}
    >>> p = lr_placements(params, 0.5, lr_mults=[("head", 10.0)], wd_mults=[("embed", 0.0)])
    >>> p["embed"].ratio, p["embed"].weight_decay, p["head"].ratio, p["head"].lr_pattern
    (0.25, 0.0, 10.0, 'head')
  """
  return _tree_of(params, param_placements(params, layerwise_decay, *args, **config))


def lr_ratios(params: Any, layerwise_decay: Any = 1.0, *args: Any, **config: Any) -> Any:
  """Returns ``params`` with each leaf replaced by its learning-rate ratio.

  Args:
    params: a pytree of parameters (arrays or ``jax.ShapeDtypeStruct``), or a
      flax nnx model.
    layerwise_decay: the layer-wise decay rate.
    *args: ``n_layers`` and ``set_param_lr_fun``, as for
      :func:`optax_adamwdl.scale_by_layerwise_lr`.
    **config: any other keyword arguments of :func:`optax_adamwdl.adamwdl`
      (``stacks``, ``scan_axes``, ``head_ratio``, ``lr_mults``, ``wd_mults``,
      ``mask``, ...); those only the optimizer reads are ignored, so the dict
      given to ``adamwdl`` can be given here.

  Returns:
    A pytree with the structure of ``params`` whose leaves are Python floats
    (NumPy vectors along the layer axis for scanned leaves).

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"embed": jnp.zeros(2), "layers": [jnp.zeros(2), jnp.zeros(2)],
    ...           "head": jnp.zeros(2)}
    >>> lr_ratios(params, 0.5)
    {'embed': 0.125, 'head': 1.0, 'layers': [0.25, 0.5]}
  """
  placed = param_placements(params, layerwise_decay, *args, **config)
  return _tree_of(params, [p.ratio for p in placed])


class LrTableRow(NamedTuple):
  """Parameters of one stack that share a position, a ratio, a weight decay and their rules."""

  stack: str  # "" for a model with one stack, "(outside)" for parameters outside every stack
  layer: str  # "bottom", the layer's step ("0", "1", ...) or "top"
  ratio: float  # the effective ratio: the ladder's, times the lr_mults multiplier
  n_params: int
  n_tensors: int
  rule: str
  lr_pattern: str | None = None  # the lr_mults pattern that matched
  weight_decay: float | None = None  # the decay multiplier: 0 (off), 1, or a wd_mults one
  wd_pattern: str | None = None  # the wd_mults pattern that matched


class LrTable(NamedTuple):
  """Rows from the bottom of each stack up to its top; ``print`` shows them.

  ``unrecognised`` names the parameters that no rule recognised, which
  therefore got the head ratio. ``weight_decay`` is the configuration's
  :math:`\\lambda` when it was given (a number, or ``"schedule"``): the table
  then shows each row's decay, :math:`\\lambda` times the row's multiplier.
  """

  rows: tuple[LrTableRow, ...]
  unrecognised: tuple[str, ...]
  weight_decay: Any = None

  def _columns(self) -> list[tuple[str, Any, bool]]:
    """(header, cell of a row, right-aligned) of each column shown."""
    stacked = any(r.stack for r in self.rows)  # "" then names the model's own stack
    columns = [("stack", lambda r: r.stack or "(model)", False)] if stacked else []
    columns += [("layer", lambda r: r.layer, False), ("rule", lambda r: r.rule, False)]
    columns.append(("lr ratio", lambda r: f"{r.ratio:.6g}", True))
    if any(r.lr_pattern is not None for r in self.rows):
      columns.append(("lr_mults", lambda r: "" if r.lr_pattern is None else r.lr_pattern, False))
    if self.weight_decay is not None:
      columns.append(("weight decay", self._decay_cell, True))
      if any(r.wd_pattern is not None for r in self.rows):
        columns.append(("wd_mults", lambda r: r.wd_pattern or "", False))
    columns.append(("params", lambda r: f"{r.n_params:,}", True))
    return [*columns, ("tensors", lambda r: str(r.n_tensors), True)]

  def _decay_cell(self, row: LrTableRow) -> str:
    if row.ratio == 0:  # a frozen parameter does not move: nor does it decay
      return "frozen"
    if row.weight_decay == 0:
      return "off"
    if isinstance(self.weight_decay, str):
      return "on" if row.weight_decay == 1 else f"x{row.weight_decay:.6g}"
    return f"{self.weight_decay * row.weight_decay:.6g}"

  def __str__(self) -> str:
    columns = self._columns()
    header = [c[0] for c in columns]
    body = [[cell(r) for _, cell, _ in columns] for r in self.rows]
    total = ["total", *[""] * (len(columns) - 3), f"{sum(r.n_params for r in self.rows):,}",
             str(sum(r.n_tensors for r in self.rows))]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body, total]) for i in range(len(header))]

    def line(cells):
      aligned = [
        c.rjust(w) if right else c.ljust(w) for c, w, (_, _, right) in zip(cells, widths, columns)
      ]
      return "  ".join(aligned).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *map(line, body), rule, line(total)]
    if self.unrecognised:
      names = ", ".join(self.unrecognised[:8]) + (" ..." if len(self.unrecognised) > 8 else "")
      lines.append(f"not recognised (given the head ratio): {names}")
    return "\n".join(lines)

  __repr__ = __str__


def _slices(placement: Placement, size: int) -> list[tuple[Any, float, int]]:
  """(position, ratio, parameter count) of a leaf; a scanned leaf counts towards each layer."""
  ratio = np.asarray(placement.ratio)
  if placement.position != "layers":
    return [(placement.position, float(np.max(ratio)), size)]
  per_layer = np.ravel(ratio)
  first = placement.first_step
  return [(first + i, float(r), size // per_layer.size) for i, r in enumerate(per_layer)]


def _order(position: Any) -> tuple[int, int]:
  if position == "bottom":
    return (0, 0)
  return (2, 0) if position == "top" else (1, position)


def _shown_decay(config: dict) -> Any:
  """The table's weight-decay column: None (not shown) unless the configuration speaks of decay."""
  if not _DECAY & set(config):
    return None
  weight_decay = config.get("weight_decay", inspect.signature(adamwdl).parameters[
    "weight_decay"].default)  # fmt: skip
  return "schedule" if callable(weight_decay) else float(weight_decay)


def lr_table(params: Any, layerwise_decay: Any = 1.0, *args: Any, **config: Any) -> LrTable:
  """Returns the per-layer table of ratios, weight decays, parameter counts and rules.

  Takes the arguments of :func:`lr_ratios`. A row groups the parameters of one
  stack at one position with one ratio, placed by one rule (and one
  ``lr_mults`` pattern). When the configuration speaks of weight decay
  (``weight_decay``, ``mask``, ``apply_decay_param_fun`` or ``wd_mults``), the
  rows are split by decay too, and a column shows each row's
  :math:`\\lambda_p` ("off" where the mask leaves it undecayed, "frozen"
  where the ratio is 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"embed": jnp.zeros(4), "layers": [jnp.zeros(3), jnp.zeros(3)],
    ...           "head": jnp.zeros(2), "extra": jnp.zeros(1)}
    >>> print(lr_table(params, 0.5))
    layer   rule          lr ratio  params  tensors
    ------  ------------  --------  ------  -------
    bottom  embedding        0.125       4        1
    0       layer             0.25       3        1
    1       layer              0.5       3        1
    top     head                 1       2        1
    top     unrecognised         1       1        1
    ------  ------------  --------  ------  -------
    total                               13        5
    not recognised (given the head ratio): extra
    >>> print(lr_table(params, 0.5, lr_mults=[("head", 10.0)], weight_decay=0.05,
    ...                wd_mults=[("embed", 0.0)]))
    layer   rule          lr ratio  lr_mults  weight decay  wd_mults  params  tensors
    ------  ------------  --------  --------  ------------  --------  ------  -------
    bottom  embedding        0.125                     off  embed          4        1
    0       layer             0.25                    0.05                 3        1
    1       layer              0.5                    0.05                 3        1
    top     unrecognised         1                    0.05                 1        1
    top     head                10  head              0.05                 2        1
    ------  ------------  --------  --------  ------------  --------  ------  -------
    total                                                                 13        5
    not recognised (given the head ratio): extra
  """
  tree = _names.parameter_tree(params)
  placed = param_placements(tree, layerwise_decay, *args, **config)
  shown = _shown_decay(config)
  groups: dict[tuple, list[int]] = {}
  for placement, leaf in zip(placed, jax.tree.leaves(tree)):
    stack = "(outside)" if placement.stack is None else placement.stack
    decay = (placement.weight_decay, placement.wd_pattern) if shown is not None else (None, None)
    for position, ratio, count in _slices(placement, math.prod(np.shape(leaf))):
      key = (stack, position, ratio, placement.rule, placement.lr_pattern, *decay)
      counts = groups.setdefault(key, [0, 0])
      counts[0] += count
      counts[1] += 1
  stacks = list(dict.fromkeys(sorted(k[0] for k in groups if k[0] != "(outside)")))
  stacks += ["(outside)"]
  order = lambda k: (stacks.index(k[0]), _order(k[1]), k[2], k[3], str(k[4]), -(k[5] or 0))
  rows = tuple(
    LrTableRow(s, str(p), r, *groups[s, p, r, rule, lp, w, wp], rule, lp, w, wp)
    for s, p, r, rule, lp, w, wp in sorted(groups, key=order)
  )
  unrecognised = tuple(p.name for p in placed if p.rule == "unrecognised")
  return LrTable(rows, unrecognised, shown)
