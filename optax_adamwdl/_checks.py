"""Argument checks that run on concrete values and step aside for traced ones.

Under ``optax.inject_hyperparams`` the numeric arguments arrive as arrays:
concrete at ``init`` (where they are checked) and traced inside ``update``
(where no check is possible, and none is needed: ``init`` already ran).
"""

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def concrete_number(name: str, value: Any) -> float | None:
  """Returns ``value`` as a Python float or int, or None when it is traced.

  Hyperparameters are real scalars, in any real dtype (bfloat16 included). A
  Paddle-style shape-[1] tensor is refused, since it would silently broadcast
  every scalar parameter and moment to shape (1,).

  Raises:
    TypeError: ``value`` is not a real number or a 0-d real array.
  """
  if is_traced(value):
    return None
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return value
  dtype = getattr(value, "dtype", None)
  real = dtype is not None and (
    jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
  )
  if not real or np.ndim(value) != 0:
    raise TypeError(f"{name} must be a real number or a 0-d real array, got {value!r}.")
  return np.asarray(value).item() if jnp.issubdtype(dtype, jnp.integer) else float(value)


def check_range(
  name: str,
  value: Any,
  *,
  low: float = -math.inf,
  high: float = math.inf,
  low_inclusive: bool = True,
  high_inclusive: bool = True,
) -> None:
  """Raises ValueError unless a concrete ``value`` is finite and within bounds."""
  number = concrete_number(name, value)
  if number is None:
    return
  above = number >= low if low_inclusive else number > low
  below = number <= high if high_inclusive else number < high
  if not (math.isfinite(number) and above and below):
    interval = ("[" if low_inclusive else "(") + f"{low}, {high}" + ("]" if high_inclusive else ")")
    raise ValueError(f"{name} must be finite and in {interval}, got {value!r}.")


def check_n_layers(name: str, n_layers: Any) -> Any:
  """Returns ``n_layers`` as an int (unchanged when None or traced)."""
  if n_layers is None:
    return None
  number = concrete_number(name, n_layers)
  if number is None:
    return n_layers
  if not math.isfinite(number) or number != int(number) or number < 1:
    raise ValueError(f"{name} must be a positive integer or None, got {n_layers!r}.")
  return int(number)


def check_callable(name: str, value: Any, signature: str) -> None:
  if value is not None and not callable(value):
    raise TypeError(f"{name} must be a callable {signature}, got {value!r}.")
