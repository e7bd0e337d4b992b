"""Reading the ladder: ratios, placements and a per-layer table of a parameter tree."""

from typing import Any, NamedTuple

import jax
import numpy as np

from optax_adamwdl import _names
from optax_adamwdl._ladder import Placement, placements
from optax_adamwdl._ladder_options import LadderOptions


def _placements(params: Any, layerwise_decay: Any, *args: Any, **options: Any) -> tuple[Any, list]:
  tree = _names.parameter_tree(params)
  return tree, placements(LadderOptions.build(layerwise_decay, *args, **options), tree)


def lr_placements(params: Any, layerwise_decay: float, *args: Any, **options: Any) -> Any:
  """Returns ``params`` with each leaf replaced by its :class:`Placement`: ratio and rule.

  Takes the arguments of :func:`lr_ratios`.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"embed": jnp.zeros(2), "layers": [jnp.zeros(2)], "head": jnp.zeros(2)}
    >>> lr_placements(params, 0.5)["embed"]
    Placement(name='embed', stack='', position='bottom', ratio=0.25, rule='embedding')
  """
  tree, placed = _placements(params, layerwise_decay, *args, **options)
  return jax.tree.structure(tree).unflatten(placed)


def lr_ratios(params: Any, layerwise_decay: float, *args: Any, **options: Any) -> Any:
  """Returns ``params`` with each leaf replaced by its learning-rate ratio.

  Args:
    params: a pytree of parameters (arrays or ``jax.ShapeDtypeStruct``), or a
      flax nnx model.
    layerwise_decay: the layer-wise decay rate.
    *args: ``n_layers`` and ``set_param_lr_fun``, as for
      :func:`optax_adamwdl.scale_by_layerwise_lr`.
    **options: its keyword options (``stacks``, ``scan_axes``, ``stage_wise``,
      ``head_ratio``, ``depth_normalized``, ``min_ratio``, ``freeze_below``).

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
  tree, placed = _placements(params, layerwise_decay, *args, **options)
  return jax.tree.structure(tree).unflatten([p.ratio for p in placed])


class LrTableRow(NamedTuple):
  """Parameters of one stack that share a position, a ratio and the rule that placed them."""

  stack: str  # "" for a model with one stack, "(outside)" for parameters outside every stack
  layer: str  # "bottom", the layer's step ("0", "1", ...) or "top"
  ratio: float
  n_params: int
  n_tensors: int
  rule: str


class LrTable(NamedTuple):
  """Rows from the bottom of each stack up to its top; ``print`` shows them.

  ``unrecognised`` names the parameters that no rule recognised, which
  therefore got the head ratio.
  """

  rows: tuple[LrTableRow, ...]
  unrecognised: tuple[str, ...]

  def __str__(self) -> str:
    stacked = any(r.stack for r in self.rows)
    header = (*(("stack",) if stacked else ()), "layer", "rule", "lr ratio", "params", "tensors")
    body = [
      (
        *((r.stack,) if stacked else ()),
        r.layer,
        r.rule,
        f"{r.ratio:.6g}",
        f"{r.n_params:,}",
        str(r.n_tensors),
      )  # fmt: skip
      for r in self.rows
    ]
    total = ("total", *[""] * (len(header) - 3), f"{sum(r.n_params for r in self.rows):,}",
             str(sum(r.n_tensors for r in self.rows)))  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body, total]) for i in range(len(header))]
    numeric = len(header) - 3

    def line(cells):
      cells = [
        c.rjust(w) if i >= numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
      ]
      return "  ".join(cells).rstrip()

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
  return [(i, float(r), size // per_layer.size) for i, r in enumerate(per_layer)]


def _order(position: Any) -> tuple[int, int]:
  if position == "bottom":
    return (0, 0)
  return (2, 0) if position == "top" else (1, position)


def lr_table(params: Any, layerwise_decay: float, *args: Any, **options: Any) -> LrTable:
  """Returns the per-layer table of ratios, parameter counts and placing rules.

  Takes the arguments of :func:`lr_ratios`. A row groups the parameters of one
  stack at one position with one ratio, placed by one rule.

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
  """
  tree, placed = _placements(params, layerwise_decay, *args, **options)
  groups: dict[tuple, list[int]] = {}
  for placement, leaf in zip(placed, jax.tree.leaves(tree)):
    stack = "(outside)" if placement.stack is None else placement.stack
    for position, ratio, count in _slices(placement, int(np.prod(np.shape(leaf)))):
      counts = groups.setdefault((stack, position, ratio, placement.rule), [0, 0])
      counts[0] += count
      counts[1] += 1
  stacks = list(dict.fromkeys(sorted(k[0] for k in groups if k[0] != "(outside)")))
  stacks += ["(outside)"]
  keys = sorted(groups, key=lambda k: (stacks.index(k[0]), _order(k[1]), k[2], k[3]))
  rows = tuple(LrTableRow(s, str(p), r, *groups[s, p, r, rule], rule) for s, p, r, rule in keys)
  unrecognised = tuple(p.name for p in placed if p.rule == "unrecognised")
  return LrTable(rows, unrecognised)
