"""Checks of arguments and ratios: they run on concrete values and step aside for traced ones.

Under ``optax.inject_hyperparams`` the numeric arguments arrive as arrays:
concrete at ``init`` (where they are checked) and traced inside ``update``
(where no check is possible, and none is needed: ``init`` already ran).
"""

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_FLOAT32 = np.finfo(np.float32)
_STACK_KEYS = frozenset({"n_layers", "decay"})


def is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def when_run(check: Callable[..., None], *values: Any) -> None:
  """Runs ``check(*values)`` now, or, when a value is traced (a jitted step), as the step runs.

  So that a traced ``init`` refuses what an eager one refuses: the error then comes as the
  runtime error that carries the check's message. (``jax.eval_shape`` runs nothing.)
  """
  if any(is_traced(v) for v in jax.tree.leaves(values)):
    jax.debug.callback(check, *values)
  else:
    check(*values)


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


def number_or_traced(name: str, value: Any) -> Any:
  """A concrete hyperparameter as a Python number (hashable); a traced one unchanged."""
  number = concrete_number(name, value)
  return value if number is None else number


def check_stacks(
  stacks: Mapping[str, Any] | Sequence[str] | None,
) -> tuple[tuple[str, Any, Any], ...]:
  if stacks is None:
    return ()
  if isinstance(stacks, str) or not isinstance(stacks, Mapping | Sequence):
    raise TypeError(
      'stacks must map a name prefix to its options, e.g. {"encoder": {}, "decoder": '
      f'{{"decay": 0.9}}}}, or list prefixes; got {stacks!r}.'
    )
  items = stacks.items() if isinstance(stacks, Mapping) else [(p, None) for p in stacks]
  checked = []
  for prefix, options in items:
    options = dict(options or {})
    if not isinstance(prefix, str) or not prefix or set(options) - _STACK_KEYS:
      raise ValueError(
        f"stacks[{prefix!r}] must be a non-empty name prefix with options among "
        f"{sorted(_STACK_KEYS)}; got {options!r}."
      )
    label = f"stacks[{prefix!r}]"
    decay = options.get("decay")
    if decay is not None:
      check_range(f"{label}['decay']", decay, low=0.0, low_inclusive=False)
      decay = number_or_traced(f"{label}['decay']", decay)
    n_layers = check_n_layers(f"{label}['n_layers']", options.get("n_layers"))
    checked.append((prefix, n_layers, decay))
  prefixes = [p for p, _, _ in checked]
  for p in prefixes:
    for q in prefixes:
      if p != q and q.startswith(p + "."):
        raise ValueError(f"stacks {p!r} and {q!r} overlap: give stacks that do not nest.")
  return tuple(checked)


def check_scan_axes(scan_axes: Any) -> Any:
  if scan_axes is None or callable(scan_axes):
    return scan_axes
  if not isinstance(scan_axes, Mapping) or not all(
    isinstance(k, str) and isinstance(a, int) and not isinstance(a, bool)
    for k, a in scan_axes.items()
  ):
    raise TypeError(
      "scan_axes must map a name component to an integer axis, e.g. {'encoderblock': 0}, or be "
      f"a function name -> axis or None; got {scan_axes!r}."
    )
  return tuple(sorted(scan_axes.items()))


def rule_ratio(ratio: Any, name: str) -> float:
  """A ``set_param_lr_fun`` result, checked: a finite real number >= 0."""
  try:
    number = concrete_number("ratio", ratio)
  except TypeError:
    number = None
  if number is None or not math.isfinite(number) or number < 0:
    raise (TypeError if number is None else ValueError)(
      f"set_param_lr_fun returned {ratio!r} for parameter {name!r}; a learning-rate ratio "
      "must be a finite real number >= 0."
    )
  return float(number)


def check_representable(placement: Any, raw: Any, ratio: Any, freeze_below: Any) -> None:
  """Refuses a ratio that float32 cannot hold, or that the ladder's arithmetic flushed to 0."""
  raw, final = np.ravel(np.asarray(raw, np.float64)), np.ravel(ratio)
  frozen = (final == 0) & (freeze_below is not None) & (raw < (freeze_below or 0))
  meant_zero = (placement.rule in ("head", "unrecognised", "custom")) & (raw == 0)
  normal = (final >= _FLOAT32.tiny) & (final <= _FLOAT32.max)
  bad = ~(normal | frozen | ((final == 0) & meant_zero))
  if bad.any():
    where = f" (layer {int(np.argmax(bad))} of the scanned leaf)" if final.size > 1 else ""
    raise ValueError(
      f"The learning-rate ratio of parameter {placement.name!r}{where} is "
      f"{raw[bad][0]!r}, which float32 cannot hold (normal range {_FLOAT32.tiny:.3g} to "
      f"{_FLOAT32.max:.3g}): its updates would be 0 or inf. If it should not train, say so with "
      "freeze_below=...; to keep it training, set a floor with min_ratio=... (or use a larger "
      "layerwise_decay or depth_normalized=True)."
    )
