"""Layer-wise learning-rate ratios and the transformation that applies them."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adamwdl import _checks
from optax_adamwdl.layers import infer_n_layers, layer_id, layerwise_lr_decay
from optax_adamwdl.names import leaf_names, parameter_tree

SetParamLrFun = Callable[[Any, int, str], Any]

_SHOWN_NAMES = 5


def _first_names(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:_SHOWN_NAMES])
  more = f", ... ({len(names)} in all)" if len(names) > _SHOWN_NAMES else ""
  return shown + more


def _resolve_n_layers(names, n_layers, custom_rule: bool):
  """Returns the depth handed to the rule: given, inferred, or traced."""
  given = _checks.check_n_layers(n_layers)
  if n_layers is not None and given is None:
    return n_layers  # traced by inject_hyperparams; checked at init.
  found = infer_n_layers(names)
  if custom_rule:
    if given is None and found is None:
      raise ValueError(
        "set_param_lr_fun needs n_layers, and it cannot be inferred: no "
        f"parameter name matches a layer pattern ({_first_names(names)}). "
        "Pass n_layers=..."
      )
    return found if given is None else given
  if found is None:
    raise ValueError(
      "layerwise_decay != 1 but no parameter name is recognised as a layer "
      f"of a layer stack ({_first_names(names)}); every ratio would stay 1. "
      "Pass set_param_lr_fun=lambda decay_rate, n_layers, name: ... that "
      "returns each parameter's ratio (and n_layers=...). See "
      "optax_adamwdl.param_names for the names it receives."
    )
  if given is not None and given < found:
    deepest = max((n for n in names if isinstance(layer_id(n), int)), key=layer_id)
    raise ValueError(
      f"n_layers={given} but parameter {deepest!r} is in layer "
      f"{layer_id(deepest)}, so n_layers must be at least {found} (or None "
      "to infer it); a smaller value would give ratios above 1."
    )
  return found if given is None else given


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


def leaf_ratios(
  names: Sequence[str],
  layerwise_decay: jax.typing.ArrayLike,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
) -> list[Any]:
  """Returns each named parameter's learning-rate ratio.

  The ratios are Python floats when the arguments are concrete, and traced
  scalars when ``layerwise_decay`` or ``n_layers`` are traced (under
  ``optax.inject_hyperparams``); either way they are computed once per trace
  from the names alone.

  Raises:
    ValueError: the depth is inconsistent with the names, no layer is found
      while ``layerwise_decay != 1``, or the rule returns a ratio that is
      negative, NaN or not a number.
  """
  if not names:
    return []  # An empty tree (or optax.tree_map_params' placeholder) has nothing to scale.
  decay = _checks.concrete_number("layerwise_decay", layerwise_decay)
  custom_rule = set_param_lr_fun is not None
  if not custom_rule and decay == 1.0:
    return [1.0] * len(names)
  if not custom_rule and decay is None and infer_n_layers(names) is None:
    return [1.0] * len(names)  # As init decided, with concrete values.
  depth = _resolve_n_layers(names, n_layers, custom_rule)
  rule = set_param_lr_fun or layerwise_lr_decay
  # A concrete decay goes to the rule as a Python float, so that the ratios are
  # constants even when the decay was given as an array and the update is jitted.
  rate = layerwise_decay if decay is None else decay
  ratios = [rule(rate, depth, name) for name in names]
  if decay is None or isinstance(depth, jax.core.Tracer):
    return ratios
  ratios = [_checked_ratio(r, n) for r, n in zip(ratios, names)]
  if decay != 1.0 and names and all(r == 1.0 for r in ratios):
    raise ValueError(
      f"layerwise_decay={decay} but set_param_lr_fun gave every parameter "
      f"ratio 1.0 ({_first_names(names)}); check the names it matches "
      "against optax_adamwdl.param_names(params)."
    )
  return ratios


def lr_ratios(
  params: Any,
  layerwise_decay: float,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
) -> Any:
  """Returns ``params`` with each leaf replaced by its learning-rate ratio.

  Args:
    params: a pytree of parameters, or a flax nnx model.
    layerwise_decay: the layer-wise decay rate.
    n_layers: the number of layers; None infers it from the names.
    set_param_lr_fun: ``(decay_rate, n_layers, name) -> ratio``; None uses
      :func:`optax_adamwdl.layerwise_lr_decay`.

  Returns:
    A pytree of Python floats with the structure of ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"embed": jnp.zeros(2), "layers": [jnp.zeros(2), jnp.zeros(2)],
    ...           "head": jnp.zeros(2)}
    >>> lr_ratios(params, 0.5)
    {'embed': 0.125, 'head': 1.0, 'layers': [0.25, 0.5]}
  """
  params = parameter_tree(params)
  ratios = leaf_ratios(leaf_names(params), layerwise_decay, n_layers, set_param_lr_fun)
  return jax.tree.structure(params).unflatten(ratios)


def _scale(update: jax.Array, ratio: Any) -> jax.Array:
  if isinstance(ratio, float) and ratio == 1.0:
    return update
  # The ratio is applied in at least float32, so that a bfloat16 update is not
  # scaled by a ratio rounded to bfloat16; XLA fuses this into the step.
  wide = jnp.promote_types(update.dtype, jnp.float32)
  return (update.astype(wide) * jnp.asarray(ratio, wide)).astype(update.dtype)


def scale_by_layerwise_lr(
  layerwise_decay: jax.typing.ArrayLike = 1.0,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
) -> optax.GradientTransformation:
  """Scales each update by its parameter's layer-wise learning-rate ratio.

  .. math::

    u_p \\leftarrow r(\\text{name}_p)\\, u_p

  where :math:`r` is ``set_param_lr_fun(layerwise_decay, n_layers, name)``,
  by default :func:`optax_adamwdl.layerwise_lr_decay`. The ratios are constants
  derived from the pytree paths at trace time; the state is empty.

  Args:
    layerwise_decay: the decay rate :math:`\\alpha`; ``1.0`` scales nothing.
    n_layers: the number of layers; None infers it as the largest layer index
      found in the names plus one.
    set_param_lr_fun: ``(decay_rate, n_layers, name) -> ratio``; None uses
      :func:`optax_adamwdl.layerwise_lr_decay`.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_layerwise_lr(0.5)
    >>> grads = {"layers": [jnp.ones(2), jnp.ones(2)], "head": jnp.ones(2)}
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> [float(u[0]) for u in updates["layers"]]
    [0.25, 0.5]
  """
  _checks.check_range("layerwise_decay", layerwise_decay, low=0.0, low_inclusive=False)
  _checks.check_n_layers(n_layers)
  if set_param_lr_fun is not None and not callable(set_param_lr_fun):
    raise TypeError(
      "set_param_lr_fun must be a callable (decay_rate, n_layers, name) -> "
      f"ratio, got {set_param_lr_fun!r}."
    )

  def ratios_for(tree):
    return leaf_ratios(leaf_names(tree), layerwise_decay, n_layers, set_param_lr_fun)

  def init_fn(params):
    ratios_for(params)  # Raises here, at init, on a bad tree or rule.
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    scaled = [_scale(u, r) for u, r in zip(leaves, ratios_for(updates))]
    return treedef.unflatten(scaled), state

  return optax.GradientTransformation(init_fn, update_fn)
