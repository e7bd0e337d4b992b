"""The decoupled weight decay: optax's ``add_decayed_weights``, with a mask and multipliers.

The rule: parameter :math:`p` decays by :math:`\\lambda_p = \\lambda\\, \\mathbb{1}_p\\, w_p`,
where :math:`\\mathbb{1}_p` is the ``mask`` (or ``apply_decay_param_fun``; 1 when
neither is given) and :math:`w_p` the multiplier of the first ``wd_mults``
pattern that matches its name (1 when none does). So ``mask`` says whether,
``wd_mults`` how much; a 0 in either leaves the parameter undecayed.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adamwdl import _names
from optax_adamwdl._multipliers import Multipliers


def mask_from_names(apply_decay_param_fun: Callable[[str], bool]) -> Callable[[Any], Any]:
  """Turns Paddle's ``name -> bool`` predicate into an optax mask function."""
  if not callable(apply_decay_param_fun):
    raise TypeError(
      f"apply_decay_param_fun must be a callable name -> bool, got {apply_decay_param_fun!r}; "
      "under optax.inject_hyperparams put it in static_args."
    )

  def decide(name: str) -> bool:
    decision = apply_decay_param_fun(name)
    if not isinstance(decision, bool | np.bool_):
      raise TypeError(
        f"apply_decay_param_fun must return True or False, got {decision!r} for parameter {name!r}."
      )
    return bool(decision)

  return lambda params: jax.tree.map(decide, _names.param_names(params))


def decay_mask(mask: Any, apply_decay_param_fun: Callable[[str], bool] | None) -> Any:
  """The optax mask (a tree, a function of the params, or None) of either argument."""
  if isinstance(mask, jax.Array | jax.core.Tracer):
    # What optax.inject_hyperparams passes on for a mask function it took for a schedule: the
    # function called with the step count (False or True: no parameter decays, or every one).
    raise TypeError(
      f"mask came as an array ({mask!r}): under optax.inject_hyperparams a mask function is "
      "taken for a schedule and called with the step count; put 'mask' in static_args."
    )
  if apply_decay_param_fun is None:
    return mask
  if mask is not None:
    raise ValueError("Give mask (optax style) or apply_decay_param_fun (Paddle style), not both.")
  return mask_from_names(apply_decay_param_fun)


def multipliers(mults: Multipliers, params: Any) -> list[tuple[int | None, float]]:
  """``(rule index or None, multiplier)`` for each leaf of ``params``, checked."""
  return list(mults.match(_names.leaf_names(params), _names.masked_names(params)))


def _wide(x: Any) -> Any:
  return jnp.promote_types(x.dtype, jnp.float32)


def add_decayed_weights(
  weight_decay: optax.ScalarOrSchedule, mask: Any, mults: Multipliers
) -> optax.GradientTransformation:
  """``optax.add_decayed_weights(weight_decay, mask)`` with :math:`w_p` per parameter.

  Without rules this is optax's own; with them, optax's decay is given the
  parameters times their multipliers, so its state and mask stay optax's.

  Examples:
    >>> tx = add_decayed_weights(0.1, None, Multipliers.build("wd_mults", [("b", 0.0)]))
    >>> params = {"a": jnp.ones(1), "b": jnp.ones(1)}
    >>> updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    >>> {k: round(float(v[0]), 6) for k, v in updates.items()}
    {'a': 0.1, 'b': 0.0}
  """
  inner = optax.add_decayed_weights(weight_decay, mask)
  if not mults.rules:
    return inner

  def init_fn(params):
    multipliers(mults, params)  # Refuses here a pattern that matches no parameter.
    return inner.init(params)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(optax.NO_PARAMS_MSG)
    leaves, treedef = jax.tree.flatten(params)
    scaled = [  # in at least float32: one rounding, optax's (lambda * (w * p) + update)
      p if w == 1 else (jnp.zeros_like(p) if w == 0 else p.astype(_wide(p)) * w)
      for p, (_, w) in zip(leaves, multipliers(mults, params))
    ]
    return inner.update(updates, state, treedef.unflatten(scaled))

  return optax.GradientTransformation(init_fn, update_fn)


def decay_factors(
  params: Any, mask: Any, apply_decay_param_fun: Callable | None, mults: Multipliers
) -> list[tuple[float, str | None]]:
  """Each leaf's :math:`\\mathbb{1}_p\\, w_p`, and the ``wd_mults`` pattern that gave :math:`w_p`."""
  mask = decay_mask(mask, apply_decay_param_fun)
  if mask is None:
    on = [True] * len(jax.tree.leaves(params))
  else:  # a tree of bools, or a prefix of the params' tree, as optax takes it
    tree = mask(params) if callable(mask) else mask
    on = jax.tree.leaves(jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub),
                                      tree, params))  # fmt: skip
  return [
    (w, None if rule is None else mults.rules[rule][0]) if keep else (0.0, None)
    for keep, (rule, w) in zip(on, multipliers(mults, params))
  ]
