"""Paddle's ``lazy_mode`` on dense JAX gradients: rows with no gradient are left alone."""

from typing import Any

import jax
import jax.numpy as jnp
import optax


def _active_rows(grad: jax.Array) -> jax.Array:
  """True for each row (slice along axis 0) with a nonzero gradient, shaped to broadcast."""
  if grad.ndim <= 1:
    return grad != 0
  return jnp.any(grad != 0, axis=tuple(range(1, grad.ndim)), keepdims=True)


def _is_adam(node: Any) -> bool:
  return isinstance(node, optax.ScaleByAdamState)


def _is_masked(node: Any) -> bool:
  return isinstance(node, optax.MaskedNode)


def _keep_inactive_rows(new_state: Any, old_state: Any, active: Any) -> Any:
  """Inactive rows of every ``optax.scale_by_adam`` state keep their old moments."""

  def rows(new, old, a):
    return new if _is_masked(new) else jnp.where(a, new, old)

  def keep(new, old):
    if not _is_adam(new):
      return new
    mu = jax.tree.map(rows, new.mu, old.mu, active, is_leaf=_is_masked)
    return new._replace(mu=mu, nu=jax.tree.map(rows, new.nu, old.nu, active, is_leaf=_is_masked))

  return jax.tree.map(keep, new_state, old_state, is_leaf=_is_adam)


def update_nonzero_rows(
  inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Applies ``inner`` only to the rows whose gradient is not entirely zero.

  Along axis 0 of every leaf (a 1-D leaf's rows are its elements), a row whose
  gradient is all zeros gets a zero update, and the moments of every
  ``optax.scale_by_adam`` inside ``inner`` keep that row's old values: no
  moment decay, no weight decay. Other rows get ``inner``'s update, and step
  counts advance globally, so bias correction uses the global step. This is
  Paddle's ``lazy_mode`` (which updates only the rows of a sparse gradient,
  e.g. the embeddings of the tokens in the batch) on dense gradients. XLA still
  computes every row: it changes the maths, not the speed. Extra keyword
  arguments are passed on to ``inner``.

  Args:
    inner: the transformation to apply, e.g. an ``optax.chain`` of Adam and
      weight decay.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``inner``'s state.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> tx = update_nonzero_rows(optax.adam(0.1))
    >>> params = jnp.ones((2, 2))
    >>> grads = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> [[round(float(u), 3) for u in row] for row in updates]
    [[0.0, 0.0], [-0.1, -0.0]]
  """
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, **extra_args):
    active = jax.tree.map(_active_rows, updates)
    new_updates, new_state = inner.update(updates, state, params, **extra_args)
    new_updates = jax.tree.map(lambda u, a: jnp.where(a, u, jnp.zeros_like(u)), new_updates, active)
    return new_updates, _keep_inactive_rows(new_state, state, active)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)
