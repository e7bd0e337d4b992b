"""Argument checks that run on concrete values and step aside for traced ones.

Under ``optax.inject_hyperparams`` the numeric arguments arrive as arrays:
concrete at ``init`` (where they are checked) and traced inside ``update``
(where no check is possible, and none is needed: ``init`` already ran).
"""

import math
import numbers
from typing import Any

import jax
import numpy as np


def concrete_number(name: str, value: Any) -> float | None:
  """Returns ``value`` as a Python number, or None when it is traced.

  Hyperparameters are scalars: a Paddle-style shape-[1] tensor is refused, since
  it would silently broadcast every scalar parameter and moment to shape (1,).

  Raises:
    TypeError: ``value`` is neither a real number nor a one-element array.
  """
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, bool) or isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be a number or a 0-d array, got {value!r}.")
  if isinstance(value, numbers.Real):
    return value
  try:
    array = np.asarray(value)
  except TypeError:
    array = None
  if array is None or array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
    raise TypeError(f"{name} must be a number or a 0-d array, got {value!r}.")
  return array.item()


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


def check_n_layers(n_layers: Any) -> int | None:
  """Returns a concrete ``n_layers`` as an int (None when absent or traced)."""
  if n_layers is None:
    return None
  number = concrete_number("n_layers", n_layers)
  if number is None:
    return None
  if number != int(number) or number < 1:
    raise ValueError(f"n_layers must be a positive integer or None, got {n_layers!r}.")
  return int(number)
