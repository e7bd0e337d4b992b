"""Paddle's ``multi_precision``: float32 master weights for bfloat16 and float16 parameters."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)


class MasterWeightsState(NamedTuple):
  """A float32 copy of each low-precision parameter (None for the others), and the inner state."""

  master: Any
  inner_state: Any


def _is_low(x) -> bool:
  return jnp.asarray(x).dtype in _LOW_PRECISION if x is not None else False


def _is_none(x) -> bool:
  return x is None


def with_master_weights(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs ``inner`` in float32 on a master copy of every bfloat16/float16 parameter.

  At ``init`` each low-precision leaf gets a float32 master copy, and ``inner``
  is initialised on the master tree (so Adam's moments are float32). Each
  ``update`` casts the gradients of those leaves to float32, runs ``inner`` on
  the master copies (weight decay included), adds its update to them, and
  returns for each low-precision leaf the float32 update that takes the
  parameter exactly to the new master rounded to its dtype under
  ``optax.apply_updates``. float32 leaves have no copy and pass straight
  through.

  Args:
    inner: the transformation to run in float32.

  Returns:
    An ``optax.GradientTransformation`` whose state is :class:`MasterWeightsState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> params = jnp.ones(2, jnp.bfloat16)
    >>> tx = with_master_weights(optax.sgd(1e-4))
    >>> state = tx.init(params)
    >>> for _ in range(100):  # each step is below half a bfloat16 ulp of 1.0
    ...   updates, state = tx.update(jnp.ones(2, jnp.bfloat16), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params.dtype, float(params[0]), round(float(state.master[0]), 4)
    (dtype(bfloat16), 0.98828125, 0.99)
  """

  def init_fn(params):
    master = jax.tree.map(lambda p: p.astype(jnp.float32) if _is_low(p) else None, params)
    return MasterWeightsState(master, inner.init(_full(master, params)))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("multi_precision needs the params: call update(grads, state, params).")
    full = _full(state.master, params)
    grads = jax.tree.map(
      lambda m, g: g if m is None else g.astype(jnp.float32),
      state.master,
      updates,
      is_leaf=_is_none,
    )
    inner_updates, inner_state = inner.update(grads, state.inner_state, full)
    master = jax.tree.map(
      lambda m, u: None if m is None else m + u, state.master, inner_updates, is_leaf=_is_none
    )

    def to_param(m, u, p):
      if m is None:
        return u
      # float32, so that p + u rounds to exactly m.astype(p.dtype) in apply_updates.
      return m.astype(p.dtype).astype(jnp.float32) - p.astype(jnp.float32)

    out = jax.tree.map(to_param, master, inner_updates, params, is_leaf=_is_none)
    return out, MasterWeightsState(master, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def _full(master, params):
  """The parameters with each low-precision leaf replaced by its float32 master."""
  return jax.tree.map(lambda m, p: p if m is None else m, master, params, is_leaf=_is_none)
