"""Tracing a forward pass: where, in execution order, each parameter is read.

:func:`trace` runs ``jax.make_jaxpr`` on the forward pass (nothing is compiled
or run), numbers its equations in execution order, walking into called
functions, branches and loop bodies, and records the equations that read each
parameter leaf, following casts, reshapes and stacks of parameters
(:class:`Reads`). :mod:`optax_adamwdl._check` compares that order with the
ladder.
"""

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex

_PASS_THROUGH = frozenset({"device_put", "optimization_barrier"})  # output i is input i


@dataclasses.dataclass
class Loop:
  """A scan or while loop: how each parameter entered it ("const", "carry" or "xs", sliced per
  iteration) and which of them its body reads."""

  entries: dict[int, str]
  reverse: bool
  parent: "Loop | None"
  read: set[int] = dataclasses.field(default_factory=set)


def _open(jaxpr: Any) -> Any:
  return jaxpr.jaxpr if isinstance(jaxpr, jex.ClosedJaxpr) else jaxpr


def _sub_jaxprs(params: dict) -> list:
  """The jaxprs in an equation's params (``jax.extend.core.jaxprs_in_params``, which jax 0.9
  lacks)."""
  kinds = (jex.ClosedJaxpr, jex.Jaxpr)
  found = []
  for value in params.values():
    values = value if isinstance(value, tuple | list) else (value,)
    found += [_open(v) for v in values if isinstance(v, kinds)]
  return found


def _scan_counts(params: dict) -> tuple[int, int]:
  """A scan's numbers of constants and carries: ``num_consts``/``num_carry``, or jax 0.12's
  ``ft_in`` (one placeholder per operand: constants, carries, sliced inputs)."""
  if "num_consts" in params:
    return params["num_consts"], params["num_carry"]
  consts, carry, _ = params["ft_in"].elts
  return len(consts), len(carry)


class Reads:
  """The positions, in execution order, of the equations that read each parameter.

  Every equation gets the next position, the equations of a called function
  (``jit``, ``custom_jvp``/``custom_vjp``, ``checkpoint``) or of a ``cond``
  branch in place, a loop's body once. A variable computed from parameters
  alone (and literals) stands for them, also inside called functions and
  loops: a parameter is read where it meets what the inputs computed.
  """

  def __init__(self, n: int):
    self.at: list[list[int]] = [[] for _ in range(n)]
    self.loops: list[Loop] = []
    self._clock = 0
    self._active: list[Loop] = []

  def walk(self, jaxpr: Any, env: dict) -> list:
    """Walks ``jaxpr`` whose variables ``env`` maps to parameters; returns its outputs' ones."""
    for eqn in jaxpr.eqns:
      self._clock += 1
      ins = [None if isinstance(v, jex.Literal) else env.get(v) for v in eqn.invars]
      if any(ins):
        self._equation(eqn, ins, env)
    return [None if isinstance(v, jex.Literal) else env.get(v) for v in jaxpr.outvars]

  def read(self, ins: list) -> None:
    for params in ins:
      for i in params or ():
        self.at[i].append(self._clock)
        for loop in self._active:
          if i in loop.entries:
            loop.read.add(i)

  def finish(self, outs: list) -> None:
    """Counts the parameters that the forward pass returns as read after everything."""
    self._clock += 1
    self.read(outs)

  def _call(self, jaxpr: Any, ins: list) -> list:
    jaxpr = _open(jaxpr)
    return self.walk(jaxpr, {v: a for v, a in zip(jaxpr.invars, ins) if a})

  def _loop(self, ins: list, kinds: list[str], reverse: bool, bodies: list) -> None:
    entries = {i: kind for a, kind in zip(ins, kinds) if a for i in a}
    loop = Loop(entries, reverse, self._active[-1] if self._active else None)
    self.loops.append(loop)
    self._active.append(loop)
    for jaxpr, args in bodies:
      self._call(jaxpr, args)
    self._active.pop()

  def _equation(self, eqn: Any, ins: list, env: dict) -> None:
    name, params = eqn.primitive.name, eqn.params
    if name == "scan":
      consts, carry = _scan_counts(params)
      kinds = ["const"] * consts + ["carry"] * carry + ["xs"] * (len(ins) - consts - carry)
      self._loop(ins, kinds, params["reverse"], [(params["jaxpr"], ins)])
    elif name == "while":
      cond, body = params["cond_nconsts"], params["body_nconsts"]
      carry = ins[cond + body :]
      kinds = ["const"] * (cond + body) + ["carry"] * len(carry)
      bodies = [(params["cond_jaxpr"], ins[:cond] + carry), (params["body_jaxpr"], ins[cond:])]
      self._loop(ins, kinds, False, bodies)
    elif name == "cond":
      self.read(ins[:1])
      for branch in params["branches"]:
        self._call(branch, ins[1:])
    else:
      subs = _sub_jaxprs(params)
      if len(subs) == 1 and len(subs[0].invars) == len(ins):
        env.update((v, a) for v, a in zip(eqn.outvars, self._call(subs[0], ins)) if a)
      elif not subs and name in _PASS_THROUGH:
        env.update((v, a) for v, a in zip(eqn.outvars, ins) if a)
      elif not subs and all(a for a, v in zip(ins, eqn.invars) if not isinstance(v, jex.Literal)):
        # Computed from parameters alone (a cast, a reshape, a dequantization, a LoRA merge):
        # it stands for them, and they are read where it meets the inputs.
        union = tuple(sorted({i for a in ins if a for i in a}))
        env.update((v, union) for v in eqn.outvars)
      else:
        self.read(ins)


def _is_array(x: Any) -> bool:
  return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def trace(forward: Callable, params: Any, example_inputs: tuple) -> tuple[Any, Reads]:
  """The parameter tree and where ``forward(params, *example_inputs)`` reads each leaf."""
  leaves, treedef = jax.tree.flatten(example_inputs)
  arrays = [x for x in leaves if _is_array(x)]

  def inputs(traced):
    traced = iter(traced)
    return treedef.unflatten([next(traced) if _is_array(x) else x for x in leaves])

  nnx = sys.modules.get("flax.nnx")  # A Module exists only if flax.nnx was imported.
  if nnx is not None and isinstance(params, nnx.Module):
    graphdef, tree, rest = nnx.split(params, nnx.Param, ...)  # rest: rng counts, statistics
    call = lambda t, r, traced: forward(nnx.merge(graphdef, t, r), *inputs(traced))
  else:
    tree, rest = params, None
    call = lambda t, _, traced: forward(t, *inputs(traced))
  jaxpr = jax.make_jaxpr(call)(tree, rest, arrays).jaxpr
  n = len(jax.tree.leaves(tree))
  reads = Reads(n)
  reads.finish(reads.walk(jaxpr, {v: (i,) for i, v in enumerate(jaxpr.invars[:n])}))
  return tree, reads
