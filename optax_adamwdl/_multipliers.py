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
_TINY, _HUGE = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


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
    rules = tuple(_rule(argument, pair) for pair in pairs)
    return cls(argument, rules, bool(strict))

  def match(self, names: Sequence[str], hidden: Sequence[str] = ()) -> tuple[tuple[Any, float]]:
    """``(index of the matching rule or None, multiplier)`` for each name, checked.

    Every rule must be the first match of some name: a pattern that matches
    nothing, or only names an earlier pattern takes, would do nothing. ``hidden``
    names what this tree leaves out (``optax.masked``, ``optax.partition``):
    those parameters are another transformation's, so no rule applies to them,
    but a tree that hides every parameter still has its rules checked.
    """
    return _match(self, tuple(names), bool(hidden))


def _rule(argument: str, pair: Any) -> tuple[str, float]:
  """One ``(pattern, multiplier)`` pair, checked: a regular expression and a float32 number."""
  if not (isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2):
    raise TypeError(f"{argument} holds {pair!r}; each rule is a (pattern, multiplier) pair.")
  pattern, mult = pair
  if not isinstance(pattern, str):
    raise TypeError(
      f"{argument} pattern {pattern!r} must be a str, a regular expression"
      + (" (pass its .pattern)." if isinstance(pattern, re.Pattern) else ".")
    )
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
  try:
    value = float(mult) + 0.0  # -0.0 is 0.0
  except OverflowError:
    value = math.inf
  if not (value == 0 or _TINY <= value <= _HUGE):
    raise ValueError(
      f"{argument}[{pattern!r}] must be 0 or a float32 normal number in [{_TINY:.3g}, "
      f"{_HUGE:.3g}], got {mult!r}."
    )
  return pattern, value


@functools.lru_cache(maxsize=64)
def _match(rules: Multipliers, names: tuple, hidden: bool) -> tuple:
  compiled = [re.compile(p) for p, _ in rules.rules]
  won = [False] * len(compiled)
  out = []
  for name in names:
    hits = [k for k, c in enumerate(compiled) if c.fullmatch(name)]
    if rules.strict and len(hits) > 1:
      patterns = [rules.rules[k][0] for k in hits]
      raise ValueError(
        f"Parameter {name!r} matches {len(hits)} {rules.argument} patterns {patterns} and "
        "strict_mults=True: make the patterns exclusive."
      )
    if hits:
      won[hits[0]] = True
    out.append((hits[0], rules.rules[hits[0]][1]) if hits else (None, 1.0))
  dead = [p for (p, _), w in zip(rules.rules, won) if not w]
  if dead and (names or hidden):
    taken = any(re.fullmatch(dead[0], n) for n in names)
    shown = (
      ", ".join(repr(n) for n in names[:4]) or "none: optax.masked or partition hides them all"
    )
    raise ValueError(
      f"{rules.argument} pattern {dead[0]!r} "
      + ("is never the first match: an earlier pattern takes every parameter it matches"
         if taken else "matches no parameter")
      + "; patterns are fullmatched, first match wins, against the dotted names of the "
      f"parameters this optimizer updates, such as {shown} (see optax_adamwdl.param_names)."
    )  # fmt: skip
  return tuple(out)
