"""A per-layer table of learning-rate ratios, for reading and printing."""

from typing import Any, NamedTuple

import jax
import numpy as np

from optax_adamwdl.layers import layer_id
from optax_adamwdl.layerwise import SetParamLrFun, leaf_ratios
from optax_adamwdl.names import leaf_names, parameter_tree


class LrTableRow(NamedTuple):
  """One group of parameters that share a layer and a ratio."""

  layer: str  # "embedding", the layer index, or "other" (pooler, norm, head).
  ratio: float
  n_params: int
  n_tensors: int


class LrTable(NamedTuple):
  """Rows from the embeddings up through the layers to the head; prints as a table."""

  rows: tuple[LrTableRow, ...]

  def __str__(self) -> str:
    header = ("layer", "lr ratio", "params", "tensors")
    body = [(r.layer, f"{r.ratio:.6g}", f"{r.n_params:,}", str(r.n_tensors)) for r in self.rows]
    total = sum(r.n_params for r in self.rows)
    body.append(("total", "", f"{total:,}", str(sum(r.n_tensors for r in self.rows))))
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(4)]

    def line(cells):
      return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
      )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, body[:-1]), rule, line(body[-1])])

  __repr__ = __str__


def _order(layer) -> tuple[int, int]:
  if layer == "embedding":
    return (0, 0)
  if layer is None:
    return (2, 0)
  return (1, layer)


def lr_table(
  params: Any,
  layerwise_decay: float,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
) -> LrTable:
  """Returns the per-layer table of ratios and parameter counts.

  Parameters are grouped by :func:`optax_adamwdl.layer_id`; a group whose
  parameters get different ratios (from a custom ``set_param_lr_fun``) has a
  row per ratio.

  Args:
    params: a pytree of parameters (arrays or ``jax.ShapeDtypeStruct``), or a
      flax nnx model.
    layerwise_decay: the layer-wise decay rate.
    n_layers: the number of layers; None infers it from the names.
    set_param_lr_fun: the ratio rule; None uses the default.

  Returns:
    An :class:`LrTable`; ``print`` shows it.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"embed": jnp.zeros(4), "layers": [jnp.zeros(3), jnp.zeros(3)],
    ...           "head": jnp.zeros(2)}
    >>> print(lr_table(params, 0.5))
    layer      lr ratio  params  tensors
    ---------  --------  ------  -------
    embedding     0.125       4        1
    0              0.25       3        1
    1               0.5       3        1
    other             1       2        1
    ---------  --------  ------  -------
    total                    12        4
  """
  params = parameter_tree(params)
  leaves = jax.tree.leaves(params)
  names = leaf_names(params)
  ratios = leaf_ratios(names, layerwise_decay, n_layers, set_param_lr_fun)
  groups: dict[tuple[Any, float], list[int]] = {}
  for leaf, name, ratio in zip(leaves, names, ratios):
    counts = groups.setdefault((layer_id(name), float(ratio)), [0, 0])
    counts[0] += int(np.prod(getattr(leaf, "shape", np.shape(leaf))))
    counts[1] += 1
  keys = sorted(groups, key=lambda k: (_order(k[0]), k[1]))
  rows = tuple(
    LrTableRow(
      layer="other" if layer is None else str(layer),
      ratio=ratio,
      n_params=groups[layer, ratio][0],
      n_tensors=groups[layer, ratio][1],
    )
    for layer, ratio in keys
  )
  return LrTable(rows)
