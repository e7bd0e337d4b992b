"""Layer-wise learning-rate ratios and the transformation that applies them."""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adamwdl import _checks, ladder
from optax_adamwdl.layers import infer_n_layers
from optax_adamwdl.names import leaf_names, parameter_tree

SetParamLrFun = Callable[[Any, int, str], Any]


def _checked_ratio(ratio: Any, name: str) -> float:
  try:
    number = _checks.concrete_number("ratio", ratio) if np.ndim(ratio) == 0 else None
  except TypeError:
    number = None
  if number is None:
    raise TypeError(
      f"set_param_lr_fun returned {ratio!r} for parameter {name!r}; a "
      "learning-rate ratio must be a number."
    )
  if not math.isfinite(number) or number < 0:
    raise ValueError(
      f"set_param_lr_fun returned {ratio!r} for parameter {name!r}; a "
      "learning-rate ratio must be finite and >= 0."
    )
  return float(number)


def _custom_ratios(names, rate, n_layers, set_param_lr_fun, concrete_decay):
  given = _checks.check_n_layers(n_layers)
  traced_depth = n_layers is not None and given is None
  depth = n_layers if traced_depth else (given if given is not None else infer_n_layers(names))
  if depth is None:
    raise ValueError(
      "set_param_lr_fun needs n_layers, and it cannot be inferred: no parameter name "
      f"matches a layer pattern ({ladder.first_names(names)}). Pass n_layers=..."
    )
  ratios = [set_param_lr_fun(rate, depth, name) for name in names]
  if concrete_decay is None or traced_depth:
    return ratios
  ratios = [_checked_ratio(r, n) for r, n in zip(ratios, names)]
  if concrete_decay != 1.0 and all(r == 1.0 for r in ratios):
    raise ValueError(
      f"layerwise_decay={concrete_decay} but set_param_lr_fun gave every parameter ratio 1.0 "
      f"({ladder.first_names(names)}); check the names it matches against "
      "optax_adamwdl.param_names(params)."
    )
  return ratios


def _clamp(ratio: Any, min_ratio: Any, freeze_below: float | None) -> Any:
  """Raises ratios to ``min_ratio``, then zeroes those below ``freeze_below``.

  In NumPy (or Python) when every value is concrete, so that the ratios stay
  concrete inside a ``jit`` trace too; in ``jax.numpy`` when one is an array.
  """
  if _checks.concrete_number("min_ratio", min_ratio) != 0.0:  # traced or positive
    xp = _array_module(ratio, min_ratio)
    ratio = max(ratio, min_ratio) if xp is None else xp.maximum(ratio, min_ratio)
  if freeze_below is not None:
    xp = _array_module(ratio, freeze_below)
    if xp is None:
      ratio = 0.0 if ratio < freeze_below else ratio
    else:
      ratio = xp.where(ratio < freeze_below, 0.0, ratio)
  return ratio


def _array_module(*values: Any) -> Any:
  if any(isinstance(v, jax.Array) for v in values):
    return jnp
  return np if any(isinstance(v, np.ndarray) for v in values) else None


def leaf_ratios(
  names: Sequence[str],
  shapes: Sequence[tuple[int, ...]],
  layerwise_decay: jax.typing.ArrayLike,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  *,
  stacks: ladder.Stacks = None,
  scan_axes: ladder.ScanAxes = None,
  head_ratio: float = 1.0,
  depth_normalized: bool = False,
  min_ratio: float = 0.0,
  freeze_below: float | None = None,
) -> list[Any]:
  """Returns each named parameter's learning-rate ratio (the keywords of scale_by_layerwise_lr).

  A ratio is a Python float when the arguments are concrete, a traced scalar
  when ``layerwise_decay`` or ``n_layers`` are traced (under
  ``optax.inject_hyperparams``), and a vector shaped to broadcast along the
  layer axis for a scanned leaf; all are computed once per trace from the
  names and shapes.

  Raises:
    ValueError: the depth is inconsistent with the names, no layer is found
      while the ladder would scale something, or a rule's ratio is negative
      or NaN.
    TypeError: a rule's ratio is not a number.
  """
  if not names:
    return []  # An empty tree (or optax.tree_map_params' placeholder) has nothing to scale.
  stacks = ladder.check_stacks(stacks)
  decay = _checks.concrete_number("layerwise_decay", layerwise_decay)
  # A concrete decay reaches the rule as a Python float, so that its ratios are
  # concrete (and checked) even when the decay was given as an array.
  rate = layerwise_decay if decay is None else decay
  head = _checks.concrete_number("head_ratio", head_ratio)  # None when traced
  head_ratio = head_ratio if head is None else head
  if set_param_lr_fun is not None:
    if stacks or scan_axes is not None or head not in (1.0, None) or depth_normalized:
      raise ValueError(
        "stacks, scan_axes, head_ratio and depth_normalized refine the default ladder; "
        "set_param_lr_fun replaces it. Give one or the other."
      )
    ratios = _custom_ratios(names, rate, n_layers, set_param_lr_fun, decay)
  elif ladder.is_identity(rate, stacks, head_ratio):
    ratios = [1.0] * len(names)
  else:
    ratios = ladder.ladder_ratios(
      names,
      shapes,
      rate,
      n_layers,
      stacks=stacks,
      scan_axes=scan_axes,
      head_ratio=head_ratio,
      depth_normalized=depth_normalized,
    )
  return [_clamp(r, min_ratio, freeze_below) for r in ratios]


def names_and_shapes(tree: Any) -> tuple[list[str], list[tuple[int, ...]]]:
  """The dotted names and the shapes of the leaves of ``tree``."""
  leaves = jax.tree.leaves(tree)
  return leaf_names(tree), [tuple(getattr(x, "shape", np.shape(x))) for x in leaves]


def lr_ratios(
  params: Any,
  layerwise_decay: float,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  **options: Any,
) -> Any:
  """Returns ``params`` with each leaf replaced by its learning-rate ratio.

  Args:
    params: a pytree of parameters, or a flax nnx model.
    layerwise_decay: the layer-wise decay rate.
    n_layers: the number of layers; None infers it from the names.
    set_param_lr_fun: ``(decay_rate, n_layers, name) -> ratio``; None uses
      :func:`optax_adamwdl.layerwise_lr_decay`.
    **options: the keyword options of :func:`scale_by_layerwise_lr`
      (``stacks``, ``scan_axes``, ``head_ratio``, ``depth_normalized``,
      ``min_ratio``, ``freeze_below``).

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
  params = parameter_tree(params)
  ratios = leaf_ratios(
    *names_and_shapes(params), layerwise_decay, n_layers, set_param_lr_fun, **options
  )
  return jax.tree.structure(params).unflatten(ratios)


def _scale(update: jax.Array, ratio: jax.Array) -> jax.Array:
  # The ratio is applied in at least float32, so that a bfloat16 update is not
  # scaled by a ratio rounded to bfloat16; XLA fuses this into the step.
  wide = jnp.promote_types(update.dtype, jnp.float32)
  if update.dtype == ratio.dtype == wide:
    return update * ratio  # the common case, kept short: this runs for every leaf at every trace
  return (update.astype(wide) * ratio.astype(wide)).astype(update.dtype)


def _ratio_dtype(leaf: Any) -> Any:
  dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)
  return jnp.promote_types(dtype, jnp.float32)


def _distinct(ratios: Sequence[Any], leaves: Sequence[Any]) -> tuple[list[np.ndarray], list[int]]:
  """The distinct concrete ratios, in order of first use, and each leaf's index among them.

  A ratio shared by leaves of several dtypes is kept in the widest of their
  ratio dtypes (float32, or float64 for float64 leaves).
  """
  position: dict[tuple, int] = {}  # (shape, bytes) of the ratio -> its place in values
  values: list[np.ndarray] = []  # in float64 until every leaf's dtype is known
  dtypes: list[Any] = []
  index = []
  for ratio, leaf in zip(ratios, leaves):
    value = np.asarray(ratio, np.float64)
    key = (value.shape, value.tobytes())
    if key not in position:
      position[key] = len(values)
      values.append(value)
      dtypes.append(jnp.float32)
    i = position[key]
    dtypes[i] = jnp.promote_types(dtypes[i], _ratio_dtype(leaf))
    index.append(i)
  values = [v.astype(d) for v, d in zip(values, dtypes)]
  return values, index


class ScaleByLayerwiseLrState(NamedTuple):
  """The tree's distinct learning-rate ratios, as arrays, in order of first use.

  Kept as operands of the compiled step rather than constants in it, so that
  XLA compiles one kernel per leaf shape instead of one per layer; one operand
  per distinct ratio (26 for a 24-layer BERT, not one per leaf), as each
  operand of the step costs compile time. Which leaf takes which ratio is read
  again from the names at every update. An empty vector when there is nothing
  to keep: a tree with no leaves (so that ``optax.tree_map_params``'
  placeholder state is a prefix of every state), or hyperparameters given as
  arrays, whose ratios are computed at every update. ``learning_rate_state`` is
  the state of ``optax.scale_by_learning_rate`` (a schedule's step count) when
  the transformation was given a ``learning_rate``.
  """

  ratios: tuple[jax.Array, ...] | jax.Array
  learning_rate_state: optax.OptState = optax.EmptyState()


def scale_by_layerwise_lr(
  layerwise_decay: jax.typing.ArrayLike = 1.0,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  *,
  stacks: ladder.Stacks = None,
  scan_axes: ladder.ScanAxes = None,
  head_ratio: float = 1.0,
  depth_normalized: bool = False,
  min_ratio: float = 0.0,
  freeze_below: float | None = None,
  learning_rate: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformation:
  """Scales each update by its parameter's layer-wise learning-rate ratio.

  .. math::

    u_p \\leftarrow r_p\\, u_p, \\qquad r_p = \\alpha^{L - i_p}

  for a parameter in layer :math:`i_p` of :math:`L`, :math:`\\alpha^{L + 1}` for
  embeddings and ``head_ratio`` (1) for the rest; or
  ``set_param_lr_fun(layerwise_decay, n_layers, name)``. The ratios are
  computed from the pytree paths at ``init`` and kept in the state
  (:class:`ScaleByLayerwiseLrState`), one scalar per distinct ratio; given as arrays (as
  ``optax.inject_hyperparams`` does), the hyperparameters are read again at
  every ``update``.

  Args:
    layerwise_decay: the decay rate :math:`\\alpha`; ``1.0`` scales nothing.
    n_layers: the number of layers :math:`L`; None infers it as the largest
      layer index found in the names plus one.
    set_param_lr_fun: ``(decay_rate, n_layers, name) -> ratio``, replacing the
      default ladder.
    stacks: several stacks or towers, each with its own ladder: a mapping from
      a name prefix to ``{"n_layers": ..., "decay": ...}`` (both optional:
      inferred from the stack's own names, and ``layerwise_decay``), or a list
      of prefixes. Parameters outside every stack use ``layerwise_decay`` and
      the deepest stack's depth.
    scan_axes: scanned layers, one leaf holding every layer: a mapping from a
      name component (e.g. ``"encoderblock"``) to the layer axis, or a function
      ``name -> axis or None``. Slice :math:`i` along the axis gets
      :math:`\\alpha^{L - i}`; :math:`L` is inferred from the axis' length.
    head_ratio: the ratio of parameters in no layer and no embedding (pooler,
      final norm, classifier head).
    depth_normalized: divide every exponent by :math:`L + 1`, so that the
      embeddings get :math:`\\alpha` and the head 1 whatever the depth:
      :math:`r = \\alpha^{(L + 1 - d) / (L + 1)}` at depth :math:`d` (0 for
      embeddings, :math:`i + 1` for layer :math:`i`, :math:`L + 1` for the head).
    min_ratio: the smallest ratio any parameter gets (timm's
      ``layer_decay_min_scale``); applied to every rule.
    freeze_below: ratios below this become 0 (timm's ``no_opt_scale``): those
      parameters do not move. :func:`optax_adamwdl.adamwdl` also drops their
      optimizer state.
    learning_rate: if given (a float or a schedule), each update is also scaled
      by ``-learning_rate``, as by a following ``optax.scale_by_learning_rate``:
      the scale is then each layer's learning rate, one scalar per distinct
      ratio, and every leaf gets one multiply instead of two (as Paddle, which
      multiplies the learning rate by the ratio before the step).

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_layerwise_lr(0.5, learning_rate=0.1)
    >>> grads = {"layers": [jnp.ones(2), jnp.ones(2)], "head": jnp.ones(2)}
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> [round(float(u[0]), 4) for u in updates["layers"]]
    [-0.025, -0.05]
    >>> tx = scale_by_layerwise_lr(0.5)
    >>> grads = {"layers": [jnp.ones(2), jnp.ones(2)], "head": jnp.ones(2)}
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> [float(u[0]) for u in updates["layers"]]
    [0.25, 0.5]
  """
  _checks.check_range("layerwise_decay", layerwise_decay, low=0.0, low_inclusive=False)
  _checks.check_n_layers(n_layers)
  if learning_rate is not None and not callable(learning_rate):
    _checks.check_range("learning_rate", learning_rate, low=0.0)
  if set_param_lr_fun is not None and not callable(set_param_lr_fun):
    raise TypeError(
      "set_param_lr_fun must be a callable (decay_rate, n_layers, name) -> "
      f"ratio, got {set_param_lr_fun!r}."
    )
  ladder.check_options(head_ratio, min_ratio, freeze_below, scan_axes)
  options = dict(
    stacks=ladder.check_stacks(stacks),
    scan_axes=scan_axes,
    head_ratio=head_ratio,
    depth_normalized=depth_normalized,
    min_ratio=min_ratio,
    freeze_below=freeze_below,
  )

  dynamic = any(
    isinstance(v, jax.Array)
    for v in (layerwise_decay, n_layers, head_ratio, min_ratio, freeze_below)
  )

  scale_by_learning_rate = (
    optax.identity() if learning_rate is None else optax.scale_by_learning_rate(learning_rate)
  )

  def ratios_for(tree):
    return leaf_ratios(
      *names_and_shapes(tree), layerwise_decay, n_layers, set_param_lr_fun, **options
    )

  def times_learning_rate(ratios, state):
    """The ratios times ``-learning_rate`` (each in its own dtype), and the state after."""
    if learning_rate is None:
      return ratios, state
    widest = functools.reduce(jnp.promote_types, [r.dtype for r in ratios], jnp.float32)
    factor, lr_state = scale_by_learning_rate.update(
      jnp.ones((), widest), state.learning_rate_state
    )
    return [r * factor.astype(r.dtype) for r in ratios], state._replace(
      learning_rate_state=lr_state
    )

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    ratios = ratios_for(params)  # Raises here, at init, on a bad tree or rule.
    lr_state = scale_by_learning_rate.init(params)
    if dynamic or not leaves:
      return ScaleByLayerwiseLrState(jnp.zeros((0,), jnp.float32), lr_state)
    return ScaleByLayerwiseLrState(tuple(map(jnp.asarray, _distinct(ratios, leaves)[0])), lr_state)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    if not leaves:
      return updates, state
    ratios = ratios_for(updates)
    if dynamic:  # Array hyperparameters (optax.inject_hyperparams) may change every step.
      operands = [jnp.asarray(r, _ratio_dtype(u)) for r, u in zip(ratios, leaves)]
      operands, state = times_learning_rate(operands, state)
    else:
      values, index = _distinct(ratios, leaves)
      stored = state.ratios if isinstance(state.ratios, tuple) else ()
      if [np.shape(r) for r in stored] != [v.shape for v in values]:
        raise ValueError(
          f"The scale_by_layerwise_lr state holds {len(stored)} distinct ratios but the "
          f"updates' tree has {len(values)}: init the optimizer with the parameters it updates."
        )
      stored, state = times_learning_rate(stored, state)
      operands = [stored[i] for i in index]
    scaled = [_scale(u, r) for u, r in zip(leaves, operands)]
    return treedef.unflatten(scaled), state

  return optax.GradientTransformation(init_fn, update_fn)
