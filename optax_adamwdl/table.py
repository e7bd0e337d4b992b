"""A per-layer table of learning-rate ratios, for reading and printing."""

from typing import Any, NamedTuple

import numpy as np

from optax_adamwdl import ladder
from optax_adamwdl.layerwise import SetParamLrFun, leaf_ratios, names_and_shapes
from optax_adamwdl.names import parameter_tree


class LrTableRow(NamedTuple):
  """One group of parameters that share a layer and a ratio."""

  # "embedding", the layer index, or "other" (pooler, norm, head); "<stack> " first with stacks.
  layer: str
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


def _order(stack_index: int, layer) -> tuple[int, int, int]:
  if layer == "embedding":
    return (stack_index, 0, 0)
  if layer is None:
    return (stack_index, 2, 0)
  return (stack_index, 1, layer)


def lr_table(
  params: Any,
  layerwise_decay: float,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  **options: Any,
) -> LrTable:
  """Returns the per-layer table of ratios and parameter counts.

  Parameters are grouped by stack and :func:`optax_adamwdl.layer_id` (a
  scanned leaf counts towards each of its layers); a group whose parameters get
  different ratios (from a custom ``set_param_lr_fun``) has a row per ratio.

  Args:
    params: a pytree of parameters (arrays or ``jax.ShapeDtypeStruct``), or a
      flax nnx model.
    layerwise_decay: the layer-wise decay rate.
    n_layers: the number of layers; None infers it from the names.
    set_param_lr_fun: the ratio rule; None uses the default.
    **options: the keyword options of :func:`optax_adamwdl.scale_by_layerwise_lr`.

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
  names, shapes = names_and_shapes(params)
  ratios = leaf_ratios(names, shapes, layerwise_decay, n_layers, set_param_lr_fun, **options)
  stacks = ladder.check_stacks(options.get("stacks"))
  where = ladder.positions(names, shapes, stacks, options.get("scan_axes"))
  stack_order = {s: i for i, s in enumerate([*stacks, None])}
  groups: dict[tuple[Any, Any, float], list[int]] = {}
  for shape, pos, ratio in zip(shapes, where, ratios):
    size = int(np.prod(shape))
    if pos.layer == "scanned":
      per_layer = np.ravel(ratio)
      slices = [(i, float(per_layer[i]), size // pos.length) for i in range(pos.length)]
    else:
      slices = [(pos.layer, float(ratio), size)]
    for layer, r, count in slices:
      counts = groups.setdefault((pos.stack, layer, r), [0, 0])
      counts[0] += count
      counts[1] += 1
  keys = sorted(groups, key=lambda k: (_order(stack_order[k[0]], k[1]), k[2]))
  rows = tuple(
    LrTableRow(
      layer=(f"{stack} " if stack is not None else "") + ("other" if layer is None else str(layer)),
      ratio=ratio,
      n_params=groups[stack, layer, ratio][0],
      n_tensors=groups[stack, layer, ratio][1],
    )
    for stack, layer, ratio in keys
  )
  return LrTable(rows)
