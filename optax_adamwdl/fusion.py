"""One pass over memory per parameter on XLA:CPU, when its multi-output fusion is on."""

import functools
import re

import jax
import jax.numpy as jnp
import optax


@functools.cache
def cpu_multi_output_fusion() -> bool:
  """Whether JAX runs on XLA:CPU with multi-output fusion on.

  That is ``XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion``
  (read when JAX starts). Checked once by compiling two loops over one input
  and looking for XLA's merged, tuple-shaped loop.
  """
  if jax.default_backend() != "cpu":
    return False
  x = jax.ShapeDtypeStruct((1024,), jnp.float32)
  hlo = jax.jit(lambda a: (a + 1, a * 2)).lower(x).compile().as_text()
  return re.search(r"= \([^)]*\) fusion\(", hlo) is not None


def single_pass(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """``inner``, computed so that XLA:CPU's multi-output fusion makes one loop of it.

  XLA computes ``optax.scale_by_adam``'s new moments in one loop and the step
  that reads them (``p + update``) in another: 36 bytes per parameter rather
  than 28. Here the update is computed a second time from the same inputs,
  behind ``jax.lax.optimization_barrier`` so that XLA does not merge the two:
  the update's loop then reads only p, g, m and v, and multi-output fusion puts
  it in the moments' loop. Same values, bit for bit. Without multi-output
  fusion the copy would cost a pass of its own, so then this is ``inner``.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = single_pass(optax.scale_by_adam())
    >>> updates, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
    >>> [round(float(u), 4) for u in updates]
    [1.0, 1.0]
  """

  def update_fn(updates, state, params=None):
    if not cpu_multi_output_fusion():
      return inner.update(updates, state, params)
    _, new_state = inner.update(updates, state, params)
    updates, state = jax.lax.optimization_barrier((updates, state))
    return inner.update(updates, state, params)[0], new_state

  return optax.GradientTransformation(inner.init, update_fn)
