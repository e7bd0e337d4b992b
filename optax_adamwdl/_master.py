"""Paddle's ``multi_precision``: float32 master weights for bfloat16 and float16 parameters."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)
_SAMPLE = 8  # first elements of each leaf on which the parameters are checked against the master


class MasterWeightsState(NamedTuple):
  """The master copies, the inner state, and where the parameters must be.

  ``master`` has the structure of the parameters: a float32 copy of each
  bfloat16/float16 leaf and ``optax.MaskedNode()`` for the others (so that
  ``optax.tree_map_params`` maps it like the parameters; pass it
  ``is_leaf=lambda x: isinstance(x, optax.MaskedNode)``). ``landed`` is one
  small float32 vector: the first elements of each low-precision parameter as
  the last update lands them, which the next update checks.
  """

  master: Any
  inner_state: Any
  landed: jax.Array


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _master_copy(param: Any) -> Any:
  dtype = getattr(param, "dtype", None)
  if dtype is None:  # optax.tree_map_params' placeholder: the master tree is parameter-shaped
    return param
  return param.astype(jnp.float32) if dtype in _LOW_PRECISION else optax.MaskedNode()


def _full(master: Any, params: Any) -> Any:
  """The parameters with each low-precision leaf replaced by its float32 master."""
  return jax.tree.map(lambda m, p: p if _is_masked(m) else m, master, params, is_leaf=_is_masked)


def _firsts(tree: Any) -> Any:
  """Each leaf's first elements, flattened."""
  return jax.tree.map(
    lambda x: x if _is_masked(x) else x.reshape(-1)[:_SAMPLE], tree, is_leaf=_is_masked
  )


def _first(params: Any, master: Any) -> jax.Array:
  """The first elements of each low-precision parameter, as one float32 vector."""
  pairs = zip(jax.tree.leaves(master, is_leaf=_is_masked), jax.tree.leaves(params))
  low = [p for m, p in pairs if not _is_masked(m)]
  if not low or getattr(low[0], "dtype", None) is None:  # none, or tree_map_params' placeholders
    return jnp.zeros((0,), jnp.float32)
  return jnp.concatenate([p.reshape(-1)[:_SAMPLE].astype(jnp.float32) for p in low])


def _slack(params: Any, master: Any) -> jax.Array:
  """Half a unit in the last place of each element of :func:`_first` (at least, less than one).

  The check compares the parameters with where the last update landed them, computed under
  ``jax.jit``, where XLA may keep a low-precision sum in float32 (excess precision): that value
  is within half a unit of the rounded one, while a parameter that moved differs by a whole unit.
  """
  pairs = zip(jax.tree.leaves(master, is_leaf=_is_masked), jax.tree.leaves(params))
  low = [p for m, p in pairs if not _is_masked(m)]
  if not low or getattr(low[0], "dtype", None) is None:
    return jnp.zeros((0,), jnp.float32)

  def half_ulp(p):
    info = jnp.finfo(p.dtype)
    first = jnp.abs(p.reshape(-1)[:_SAMPLE].astype(jnp.float32))
    return first * 2.0 ** -(info.nmant + 1) + float(info.smallest_subnormal)

  return jnp.concatenate([half_ulp(p) for p in low])


def _refuse_moved(moved: Any) -> None:
  if moved:
    raise ValueError(
      "multi_precision: the parameters are not where the last update put them, so a later "
      "transformation changed the update after the master weights took it, or the parameters "
      "were changed between steps. The master weights must see the final update: put them "
      "outermost, e.g. with_master_weights(optax.chain(adamwdl(...), optax.scale(0.1))) "
      "instead of optax.chain(adamwdl(..., multi_precision=True), optax.scale(0.1)). After "
      "changing the parameters yourself, call init again."
    )


def _check_landed(landed: jax.Array, params: Any, master: Any) -> None:
  """Refuses parameters that are not where the last update landed them (on the first elements)."""
  if landed.size == 0:
    return
  moved = jnp.any(jnp.abs(_first(params, master) - landed) > _slack(params, master))
  if isinstance(moved, jax.core.Tracer):
    jax.debug.callback(_refuse_moved, moved)
  else:
    _refuse_moved(bool(moved))


def with_master_weights(
  inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Runs ``inner`` in float32 on a master copy of every bfloat16/float16 parameter.

  At ``init`` each low-precision leaf gets a float32 master copy and ``inner``
  is initialised on the master tree (so Adam's moments are float32). Each
  ``update`` casts those leaves' gradients to float32, runs ``inner`` on the
  master copies, adds its update to them, and returns, in the gradient's
  dtype, ``round(new master) - param``: ``optax.apply_updates`` then lands on
  the new master rounded to the parameter's dtype (exactly whenever the old
  and new values are within a factor of two of each other, Sterbenz's lemma;
  otherwise within one rounding of the step). The master, not the parameter,
  carries the step forward, so steps below half a bfloat16 ulp accumulate.
  Other leaves pass through to ``inner`` unchanged. Extra keyword arguments
  are passed on to ``inner``.

  The master must see the final update, so it sits outermost:
  ``with_master_weights(optax.chain(inner, optax.scale(0.1)))``, not
  ``optax.chain(with_master_weights(inner), optax.scale(0.1))``, whose master
  would take the unscaled step. Each ``update`` checks, on the first
  elements of every leaf, that the parameters are where its last update put
  them, and raises ValueError (eagerly; under ``jax.jit`` a runtime error
  carrying the same message) when a later transformation changed the update
  or the parameters were changed between steps.

  Args:
    inner: the transformation to run in float32.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is
    :class:`MasterWeightsState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> params = jnp.ones(2, jnp.bfloat16)
    >>> tx = with_master_weights(optax.sgd(1e-4))
    >>> state = tx.init(params)
    >>> for _ in range(100):  # each step is below half a bfloat16 ulp of 1.0
    ...   updates, state = tx.update(jnp.ones(2, jnp.bfloat16), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> updates.dtype, params.dtype, float(params[0]), round(float(state.master[0]), 4)
    (dtype(bfloat16), dtype(bfloat16), 0.98828125, 0.99)
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    master = jax.tree.map(_master_copy, params)
    return MasterWeightsState(master, inner.init(_full(master, params)), _first(params, master))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("multi_precision needs the params: call update(grads, state, params).")
    master = state.master
    _check_landed(state.landed, params, master)
    grads = jax.tree.map(
      lambda m, g: g if _is_masked(m) else g.astype(jnp.float32),
      master,
      updates,
      is_leaf=_is_masked,
    )
    steps, inner_state = inner.update(grads, state.inner_state, _full(master, params), **extra_args)
    master = jax.tree.map(
      lambda m, s: m if _is_masked(m) else m + s, master, steps, is_leaf=_is_masked
    )

    def to_update(m, step, p, g):
      if _is_masked(m):
        return step
      # Both terms are exact in float32; the difference rounds once, to the gradient's dtype.
      return (m.astype(p.dtype).astype(jnp.float32) - p.astype(jnp.float32)).astype(g.dtype)

    out = jax.tree.map(to_update, master, steps, params, updates, is_leaf=_is_masked)
    # Where the caller's optax.apply_updates will land the first elements (computed on them
    # alone, so that XLA still fuses each whole update into the caller's apply).
    firsts = [_firsts(t) for t in (master, steps, params, updates)]
    out_firsts = jax.tree.map(to_update, *firsts, is_leaf=_is_masked)
    landed = optax.apply_updates(firsts[2], out_firsts)
    return out, MasterWeightsState(master, inner_state, _first(landed, master))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
