"""Paddle's per-tensor gradient clipping strategies that optax has no exact twin for.

Paddle's third strategy, ``ClipGradByGlobalNorm``, is ``optax.clip_by_global_norm``.
"""

import jax
import jax.numpy as jnp
import optax

from optax_adamwdl import _checks


def clip_by_norm(clip_norm: float) -> optax.GradientTransformation:
  """Clips each tensor to L2 norm at most ``clip_norm`` (``paddle.nn.ClipGradByNorm``).

  .. math::

    g \\leftarrow g \\cdot \\frac{c}{\\max(\\lVert g \\rVert_2, c)}

  Unlike ``optax.clip_by_global_norm`` every tensor is clipped on its own.

  Args:
    clip_norm: the largest L2 norm :math:`c` a tensor may keep, > 0.

  Returns:
    An ``optax.GradientTransformation`` with empty state.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = clip_by_norm(1.0)
    >>> clipped, _ = tx.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}, None)
    >>> [round(float(x), 2) for x in clipped["a"]], [round(float(x), 2) for x in clipped["b"]]
    ([0.6, 0.8], [0.3, 0.4])
  """
  _checks.check_range("clip_norm", clip_norm, low=0.0, low_inclusive=False)

  def clip_one(g):
    norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.promote_types(g.dtype, jnp.float32)))))
    return jnp.where(norm > clip_norm, g * (clip_norm / norm).astype(g.dtype), g)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(clip_one, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def clip_by_value(max_value: float, min_value: float | None = None) -> optax.GradientTransformation:
  """Clips every gradient element into ``[min_value, max_value]`` (``paddle.nn.ClipGradByValue``).

  ``optax.clip(max_delta)`` is the symmetric case; this one also takes Paddle's
  asymmetric bounds.

  Args:
    max_value: the upper bound.
    min_value: the lower bound; None means ``-max_value`` (then ``max_value``
      must be > 0).

  Returns:
    An ``optax.GradientTransformation`` with empty state.

  Examples:
    >>> import jax.numpy as jnp
    >>> updates, _ = clip_by_value(1.0, -0.5).update(jnp.array([-2.0, 0.2, 3.0]), None)
    >>> updates.tolist()
    [-0.5, 0.20000000298023224, 1.0]
  """
  high = _checks.concrete_number("max_value", max_value)
  if min_value is None:
    _checks.check_range("max_value", max_value, low=0.0, low_inclusive=False)
    min_value = -max_value
  low = _checks.concrete_number("min_value", min_value)
  if high is not None and low is not None and not low < high:
    raise ValueError(f"clip_by_value needs min_value < max_value, got {low} and {high}.")

  def update_fn(updates, state, params=None):
    del params
    return optax.tree.clip(updates, min_value, max_value), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
