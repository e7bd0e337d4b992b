"""Training metrics: each ladder row's effective learning rate and update size at the current step.

:func:`layer_metrics` takes the keyword arguments given to :func:`optax_adamwdl.adamwdl` and
returns a function of ``(params, updates, opt_state)`` that returns a flat dict of float32
scalars, one ``lr/...`` and one ``update_ratio/...`` per ladder row: what a logger takes
(clu's metric writers, TensorBoard, W&B, a print). It is traceable: call it inside the jitted
train step and return its dict with the loss.

The rows are those of :func:`optax_adamwdl.lr_table`, from the ladder's own placements (the
ratios that ``adamwdl`` applies); the learning rate is read from the optimizer state, found by
type under any wrapper (``optax.MultiSteps``, ``optax.apply_if_finite``,
:func:`optax_adamwdl.with_master_weights`, ``optax.masked``, a chain).
"""

import dataclasses
import inspect
import math
import numbers
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adamwdl import _names, _table
from optax_adamwdl._alias import adamwdl
from optax_adamwdl._ladder import Placement

_ADAMWDL = inspect.signature(adamwdl)
_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
_STAND_IN_DECAY = 0.987654  # decides the rows when the decay comes as an array or a schedule


def _placements(params: Any, config: dict[str, Any]) -> list[Placement]:
  """The placement of each leaf of ``params`` as ``adamwdl(**config)`` places it (its ratio)."""
  return _table.param_placements(params, **config)


@dataclasses.dataclass(frozen=True)
class _Slot:
  """Where one leaf (or one layer slice of a scanned leaf) goes: its row, and its ratio's index."""

  leaf: int
  row: str
  layer: int | None  # the slice along ``axis`` of a scanned leaf; None for the whole leaf
  axis: int


def _plain(value: Any) -> bool:
  return isinstance(value, numbers.Real | np.ndarray) and not isinstance(value, bool)


def _stand_in(config: dict[str, Any]) -> dict[str, Any]:
  """``config`` with each ladder number that is not a Python number (a schedule, an array)
  replaced: the decay by a generic one, ``head_ratio`` by 1 and ``min_ratio`` by 0.

  The rows are decided once, from Python numbers; a value injected in the state later (or a
  schedule's) moves the ratios, never which parameters share a row.
  """
  out = dict(config)
  if not _plain(out.get("layerwise_decay", 1.0)):  # not 1: a rule of the decay would give one row
    out["layerwise_decay"] = _STAND_IN_DECAY
  if not _plain(out.get("head_ratio", 1.0)):
    out["head_ratio"] = 1.0
  for key in ("min_ratio",):
    if not _plain(out.get(key, 0.0)):
      out[key] = 0.0
  return out


def _position_name(position: Any, width: int) -> str:
  return f"layer_{position:0{width}d}" if isinstance(position, int) else str(position)


def _rows(placed: list[Placement], shapes: list[tuple]) -> tuple[list[_Slot], dict[str, float]]:
  """Each leaf's slots, and each row's ratio (a row: one stack, one position, one multiplier).

  Parameters that an ``lr_mults`` rule multiplies by ``m`` get the row ``<position>/x<m>``; a
  position whose parameters still have several ratios (``set_param_lr_fun``) keeps its name for
  the ratio that holds the most parameters and adds ``/r<ratio>`` for the others.
  """
  entries = []  # (stack, position, multiplier, ratio, size, leaf, layer, axis)
  several = len({p.stack for p in placed if p.stack is not None}) > 1
  for i, (p, shape) in enumerate(zip(placed, shapes)):
    # Outside every stack: unprefixed; the model's own stack beside towers: "model".
    stack = "" if p.stack is None else p.stack or ("model" if several else "")
    size = math.prod(shape)
    vector = np.asarray(p.ratio)
    if p.position == "layers" and vector.size > 1:  # one slot per layer slice
      axis = next(a for a, n in enumerate(vector.shape) if n > 1)
      for j, r in enumerate(vector.ravel()):
        step = p.first_step + j
        entries.append((stack, step, p.lr_mult, float(r), size // vector.size, i, j, axis))
    else:  # a scanned leaf of one layer is that layer, whole
      position = p.first_step if p.position == "layers" else p.position
      entries.append((stack, position, p.lr_mult, float(np.max(vector)), size, i, None, 0))
  widths: dict[str, int] = {}
  for stack, position, *_ in entries:
    if isinstance(position, int):
      widths[stack] = max(widths.get(stack, 1), len(str(position)))
  counts: dict[tuple, dict[float, int]] = {}
  for stack, position, mult, r, size, *_ in entries:
    by_ratio = counts.setdefault((stack, position, mult), {})
    by_ratio[r] = by_ratio.get(r, 0) + size
  names: dict[tuple, str] = {}
  ratios: dict[str, float] = {}
  for (stack, position, mult), by_ratio in counts.items():
    base = _position_name(position, widths.get(stack, 1))
    base = f"{stack}/{base}" if stack else base
    base += "" if mult == 1 else f"/x{mult:g}"
    main = max(by_ratio, key=lambda r: by_ratio[r])  # the first of equals: leaves order
    for r in by_ratio:
      names[stack, position, mult, r] = base + ("" if r == main else f"/r{r:.6g}")
      ratios[names[stack, position, mult, r]] = r
  slots = [_Slot(leaf, names[s, pos, m, r], layer, axis)
           for s, pos, m, r, _, leaf, layer, axis in entries]  # fmt: skip
  return slots, ratios


def _unwrap(value: Any) -> Any:
  """An ``nnx.Variable``'s array (``nnx.Optimizer`` keeps its state in them); anything else as is."""
  nnx = sys.modules.get("flax.nnx")
  if nnx is not None and isinstance(value, nnx.Variable):
    return value.get_value() if hasattr(value, "get_value") else value.value
  return value


def _find(tree: Any, types: tuple) -> list[Any]:
  """Every node of ``tree`` of one of ``types``, outermost first, nested ones included."""
  found = []

  def note(node):
    if isinstance(node, types):
      found.append(node)
    return False

  jax.tree_util.tree_flatten(tree, is_leaf=note)
  return found


def _injected(opt_state: Any) -> dict[str, Any]:
  """The hyperparameters that ``optax.inject_hyperparams`` keeps in ``opt_state`` (innermost wins)."""
  out = {}
  for state in _find(opt_state, _INJECTED):
    out.update({k: _unwrap(v) for k, v in state.hyperparams.items()})
  return out


def _learning_rate(learning_rate: Any, opt_state: Any, injected: dict[str, Any]) -> jax.Array:
  """The learning rate of the update that produced ``opt_state``: injected, scheduled or fixed."""
  if "learning_rate" in injected:
    return jnp.asarray(injected["learning_rate"], jnp.float32)
  if not callable(learning_rate):
    return jnp.asarray(learning_rate, jnp.float32)
  adam = _find(opt_state, (optax.ScaleByAdamState,))
  if len(adam) != 1:
    raise ValueError(
      f"learning_rate is a schedule, read at the step count of the optimizer state's "
      f"optax.ScaleByAdamState, but opt_state holds {len(adam)} of them: pass the state that "
      "tx.update returned for a single adamwdl."
    )
  count = jnp.asarray(_unwrap(adam[0].count))
  # The state after the update counts it: the update used the schedule at count - 1.
  return jnp.asarray(learning_rate(jnp.maximum(count - 1, 0)), jnp.float32)


def _squares(x: Any, slot: _Slot) -> jax.Array:
  """The sum of squares of a leaf (a vector along the layer axis for a scanned leaf), float32."""
  x = jnp.asarray(x)
  wide = jnp.abs(x).astype(jnp.float32) if jnp.iscomplexobj(x) else x.astype(jnp.float32)
  squares = jnp.square(wide)
  if slot.layer is None:
    return jnp.sum(squares)
  return jnp.sum(squares, axis=tuple(a for a in range(x.ndim) if a != slot.axis))


def _norm_ratio(step: jax.Array, size: jax.Array) -> jax.Array:
  """``sqrt(step / size)``: 0 when nothing moved, inf when a zero parameter moved."""
  safe = jnp.where(size > 0, size, 1.0)
  return jnp.where(size > 0, jnp.sqrt(step / safe), jnp.where(step > 0, jnp.inf, 0.0))


def layer_metrics(*args: Any, **config: Any) -> Callable[[Any, Any, Any], dict[str, jax.Array]]:
  """Returns ``metrics(params, updates, opt_state)``: each ladder row's learning rate and step size.

  Takes the arguments given to :func:`optax_adamwdl.adamwdl` (the same dict of keyword
  arguments; those of Adam alone are ignored). The returned function is traceable, costs one
  reduction over the parameters and the updates, and returns a flat dict of float32 scalars,
  sorted by name:

  - ``lr/<row>``: the effective learning rate of the update, the learning rate (the schedule's
    value at this update, or the one ``optax.inject_hyperparams`` holds, set by hand or not)
    times the row's ratio;
  - ``update_ratio/<row>``: :math:`\\|\\Delta p\\| / \\|p\\|` over the row's parameters.

  A row is one stack's position: ``bottom``, ``layer_NN`` (zero-padded to the stack's widest
  index) or ``top``, prefixed by its stack when the model has several (``encoder/layer_03``;
  ``model/...`` for the model's own stack beside towers). A scanned leaf contributes each layer
  slice to its layer's row. Parameters that an ``lr_mults`` rule multiplies by ``m`` form the
  row ``<row>/x<m>`` (``layer_03/x10``); a position whose parameters still have several ratios
  (``set_param_lr_fun``) adds ``<row>/r<ratio>`` for those that differ from the ratio most of
  its parameters have. Numbers that ``optax.inject_hyperparams`` holds in the state
  (``layerwise_decay``, ``head_ratio``, ``min_ratio``) are read from it.

  The rows describe ``adamwdl``'s own ladder: what a transformation chained after it scales
  (``optax.scale``, ``reduce_on_plateau``) is not in ``lr/``, and under ``optax.partition`` /
  ``optax.masked`` the parameters another transformation trains are not ``adamwdl``'s (pass the
  parameters, updates and state of the ``adamwdl`` part). A learning rate set by hand shows from
  the step it is set, also on a step that ``optax.MultiSteps`` accumulates or
  ``optax.apply_if_finite`` skips (whose ``update_ratio`` is 0).

  The norms are one more pass over the parameters and the updates, which is not free next to an
  optimizer step (about 10% of a whole step of the benchmark's bert-mini-width model on two CPU
  cores): compute them at the steps you log, with a static ``log`` argument of the jitted step
  (see the Hugging Face guide).

  Args:
    *args: ``adamwdl``'s positional arguments.
    **config: its keyword arguments.

  Returns:
    ``metrics(params, updates, opt_state) -> dict[str, jax.Array]``, where ``params`` are the
    parameters the update was computed from, ``updates`` what ``tx.update`` returned and
    ``opt_state`` the state it returned with them (the step count of the update it holds; under
    ``optax.MultiSteps``, the last update applied).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> config = dict(learning_rate=0.1, layerwise_decay=0.5)
    >>> params = {"embed": jnp.ones(4), "layers": [jnp.ones(4)] * 2, "head": jnp.ones(4)}
    >>> tx = adamwdl(**config)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, opt_state = tx.update(grads, tx.init(params), params)
    >>> metrics = jax.jit(layer_metrics(**config))(params, updates, opt_state)
    >>> {k: round(float(v), 6) for k, v in metrics.items() if k.startswith("lr/")}
    {'lr/bottom': 0.0125, 'lr/layer_0': 0.025, 'lr/layer_1': 0.05, 'lr/top': 0.1}
  """
  bound = _ADAMWDL.bind(*args, **config)
  bound.apply_defaults()
  config = dict(bound.arguments)
  learning_rate = config["learning_rate"]
  static = _stand_in(config)
  arrays = {
    k: v for k, v in config.items() if k in static and static[k] is not v and not callable(v)
  }

  def metrics(params: Any, updates: Any, opt_state: Any) -> dict[str, jax.Array]:
    tree = _names.parameter_tree(params)
    leaves, update_leaves = jax.tree.leaves(tree), jax.tree.leaves(updates)
    if len(leaves) != len(update_leaves):
      raise ValueError(
        f"params has {len(leaves)} leaves and updates {len(update_leaves)}: pass the parameters "
        "the update was computed from and the updates tx.update returned."
      )
    try:
      placed = _placements(tree, static)
    except ValueError:  # a tree with no layer refuses any decay but 1, which its rows then take
      placed = _placements(tree, {**static, "layerwise_decay": 1.0})
    slots, ratios = _rows(placed, [np.shape(x) for x in leaves])
    injected = _injected(opt_state)
    lr = _learning_rate(learning_rate, opt_state, injected)
    ladder = {
      **arrays,
      **{k: v for k, v in injected.items() if k in _table.LADDER_ARGUMENTS and k != "n_layers"},
    }
    traced = _placements(tree, {**static, **ladder}) if ladder else None
    steps: dict[str, Any] = {}
    sizes: dict[str, Any] = {}
    values: dict[str, Any] = {}
    squares: dict[int, tuple] = {}
    for slot in slots:
      if slot.leaf not in squares:  # once per leaf: a scanned leaf's slots share its vectors
        squares[slot.leaf] = (
          _squares(update_leaves[slot.leaf], slot),
          _squares(leaves[slot.leaf], slot),
        )
      u, p = squares[slot.leaf]
      if slot.layer is not None:
        u, p = u[slot.layer], p[slot.layer]
      steps[slot.row] = steps[slot.row] + u if slot.row in steps else u
      sizes[slot.row] = sizes[slot.row] + p if slot.row in sizes else p
      if traced is not None and slot.row not in values:  # the row's first leaf: its ratio
        r = jnp.asarray(traced[slot.leaf].ratio, jnp.float32)
        values[slot.row] = jnp.ravel(r)[slot.layer] if slot.layer is not None else r
    out = {}
    for row, ratio in ratios.items():
      out[f"lr/{row}"] = lr * values.get(row, jnp.float32(ratio))
      out[f"update_ratio/{row}"] = _norm_ratio(steps[row], sizes[row])
    return dict(sorted(out.items()))

  return metrics
