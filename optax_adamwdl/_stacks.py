"""The ladder's first steps: each name's site, each leaf's stack, each stack's depth.

A *site* says where one name sits (:func:`optax_adamwdl._layers.site`, or a
scanned leaf holding every layer). A *stack* is a list of layers and what
belongs to it (encoder and decoder, text and vision towers): its key is a
prefix that every member's name starts with. A stack's *depth* is its number
of layers, with the ladder step of each layer index.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from optax_adamwdl import _checks, _layers
from optax_adamwdl._ladder_options import LadderOptions

_SHOWN = 5


def first_names(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:_SHOWN])
  return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def within(name: str, prefix: str) -> bool:
  return prefix == "" or name == prefix or name.startswith(prefix + ".")


# 1. Sites.


def _scanned(options: LadderOptions, name: str, shape: tuple | None) -> _layers.Site | None:
  """A scanned leaf's site, ("scanned", (length, axis, ndim), prefix), or None.

  A hidden leaf (``shape`` None: ``optax.masked`` left it out) has no length: (None, None, 0).
  """
  parts = name.split(".")
  if callable(options.scan_axes):
    axis, prefix = options.scan_axes(name), "scan_axes"  # every leaf it scans: one stack
  else:
    keys = dict(options.scan_axes)
    at = next((i for i, part in enumerate(parts) if part in keys), None)
    # Not scanned: a leaf of a list (the component is followed by an index) or inside a
    # component that names where it sits ("patch_embed.layers.0.kernel": a Sequential).
    if at is not None and (
      (at + 1 < len(parts) and parts[at + 1].isdigit())
      or _layers.site(".".join(parts[:at])).kind != "unrecognised"
    ):
      at = None
    axis = None if at is None else keys[parts[at]]
    prefix = "" if at is None else ".".join(parts[: at + 1])
  if axis is None:
    return None
  if shape is None:
    return _layers.Site("scanned", (None, None, 0), prefix)
  if not isinstance(axis, int) or isinstance(axis, bool) or not -len(shape) <= axis < len(shape):
    raise ValueError(f"scan_axes gives axis {axis!r} for parameter {name!r} of shape {shape}.")
  axis %= len(shape)
  return _layers.Site("scanned", (shape[axis], axis, len(shape)), prefix)


def sequences(names: Sequence[str], sites: Sequence[_layers.Site]) -> frozenset[str]:
  """The lists that hold different kinds of modules (an ``nnx.Sequential`` of LayerNorm and Linear).

  A stack's layers share their parameter names (one may add some, as T5's
  first block adds its relative-position bias). A list of two or more
  children none of whose names are among another's is a sequence of
  different modules, not a stack, whatever it is called.
  """
  children: dict[str, dict[int, set[str]]] = {}
  nested = set()
  for name, s in zip(names, sites):
    if s.kind != "layer":
      continue
    if len(s.index) != 1:
      nested.add(s.prefix)
    inner = name[len(s.prefix) :].lstrip("._").partition(".")[2]
    children.setdefault(s.prefix, {}).setdefault(s.index[0], set()).add(inner)
  found = set()
  for prefix, named in children.items():
    kinds = list(named.values())
    if prefix in nested or len(kinds) < 2:
      continue
    if not any(a <= b for i, a in enumerate(kinds) for j, b in enumerate(kinds) if i != j):
      found.add(prefix)
  return frozenset(found)


def sites(
  options: LadderOptions, names: Sequence[str], shapes: Sequence[tuple], hidden: Sequence[str]
) -> tuple[list[_layers.Site], frozenset[str]]:
  """The site of each name, then of each hidden name; and the lists read as sequences.

  ``hidden`` names the model's parameters that this tree leaves out
  (``optax.masked`` and ``optax.partition`` put an ``optax.MaskedNode`` in
  their place): they count for the model's stacks and depths, so that a
  transformation that sees part of a model places it as the whole model does.
  """
  placed = [
    (options.scan_axes is not None and _scanned(options, n, s)) or _layers.site(n)
    for n, s in zip([*names, *hidden], [*shapes, *[None] * len(hidden)])
  ]
  whole = [*names, *hidden]
  given = [p for p, _, _ in options.stacks]
  found = frozenset(q for q in sequences(whole, placed) if not any(within(q, p) for p in given))
  if found:
    placed = [
      _layers.site(n, found) if s.kind == "layer" and s.prefix in found else s
      for n, s in zip(whole, placed)
    ]
  return placed, found


# 2. Stacks.


def _roots(prefixes: list[str]) -> list[str]:
  """Each stack's root: the shortest prefix of its layers' prefix that no other stack shares."""
  if len(prefixes) == 1:
    return [""]
  split = [p.split(".") for p in prefixes]
  roots = []
  for i, parts in enumerate(split):
    others = [o for j, o in enumerate(split) if j != i]
    m = next(
      (m for m in range(1, len(parts) + 1) if all(o[:m] != parts[:m] for o in others)), len(parts)
    )
    roots.append(".".join(parts[:m]))
  return roots


def _check_scans_found(options: LadderOptions, found: Sequence[_layers.Site]) -> None:
  if options.scan_axes is None:
    return
  scanned = {s.prefix.rsplit(".", 1)[-1] for s in found if s.kind == "scanned"}
  keys = ["scan_axes"] if callable(options.scan_axes) else [k for k, _ in options.scan_axes]
  missing = [k for k in keys if k not in scanned]
  if missing:
    raise ValueError(
      f"scan_axes: no parameter name has a component {missing[0]!r} "
      "(a function: it returned an axis for no parameter); see optax_adamwdl.param_names."
    )


def stacks(
  options: LadderOptions, names: Sequence[str], found: Sequence[_layers.Site]
) -> list[str | None]:
  """Each leaf's stack: a given stack's prefix, an automatic stack's root, or None."""
  given = [p for p, _, _ in options.stacks]
  own = [max((p for p in given if within(n, p)), key=len, default=None) for n in names]
  for p in given:
    if p not in own:
      raise ValueError(f"stacks: no parameter name starts with {p!r} ({first_names(names)}).")
  _check_scans_found(options, found)
  layered = [s.prefix for s, o in zip(found, own) if o is None and s.kind in ("layer", "scanned")]
  prefixes = list(dict.fromkeys(layered))
  roots = _roots(prefixes + given)[: len(prefixes)] if prefixes else []
  return [
    o if o is not None else max((r for r in roots if within(name, r)), key=len, default=None)
    for name, o in zip(names, own)
  ]


# 3. Depths.


class Stack(NamedTuple):
  decay: Any
  depth: Any  # int, traced, or None when the stack has no layer
  steps: dict[tuple[int, ...], int]  # layer index -> step on the ladder
  hidden: tuple[str, ...] = ()  # its scanned leaves, all left out: its depth cannot be read


def check_depth_known(key: str | None, stack: Stack) -> None:
  """Refuses a placement that needs the depth of a stack whose scanned leaves are all hidden."""
  if stack.hidden:
    raise ValueError(
      f"The scanned layers of stack {key!r} ({first_names(stack.hidden)}) are left out of this "
      "tree (optax.masked, optax.partition), so their number cannot be read: pass n_layers=..."
    )


def _steps(indices: set[tuple[int, ...]], stage_wise: bool) -> dict[tuple[int, ...], int]:
  """Each layer index's step on its stack's ladder.

  A plain index is its own step. Blocks nested in stages, (stage, block), are
  counted stage-major across the stack (a stage's own parameters, (stage,),
  take the step of its first block), or one step per stage when
  ``stage_wise``.
  """
  if stage_wise or all(len(i) == 1 for i in indices):
    return {i: i[0] for i in indices}
  blocks: dict[int, int] = {}
  for i in indices:
    blocks[i[0]] = max(blocks.get(i[0], 0), i[1] + 1 if len(i) == 2 else 0)
  offset, total = {}, 0
  for stage in sorted(blocks):
    offset[stage], total = total, total + blocks[stage]
  return {i: offset[i[0]] + (i[1] if len(i) == 2 else 0) for i in indices}


def _scan_length(members: list[tuple[str, _layers.Site]]) -> int | None:
  lengths: dict[int, str] = {}  # number of layers -> a leaf that holds that many
  for n, s in members:
    if s.kind == "scanned" and s.index[0] is not None:
      lengths.setdefault(s.index[0], n)
  if len(lengths) > 1:
    found = ", ".join(f"{n!r} holds {length}" for length, n in sorted(lengths.items()))
    raise ValueError(
      f"Scanned leaves of one stack hold different numbers of layers ({found}): check "
      "scan_axes (each needs the axis along which that leaf stacks its layers)."
    )
  return next(iter(lengths), None)


def depth(
  options: LadderOptions, key: str, names: Sequence[str], found: Sequence, stack_of: Sequence
) -> Stack:
  """The stack ``key``'s decay, depth and steps (its ``stacks`` options, or the defaults)."""
  n_layers, decay = next(((n, d) for p, n, d in options.stacks if p == key), (None, None))
  decay = options.decay if decay is None else decay
  n_layers = options.n_layers if n_layers is None else n_layers
  members = [(n, s) for n, s, k in zip(names, found, stack_of) if k == key]
  length = _scan_length(members)
  steps = _steps({s.index for _, s in members if s.kind == "layer"}, options.stage_wise)
  deepest = max(
    [*(v + 1 for v in steps.values()), *([] if length is None else [length])], default=None
  )
  if _checks.is_traced(n_layers) or isinstance(n_layers, jax.Array):
    return Stack(decay, n_layers, steps)
  hidden = [n for n, s in members if s.kind == "scanned" and s.index[0] is None]
  if deepest is None and hidden and n_layers is None:
    return Stack(decay, None, steps, tuple(hidden))
  if n_layers is not None and deepest is not None and n_layers < deepest and options.custom is None:
    name = next(n for n, s in members if s.kind == "scanned" or steps.get(s.index) == deepest - 1)
    raise ValueError(
      f"n_layers={n_layers} but parameter {name!r} is in layer {deepest - 1}, so n_layers "
      f"must be at least {deepest} (or None to infer it); a smaller value would give ratios "
      "above 1."
    )
  return Stack(decay, deepest if n_layers is None else n_layers, steps)
