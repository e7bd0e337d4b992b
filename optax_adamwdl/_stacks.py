"""The ladder's first steps: each name's site, each leaf's stack, each stack's depth.

A *site* says where one name sits (:func:`optax_adamwdl._layers.site`, or a
scanned leaf holding every layer). A *stack* is a ladder: one or more lists of
layers run one after the other, and what belongs to them (encoder and decoder,
text and vision towers are a stack each): its key is a prefix that every
member's name starts with. A stack's *depth* is its number of layers, with the
ladder step of each layer index.

Three rules decide, read from the whole tree's names and shapes:

1. **What is a list of layers: structure decides.** A component followed by
   indices (``attention_blocks.0``, ``attention_blocks.1``) under a name no rule
   knows is a list of layers when its children have the same structure: the
   same parameter names with the same shapes. A list under a name the rule
   knows (``layers``, ``h``, ``blocks``, ...) may vary (T5's first block adds
   a bias, a CNN's stages widen), but a list whose children hold different
   kinds of modules (no child's parameter names among another's) is a
   sequence, not a stack, whatever it is called; ``stacks=[...]`` says
   otherwise. A ``Sequential`` of a LayerNorm and a Linear (both ``weight``
   and ``bias``, so its names cannot tell it apart) is a head where its
   module says so (``head``, ``mlp`` outside every layer, ...), and beside
   the stack elsewhere it is a second list that rule 2 refuses to guess about.
2. **Series or parallel: names decide, else a refusal.** Lists of layers found
   under distinct modules (``encoder``/``decoder``, ``text_model``/
   ``vision_model``, ``vision_encoder``) take their own inputs: a ladder each.
   Lists that sit side by side in one module, each the module's own list
   (``decoder.dense_layers`` and ``decoder.moe_layers``; ``decoder.layers`` and
   ``decoder.layers_remainder.layers_0``, a module named as a list), run one on
   the other's output: they are one stack, one ladder, whose steps run through
   the lists in order (the second list's layer 0 is one step above the first
   list's last layer). The order comes from the names: a list whose name
   extends another's (``layers_remainder`` after ``layers``) comes after it,
   dense layers before MoE layers. Lists whose names say neither that they are
   towers (text, vision, encoder, decoder, ...) nor their order are refused, with
   the ``stacks=`` that gives them a ladder each. A single list that is its
   module's own list beside a tower (Gemma 3's text ``layer_{i}`` beside
   ``vision_encoder``) is that module's stack: it owns what the towers do not
   (the embedder, the final norm). Stacks given in ``stacks=`` are taken as
   given; one that holds several lists runs them in series, in the order above.
3. **Every spelling of a layer**: ``name.{i}``, ``name_{i}`` under any prefix
   (``dense_layers_0``), ``/``-joined paths (read as ``.``:
   :mod:`optax_adamwdl._names`), and scanned leaves (one leaf holding every
   layer along an axis, ``scan_axes``). A tree that looks scanned while no
   ``scan_axes`` says so (a layer's norm scale with two or more dimensions, or
   a parameter with one more dimension than the same parameter of another list
   of the same stack) is refused, with the ``scan_axes`` to pass.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from optax_adamwdl import _checks, _layers, _series
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


def _structure(children: dict[int, dict[str, tuple | None]]) -> bool:
  """Whether the children of a list have the same structure: the same names, the same shapes."""
  kinds = list(children.values())
  if len(kinds) < 2 or any(not k or "" in k for k in kinds):  # bare arrays are not modules
    return False
  first = kinds[0]
  return all(
    k.keys() == first.keys()
    and all(k[n] is None or first[n] is None or k[n] == first[n] for n in k)
    for k in kinds[1:]
  )


def unnamed_stacks(
  names: Sequence[str], shapes: Sequence[tuple | None], given: Sequence[str], skip: Sequence[bool]
) -> frozenset[str]:
  """The lists under names no rule knows whose children have the same structure (rule 1).

  Equinox's ViT keeps its blocks in ``attention_blocks``: a list of identical
  blocks is a stack of layers whatever it is called (a list given in
  ``stacks=`` is one whatever its children).
  """
  children: dict[str, dict[int, dict[str, tuple | None]]] = {}
  for name, shape, skipped in zip(names, shapes, skip):
    found = None if skipped else _layers.unnamed_list(name)
    if found is not None:
      prefix, index, inner = found
      children.setdefault(prefix, {}).setdefault(index, {})[inner] = shape
  return frozenset(p for p, kids in children.items() if p in given or _structure(kids))


def sequences(names: Sequence[str], sites: Sequence[_layers.Site]) -> frozenset[str]:
  """The lists that hold different kinds of modules (an ``nnx.Sequential`` of LayerNorm and Linear).

  A stack's layers share their parameter names (one may add some, as T5's
  first block adds its relative-position bias). A list of two or more
  children none of whose names are among another's is a sequence of
  different modules, not a stack, whatever it is called. (Shapes are not
  asked of a list under a known name: its layers may widen, as a CNN's
  stages do. A list under a name no rule knows must have children of one
  structure, shapes included: :func:`unnamed_stacks`.)
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


def _zeros_named(names: Sequence[str]) -> list[str]:
  """The names with a bare component read as index 0 beside its numbered siblings (rule 3).

  Haiku names the modules a loop makes ``block``, ``block_1``, ``block_2``: the first is
  ``block_0``.
  """
  children: dict[tuple, set[str]] = {}
  for name in names:
    parts = name.split(".")
    for i in range(len(parts) - 1):
      children.setdefault(tuple(parts[:i]), set()).add(parts[i])
  out = []
  for name in names:
    parts = name.split(".")
    read = [
      f"{part}_0" if f"{part}_1" in children[tuple(parts[:i])] and f"{part}_0" not in
      children[tuple(parts[:i])] else part
      for i, part in enumerate(parts[:-1])
    ]  # fmt: skip
    out.append(".".join([*read, parts[-1]]))
  return out


def sites(
  options: LadderOptions, names: Sequence[str], shapes: Sequence[tuple], hidden: Sequence[str]
) -> tuple[list[_layers.Site], frozenset[str]]:
  """The site of each name, then of each hidden name; and the lists read as sequences.

  ``hidden`` names the model's parameters that this tree leaves out
  (``optax.masked`` and ``optax.partition`` put an ``optax.MaskedNode`` in
  their place): they count for the model's stacks and depths, so that a
  transformation that sees part of a model places it as the whole model does.
  """
  whole = _zeros_named([*names, *hidden])
  every_shape = [*shapes, *[None] * len(hidden)]
  scanned = [
    (options.scan_axes is not None and _scanned(options, n, s)) or None
    for n, s in zip(whole, every_shape)
  ]
  given = [p for p, _, _ in options.stacks]
  lists = unnamed_stacks(whole, every_shape, given, [s is not None for s in scanned])
  placed = [s or _layers.site(n, lists=lists) for n, s in zip(whole, scanned)]
  found = frozenset(q for q in sequences(whole, placed) if not any(within(q, p) for p in given))
  if found:
    placed = [
      _layers.site(n, found, lists) if s.kind == "layer" and s.prefix in found else s
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


def _keys(prefixes: list[str], given: list[str]) -> dict[str, str]:
  """Each automatic list's stack key (rule 2): its root, or its module's when in series."""
  roots = _roots(prefixes + given)[: len(prefixes)]
  raised = {}
  for p, r in zip(prefixes, roots):
    raised[p] = r.rpartition(".")[0] if _series.list_root(p, r) else r
  if len(set(raised.values())) == 1 and not given:
    return dict.fromkeys(prefixes, "")  # one stack: the whole model
  if not given:
    _series.check_towers(raised)
  return raised


def stacks(
  options: LadderOptions,
  names: Sequence[str],
  found: Sequence[_layers.Site],
  shapes: Sequence[tuple | None] | None = None,
) -> list[str | None]:
  """Each leaf's stack: a given stack's prefix, an automatic stack's key, or None.

  A layer belongs to the stack of its list; anything else to the stack with
  the longest key that its name starts with. ``shapes`` (None for a hidden
  leaf), when given, are checked for a layer axis that ``scan_axes`` does not
  declare.
  """
  given = [p for p, _, _ in options.stacks]
  own = [max((p for p in given if within(n, p)), key=len, default=None) for n in names]
  for p in given:
    if p not in own:
      raise ValueError(f"stacks: no parameter name starts with {p!r} ({first_names(names)}).")
  _check_scans_found(options, found)
  layered = [s.prefix for s, o in zip(found, own) if o is None and s.kind in ("layer", "scanned")]
  keys = _keys(list(dict.fromkeys(layered)), given) if layered else {}
  roots = set(keys.values())
  stack_of = [
    o
    if o is not None
    else keys[s.prefix]
    if s.kind in ("layer", "scanned")
    else max((r for r in roots if within(name, r)), key=len, default=None)
    for name, s, o in zip(names, found, own)
  ]
  if shapes is not None:
    _check_layer_axes(options, names, found, shapes, stack_of)
  return stack_of


def _inner(name: str, site: _layers.Site) -> str:
  """A layer's parameter name inside its layer: what follows the layer's index."""
  rest = name[len(site.prefix) :].lstrip("._")
  return rest.partition(".")[2]


def _extra_axis(big: tuple, small: tuple) -> int | None:
  for axis in range(len(big)):
    if big[:axis] + big[axis + 1 :] == small:
      return axis
  return None


def _refuse_scanned(name: str, site: _layers.Site, why: str, axis: int | None) -> None:
  parts = site.prefix.split(".")
  module = parts[-2] if len(parts) > 1 else parts[-1]
  raise ValueError(
    f"Parameter {name!r} looks scanned: {why}, so it holds several layers along an axis, while "
    f"its name gives it one layer of {site.prefix!r}. Pass scan_axes={{{module!r}: "
    f"{'<axis>' if axis is None else axis}}} (the component whose leaves stack their layers, "
    "and the axis along which they do; see the scanned-layers guide)."
  )


def _check_layer_axes(options, names, found, shapes, stack_of) -> None:
  """Refuses layers that carry a layer axis that ``scan_axes`` does not declare (rule 3)."""
  layers = [
    (name, site, shape, key)
    for name, site, shape, key in zip(names, found, shapes, stack_of)
    if site.kind == "layer" and shape is not None
  ]
  seen: dict[tuple, tuple[str, tuple, _layers.Site]] = {}
  for name, site, shape, key in layers:
    other = seen.setdefault((key, _inner(name, site)), (name, shape, site))
    if other[2].prefix != site.prefix and len(other[1]) != len(shape):
      (big, big_shape, big_site), small_shape = (
        ((name, shape, site), other[1]) if len(shape) > len(other[1]) else (other, shape)
      )
      why = (
        f"it has shape {big_shape} where the same parameter of another list of its stack has "
        f"{small_shape}"
      )
      _refuse_scanned(big, big_site, why, _extra_axis(big_shape, small_shape))
  for name, site, shape, _ in layers:
    inner = _inner(name, site).split(".")
    if len(shape) >= 2 and len(inner) >= 2 and inner[-1] == "scale":
      module = inner[-2].lower()
      if "norm" in module or module.startswith("ln"):
        _refuse_scanned(name, site, f"its norm scale has shape {shape}", None)


# 3. Depths.


class Stack(NamedTuple):
  decay: Any
  depth: Any  # int, traced, or None when the stack has no layer
  steps: dict[tuple[str, tuple[int, ...]], int]  # (list, layer index) -> step on the ladder
  hidden: tuple[str, ...] = ()  # its scanned leaves, all left out: its depth cannot be read
  offsets: dict[str, int] = {}  # a scanned list -> the step of its first layer (lists in series)

  def step(self, site: _layers.Site) -> int:
    """The ladder step of a layer's site."""
    return self.steps[(site.prefix, site.index)]

  def offset(self, site: _layers.Site) -> int:
    """The ladder step of the first layer held by a scanned site."""
    return self.offsets.get(site.prefix, 0)


def check_depth_known(key: str | None, stack: Stack) -> None:
  """Refuses a placement that needs the depth of a stack whose scanned leaves are all hidden."""
  if stack.hidden:
    raise ValueError(
      f"The scanned layers of stack {key!r} ({first_names(stack.hidden)}) are left out of this "
      "tree (optax.masked, optax.partition), so their number cannot be read: pass n_layers=..."
    )


def _steps(indices: set[tuple[int, ...]], stage_wise: bool) -> dict[tuple[int, ...], int]:
  """Each layer index's step on its stack's ladder.

  A plain index's step is its rank among the indices present: a list that
  interleaves parameter-free layers (an ``eqx.nn.Sequential`` or
  ``nnx.Sequential`` with activations and pooling between its convolutions:
  indices 0, 4, 6, 8) has a layer per parameterised index, not per index.
  Blocks nested in stages, (stage, block), are counted stage-major across the
  stack (a stage's own parameters, (stage,), take the step of its first
  block), or one step per stage when ``stage_wise``.
  """
  if stage_wise or all(len(i) == 1 for i in indices):
    ranks = {first: rank for rank, first in enumerate(sorted({i[0] for i in indices}))}
    return {i: ranks[i[0]] for i in indices}
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
  """The stack ``key``'s decay, depth and steps (its ``stacks`` options, or the defaults).

  A stack of several lists runs them in series (:func:`optax_adamwdl._series.series_order`): each
  list's steps start one above the previous list's last layer.
  """
  n_layers, decay = next(((n, d) for p, n, d in options.stacks if p == key), (None, None))
  given = any(p == key for p, _, _ in options.stacks)
  decay = options.decay if decay is None else decay
  n_layers = options.n_layers if n_layers is None else n_layers
  members = [(n, s) for n, s, k in zip(names, found, stack_of) if k == key]
  lists = list(dict.fromkeys(s.prefix for _, s in members if s.kind in ("layer", "scanned")))
  steps: dict[tuple[str, tuple[int, ...]], int] = {}
  offsets: dict[str, int] = {}
  total, unknown = 0, False
  for prefix in _series.series_order(key, lists, given):
    own = [(n, s) for n, s in members if s.prefix == prefix]
    length = _scan_length(own)
    if any(s.kind == "scanned" for _, s in own):
      offsets[prefix] = total
      unknown = unknown or length is None
      total += length or 0
      continue
    listed = _steps({s.index for _, s in own if s.kind == "layer"}, options.stage_wise)
    steps.update({(prefix, i): total + v for i, v in listed.items()})
    total += max(listed.values(), default=-1) + 1
  deepest = total if lists and not (unknown and total == 0) else None
  if _checks.is_traced(n_layers) or isinstance(n_layers, jax.Array):
    return Stack(decay, n_layers, steps, (), offsets)
  hidden = [n for n, s in members if s.kind == "scanned" and s.index[0] is None]
  if unknown and (n_layers is None or len(lists) > 1):
    return Stack(decay, None, steps, tuple(hidden), offsets)
  if n_layers is not None and deepest is not None and n_layers < deepest and options.custom is None:
    name = next(
      n
      for n, s in members
      if s.kind == "scanned"
      or (s.kind == "layer" and steps.get((s.prefix, s.index)) == deepest - 1)
    )
    raise ValueError(
      f"n_layers={n_layers} but parameter {name!r} is in layer {deepest - 1}, so n_layers "
      f"must be at least {deepest} (or None to infer it); a smaller value would give ratios "
      "above 1."
    )
  return Stack(decay, deepest if n_layers is None else n_layers, steps, (), offsets)
