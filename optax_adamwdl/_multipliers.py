"""Multipliers by name pattern (big_vision's ``lr_mults`` and ``wd_mults``).

A rule is ``(pattern, multiplier)``: the pattern is a regular expression
``fullmatch``\\ ed against a parameter's dotted name (:func:`optax_adamwdl.param_names`),
and the first rule that matches gives the parameter its multiplier; a
parameter no rule matches gets 1. A pattern that matches no parameter of the
model is refused (a typo would otherwise do nothing), and with ``strict`` so
is a parameter that two patterns match (scenic's rule). Multipliers are Python
numbers, constants of the compiled step like the ladder's ratios.
"""

import dataclasses
import functools
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Mults = Sequence[tuple[str, float]] | Mapping[str, float] | None


@dataclasses.dataclass(frozen=True)
class Multipliers:
  """Validated ``(pattern, multiplier)`` rules of one argument (``lr_mults`` or ``wd_mults``).

  Examples:
    >>> rules = Multipliers.build("lr_mults", [(r"head\\..*", 10.0)])
    >>> rules.match(("head.kernel", "encoder.kernel"))
    ((0, 10.0), (None, 1.0))
  """

  argument: str
  rules: tuple[tuple[str, float], ...] = ()
  strict: bool = False

  @classmethod
  def build(cls, argument: str, mults: Mults, strict: bool = False) -> "Multipliers":
    """Checks ``mults`` (a sequence of pairs, or a mapping pattern -> multiplier)."""
    if mults is None:
      return cls(argument, (), bool(strict))
    pairs = mults.items() if isinstance(mults, Mapping) else mults
    if isinstance(mults, str) or not isinstance(pairs, Sequence | type({}.items())):
      raise TypeError(
        f"{argument} must be a sequence of (pattern, multiplier) pairs, e.g. "
        f"[(r'.*\\.bias', 0.0)], got {mults!r}."
      )
    rules = []
    for pair in pairs:
      if not (isinstance(pair, Sequence) and len(pair) == 2 and isinstance(pair[0], str)):
        raise TypeError(f"{argument} holds {pair!r}; each rule is a (pattern, multiplier) pair.")
      pattern, mult = pair
      try:
        re.compile(pattern)
      except re.error as error:
        raise ValueError(
          f"{argument} pattern {pattern!r} is not a regular expression: {error}."
        ) from None
      if not isinstance(mult, numbers.Real | np.generic) or isinstance(mult, bool | np.bool_):
        raise TypeError(
          f"{argument}[{pattern!r}] must be a Python number (a constant of the compiled step), "
          f"got {mult!r}."
        )
      if not (math.isfinite(float(mult)) and float(mult) >= 0):
        raise ValueError(f"{argument}[{pattern!r}] must be finite and >= 0, got {mult!r}.")
      rules.append((pattern, float(mult)))
    return cls(argument, tuple(rules), bool(strict))

  def match(self, names: Sequence[str], hidden: Sequence[str] = ()) -> tuple[tuple[Any, float]]:
    """``(index of the matching rule or None, multiplier)`` for each name, checked.

    ``hidden`` names the model's parameters that this tree leaves out
    (``optax.masked``): a pattern that matches only those still matches.
    """
    return _match(self, tuple(names), tuple(hidden))


@functools.lru_cache(maxsize=64)
def _match(rules: Multipliers, names: tuple, hidden: tuple) -> tuple:
  compiled = [re.compile(p) for p, _ in rules.rules]
  used = [False] * len(compiled)
  out = []
  for i, name in enumerate((*names, *hidden)):
    hits = [k for k, c in enumerate(compiled) if c.fullmatch(name)]
    for k in hits:
      used[k] = True
    if rules.strict and len(hits) > 1:
      patterns = [rules.rules[k][0] for k in hits]
      raise ValueError(
        f"Parameter {name!r} matches {len(hits)} {rules.argument} patterns {patterns} and "
        "strict_mults=True: make the patterns exclusive."
      )
    if i < len(names):
      out.append((hits[0], rules.rules[hits[0]][1]) if hits else (None, 1.0))
  unused = [p for (p, _), u in zip(rules.rules, used) if not u]
  if unused and (names or hidden):
    shown = ", ".join(repr(n) for n in (*names, *hidden)[:4])
    raise ValueError(
      f"{rules.argument} pattern {unused[0]!r} matches no parameter; patterns are fullmatched "
      f"against dotted names such as {shown} (see optax_adamwdl.param_names)."
    )
  return tuple(out)
