"""An opt-in CPU trick: one pass over memory per parameter under XLA:CPU's multi-output fusion."""

import jax
import optax


def single_pass(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``inner``, computed so that XLA:CPU's multi-output fusion makes one loop of its step.

  XLA computes an Adam step's new moments in one loop and the update that reads
  them in another. Here the update is computed a second time from the same
  inputs, behind ``jax.lax.optimization_barrier`` so that XLA does not merge
  the two: the update's loop then reads only the parameters, gradients and
  moments, and multi-output fusion puts it in the moments' loop. Same values,
  bit for bit. Use it only when JAX runs on XLA:CPU with
  ``XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion``
  (set before JAX starts) and float32 parameters: without that flag the copy costs a pass of
  its own, and around ``multi_precision`` it was measured 5.8x slower, not faster.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = single_pass(optax.scale_by_adam())
    >>> updates, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
    >>> [round(float(u), 4) for u in updates]
    [1.0, 1.0]
  """
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, **extra_args):
    _, new_state = inner.update(updates, state, params, **extra_args)
    updates, state, params = jax.lax.optimization_barrier((updates, state, params))
    return inner.update(updates, state, params, **extra_args)[0], new_state

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)
