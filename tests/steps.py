"""The one training loop the tests share: apply ``tx`` to a list of gradients."""

import jax
import jax.numpy as jnp
import optax


def run_steps(tx, init, grads, jit=True):
  """Returns (params, state) after one ``tx`` step per gradient tree in ``grads``."""
  update = jax.jit(tx.update) if jit else tx.update
  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state
