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


def _keep_inactive_rows(new_state: Any, old_state: Any, active: Any) -> Any:
  """Inactive rows of every ``optax.scale_by_adam`` state keep their old moments."""

  def is_adam(node):
    return isinstance(node, optax.ScaleByAdamState)

  def keep(new, old):
    if not is_adam(new):
      return new
    where = lambda n, o, a: jnp.where(a, n, o)
    return new._replace(
      mu=jax.tree.map(where, new.mu, old.mu, active),
      nu=jax.tree.map(where, new.nu, old.nu, active),
    )

  return jax.tree.map(keep, new_state, old_state, is_leaf=is_adam)


def update_nonzero_rows(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Applies ``inner`` only to the rows whose gradient is not entirely zero.

  Along axis 0 of every leaf (a 1-D leaf's rows are its elements), a row whose
  gradient is all zeros gets a zero update, and the moments of every
  ``optax.scale_by_adam`` inside ``inner`` keep that row's old values: no
  moment decay, no weight decay. Other rows get ``inner``'s update, and step counts
  advance globally, so bias correction uses the global step. This is the
  meaning of Paddle's ``lazy_mode`` (which updates only the rows of a sparse
  gradient, e.g. the embeddings of the tokens in the batch) on dense gradients.

  XLA still computes every row, so this is no speed-up; it changes the maths,
  for embeddings of rare tokens whose moments should not decay while unused.

  Args:
    inner: the transformation to apply, e.g. an ``optax.chain`` of Adam and
      weight decay.

  Returns:
    An ``optax.GradientTransformation`` with ``inner``'s state.

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

  def update_fn(updates, state, params=None):
    active = jax.tree.map(_active_rows, updates)
    new_updates, new_state = inner.update(updates, state, params)
    new_updates = jax.tree.map(lambda u, a: jnp.where(a, u, jnp.zeros_like(u)), new_updates, active)
    return new_updates, _keep_inactive_rows(new_state, state, active)

  return optax.GradientTransformation(inner.init, update_fn)
