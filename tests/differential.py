"""The space of the generated differential test, and the float64 statement of the maths it checks.

A drawn ``Case`` is a model (its leaves, each annotated with where it sits in the network: the
annotation comes from how the tree was built, never from optax_adamwdl), the options of
``adamwdl``, the optax and JAX wrappers around it, and the gradients of a few steps. ``expect``
says what must happen: the refusal the configuration deserves (an error at construction or
``init``), or the parameters after the steps, computed in float64 by :func:`reference`.

Nothing here imports optax_adamwdl except ``run``, which builds and runs the case under test.
"""

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from tests.reference import adam_update

H = 3  # width of every hidden dimension
STEPS = 3
DTYPES = ("float32", "bfloat16", "float16", "mixed", "float64")
LOW = ("bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One parameter: its path, shape and dtype, and where the network uses it.

  ``kind`` is "embedding" (before the first layer), "layer", "scan" (every layer of a stack along
  axis ``index``), "head" (after the last layer) or "none" (a tree with no layer at all).
  ``stack`` names its stack ("" for the whole model); ``index`` is the layer index.
  """

  parts: tuple[str, ...]
  shape: tuple[int, ...]
  kind: str
  stack: str | None = None
  index: int | None = None
  dtype: str = "float32"

  @property
  def name(self) -> str:
    return ".".join(self.parts)


@dataclasses.dataclass(frozen=True)
class Case:
  leaves: tuple[Leaf, ...]
  container: str  # "dict", "list", "flat", "module" (registered pytree class), "nnx"
  scan_axis: int | None
  options: dict
  composition: dict
  seed: int


# Trees.

SPELLINGS = {  # a layer's path from its stack prefix and index
  "layers": lambda i: ("layers", str(i)),
  "layer": lambda i: ("layer", str(i)),
  "h": lambda i: ("h", str(i)),
  "blocks": lambda i: ("blocks", str(i)),
  "linen": lambda i: (f"layers_{i}",),
  "big_vision": lambda i: (f"encoderblock_{i}",),
}
LAYER_PARTS = (  # (path inside a layer, shape)
  (("attn", "kernel"), (H, H)),
  (("attn", "bias"), (H,)),
  (("norm", "scale"), (H,)),
  (("mlp", "kernel"), (H, 2)),
)
EMBEDDINGS = {
  "word": [(("embeddings", "word_embeddings", "embedding"), (5, H))],
  "wte": [(("wte", "embedding"), (5, H))],
  "cls": [(("cls_token",), (1, H))],
  "patch_sequential": [  # an nnx.Sequential of a Linear and a LayerNorm
    (("patch_embed", "layers", "0", "kernel"), (H, H)),
    (("patch_embed", "layers", "1", "scale"), (H,)),
  ],
}
HEADS = {
  "classifier": [(("classifier", "kernel"), (H, 2)), (("classifier", "bias"), (2,))],
  "ln_f": [(("ln_f", "scale"), (H,))],
  "head_sequential": [  # an nnx.Sequential of Linear, relu, Linear: index 1 holds no parameter
    (("head", "layers", "0", "kernel"), (H, H)),
    (("head", "layers", "2", "kernel"), (H, 2)),
  ],
  "lm_head": [(("lm_head", "kernel"), (H, 5))],
}


@st.composite
def leaves(draw) -> tuple[tuple[Leaf, ...], int | None]:
  """A model's leaves (dtype float32 here) and its scan axis (None: unrolled layers)."""
  n_stacks = draw(st.sampled_from([1, 1, 2]))
  scan_axis = draw(st.sampled_from([None, None, 0, 1]))
  prefixes = [("encoder",), ("decoder",)] if n_stacks == 2 else [
    draw(st.sampled_from([(), ("encoder",), ("model", "decoder"), ("transformer",)]))
  ]  # fmt: skip
  inner = draw(st.lists(st.sampled_from(LAYER_PARTS), min_size=1, max_size=3, unique=True))
  out: list[Leaf] = []
  for prefix in prefixes:
    stack = ".".join(prefix)
    depth = draw(st.integers(1, 4))
    if scan_axis is not None:
      for parts, shape in inner:
        axis = min(scan_axis, len(shape))
        scanned = (*shape[:axis], depth, *shape[axis:])
        out.append(Leaf((*prefix, "layers", *parts), scanned, "scan", stack, axis))
      continue
    spelling = SPELLINGS[draw(st.sampled_from(sorted(SPELLINGS)))]
    for i in range(depth):
      for parts, shape in inner:
        out.append(Leaf((*prefix, *spelling(i), *parts), shape, "layer", stack, i))
    if draw(st.booleans()):  # T5: the first layer alone holds the relative-position bias
      out.append(Leaf((*prefix, *spelling(0), "rel_bias"), (2,), "layer", stack, 0))
    if n_stacks == 2 and draw(st.booleans()):  # a stack's own embeddings and final norm
      out.append(Leaf((*prefix, "embed_tokens", "embedding"), (5, H), "embedding", stack))
      out.append(Leaf((*prefix, "final_norm", "scale"), (H,), "head", stack))
  for group in draw(st.lists(st.sampled_from(sorted(EMBEDDINGS)), max_size=2, unique=True)):
    out += [Leaf(parts, shape, "embedding") for parts, shape in EMBEDDINGS[group]]
  for group in draw(st.lists(st.sampled_from(sorted(HEADS)), max_size=2, unique=True)):
    out += [Leaf(parts, shape, "head") for parts, shape in HEADS[group]]
  if draw(st.booleans()):
    out.append(Leaf(("pooler", "empty"), (0, H), "head"))  # zero-size
  if not any(leaf.kind in ("layer", "scan") for leaf in out) or draw(st.integers(0, 19)) == 0:
    out = [Leaf(("dense_a", "kernel"), (H, H), "none"), Leaf(("dense_b", "bias"), (H,), "none")]
    scan_axis = None
  return tuple(out), scan_axis


def _mults(names: list[str]):
  """``(pattern, multiplier)`` rules: a whole name, a first component, a last one; rarely a typo."""
  spelled = st.sampled_from(names).flatmap(lambda n: st.sampled_from([
    re.escape(n), re.escape(n.split(".")[0]) + r"(\..*)?", ".*" + re.escape(n.split(".")[-1]),
  ]))  # fmt: skip
  pattern = st.integers(0, 9).flatmap(lambda k: st.just("no_such_parameter") if k == 0 else spelled)
  rule = st.tuples(pattern, st.sampled_from([0.0, 0.5, 3.0]))
  return st.lists(rule, min_size=1, max_size=3).map(tuple)


@st.composite
def options(draw, names: list[str]) -> dict:
  """Any subset of adamwdl's keywords, with values across their ranges."""
  pool = {
    "layerwise_decay": st.sampled_from([1.0, 0.9, 0.75, 0.5]),
    "n_layers": st.sampled_from([5, 6]),
    "head_ratio": st.sampled_from([1.0, 0.0, 2.5]),
    "min_ratio": st.sampled_from([0.0, 0.3]),
    "freeze_below": st.sampled_from([0.2, 0.6]),
    "depth_normalized": st.booleans(),
    "decay_follows_ratio": st.booleans(),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.3]),
    "mask": st.sampled_from(["apply_decay_param_fun", "mask_tree", "mask_fn"]),
    "b1": st.sampled_from([0.9, 0.0, 0.5]),
    "b2": st.sampled_from([0.999, 0.9]),
    "eps": st.sampled_from([1e-8, 1e-3]),
    "eps_root": st.sampled_from([0.0, 1e-8]),
    "nesterov": st.booleans(),
    "mu_dtype": st.just("bfloat16"),
    "lazy_mode": st.booleans(),
    "multi_precision": st.booleans(),
    "grad_clip": st.just(1.0),
    "learning_rate": st.sampled_from([0.1, "schedule"]),
    "set_param_lr_fun": st.just("custom"),
    "lr_mults": _mults(names),
    "wd_mults": _mults(names),
    "strict_mults": st.booleans(),
  }
  chosen = draw(st.lists(st.sampled_from(sorted(pool)), max_size=len(pool), unique=True))
  out = {k: draw(pool[k]) for k in chosen}
  out.setdefault("learning_rate", 0.1)
  out.setdefault("layerwise_decay", draw(st.sampled_from([0.5, 0.8])))
  return out


NUMERIC = ("learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay", "layerwise_decay",
           "n_layers", "head_ratio", "min_ratio", "freeze_below")  # fmt: skip


@st.composite
def compositions(draw, opts: dict) -> dict:
  injectable = [k for k in NUMERIC if k in opts and opts[k] != "schedule"]
  inject = (
    draw(st.none() | st.lists(st.sampled_from(injectable), unique=True)) if injectable else None
  )
  changed = None
  if inject and draw(st.booleans()):
    changed = draw(st.sampled_from([k for k in inject if k in ("learning_rate", "layerwise_decay")]
                                   or [None]))  # fmt: skip
  return {
    "jit": draw(st.booleans()),
    "init": draw(st.sampled_from(["eager", "jit", "eval_shape"])),
    "inject": inject,
    "changed": changed,  # an injected hyperparameter set anew after the first step
    "multisteps": draw(st.sampled_from([None, 2])),
    "apply_if_finite": draw(st.booleans()),
    "wrapper": draw(st.sampled_from([None, "masked", "partition"])),
    "wrapper_seed": draw(st.integers(0, 3)),
    "before": draw(st.sampled_from([None, "scale", "clip"])),
    "after": draw(st.sampled_from([None, None, "scale"])),
    "single_pass": draw(st.booleans()),
    "donate": draw(st.booleans()),
    "restore": draw(st.booleans()),  # a state checkpointed by another configuration, resumed
    "zero_rows": draw(st.booleans()),
  }


@st.composite
def cases(draw) -> Case:
  tree, scan_axis = draw(leaves())
  dtype = draw(st.sampled_from(DTYPES))
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))
  tree = tuple(
    dataclasses.replace(
      leaf, dtype=str(rng.choice(["float32", "bfloat16"])) if dtype == "mixed" else dtype
    )
    for leaf in tree
  )
  containers = ["dict", "list", "flat", "module", "nnx"] if scan_axis is None else ["dict", "nnx"]
  opts = draw(options([leaf.name for leaf in tree]))
  return Case(
    tree, draw(st.sampled_from(containers)), scan_axis, opts, draw(compositions(opts)),
    draw(st.integers(0, 2**16)),
  )  # fmt: skip


# Containers: the same leaves in the kinds of pytrees users build.


@jax.tree_util.register_pytree_with_keys_class
class Module:
  """An Equinox-style module: named fields, flattened in field order, read by attribute."""

  def __init__(self, **fields):
    self.fields = fields

  def tree_flatten_with_keys(self):
    keys = list(self.fields)
    return [(jax.tree_util.GetAttrKey(k), self.fields[k]) for k in keys], keys

  @classmethod
  def tree_unflatten(cls, keys, children):
    return cls(**dict(zip(keys, children)))


def _nest(items: list[tuple[tuple[str, ...], Any]]) -> dict:
  root: dict = {}
  for parts, value in items:
    node = root
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return root


def _build(node: Any, container: str) -> Any:
  if not isinstance(node, dict):
    return nnx_param(node) if container == "nnx" else node
  keys = list(node)
  if keys and all(k.isdigit() for k in keys) and container != "flat":
    children = [node.get(str(i)) for i in range(max(map(int, keys)) + 1)]
    built = [_build(c, container) if c is not None else None for c in children]
    if container == "nnx":
      from flax import nnx

      return nnx.List([b if b is not None else _Empty() for b in built])
    return tuple(built) if container == "list" and len(built) % 2 else built
  built = {k: _build(v, container) for k, v in node.items()}
  if container == "module":
    return Module(**built)
  if container == "nnx":
    return _nnx_module(built)
  return built


def nnx_param(value):
  from flax import nnx

  return nnx.Param(value)


def _Empty():
  from flax import nnx

  return nnx.Module()


def _nnx_module(fields: dict):
  from flax import nnx

  module = nnx.Module()
  for k, v in fields.items():
    setattr(module, k, v)
  return module


def build_tree(case: Case, values: list[Any]) -> Any:
  """The case's container holding ``values`` (one per leaf, in the case's order)."""
  if case.container == "flat":
    return {leaf.name: v for leaf, v in zip(case.leaves, values)}
  tree = _build(_nest([(leaf.parts, v) for leaf, v in zip(case.leaves, values)]), case.container)
  if case.container == "nnx":
    from flax import nnx

    return nnx.state(tree, nnx.Param)
  if case.container == "dict":  # None and empty subtrees, which hold no parameter
    tree = {**tree, "unused": None, "empty": {}}
  return tree


def leaf_order(case: Case) -> list[int]:
  """For each leaf of the built tree, in ``jax.tree.leaves`` order, its index in ``case.leaves``."""
  ids = build_tree(case, [np.asarray(i) for i in range(len(case.leaves))])
  return [int(i) for i in jax.tree.leaves(ids)]


# The float64 statement of the maths.


def custom_rule(decay, n_layers, name):
  """A user's ``set_param_lr_fun``: a ratio from the name alone."""
  del n_layers
  return decay ** (len(name) % 3)


def decays(name: str) -> bool:
  """The decay rule of the drawn masks: no decay on biases and norms."""
  return not name.endswith(("bias", "scale"))


def visible(case: Case) -> list[bool]:
  """Which leaves the adamwdl inside ``optax.masked`` / ``optax.partition`` sees."""
  if case.composition["wrapper"] is None:
    return [True] * len(case.leaves)
  rng = np.random.default_rng(case.composition["wrapper_seed"])
  return [bool(b) for b in rng.random(len(case.leaves)) < 0.7]


class Refusal(Exception):
  """What the library must raise: an error whose message holds one of ``patterns`` (several when
  the configuration deserves several refusals: which comes first depends on what is traced)."""

  def __init__(self, *patterns: str):
    super().__init__(" | ".join(patterns))
    self.patterns = patterns
    self.pattern = " | ".join(patterns)


def multipliers(case: Case, argument: str) -> list[float]:
  """Each leaf's multiplier from ``lr_mults`` or ``wd_mults``: the first pattern that fullmatches
  its name; 1 when none does. Only the leaves adamwdl updates count (``optax.masked`` and
  ``optax.partition`` give the others to another transformation). Refused: a pattern that is the
  first match of none of them, and with ``strict_mults`` one of them that two patterns match."""
  rules = case.options.get(argument, ())
  seen = visible(case)
  hits = [
    [k for k, (p, _) in enumerate(rules) if re.fullmatch(p, leaf.name)] if s else []
    for leaf, s in zip(case.leaves, seen)
  ]
  if case.options.get("strict_mults") and any(len(h) > 1 for h in hits):
    raise Refusal("strict_mults=True: make the patterns exclusive")
  if any(all(not h or h[0] != k for h in hits) for k in range(len(rules))):
    raise Refusal(f"{argument} pattern")
  return [rules[h[0]][1] if h else 1.0 for h in hits]


def frozen(case: Case, r: list[Any]) -> list[bool]:
  """The leaves that keep no moments and take no part in ``grad_clip``: a 0 multiplier, or with
  ``freeze_below`` a ratio of 0 everywhere."""
  lr_mults = multipliers(case, "lr_mults")
  return [
    x is not None and (m == 0 or ("freeze_below" in case.options and not np.any(x != 0)))
    for x, m in zip(r, lr_mults)
  ]


def ratios(case: Case, seen: list[bool], decay: float) -> list[Any]:
  """Each seen leaf's learning-rate ratio, times its ``lr_mults`` multiplier (None: unseen)."""
  lr_mults = multipliers(case, "lr_mults")
  ladder = ladder_ratios(case, seen, decay)
  return [None if r is None else r * m for r, m in zip(ladder, lr_mults)]


def ladder_ratios(case: Case, seen: list[bool], decay: float) -> list[Any]:
  """Each seen leaf's learning-rate ratio, from the configuration (None for unseen leaves)."""
  o = case.options
  if "set_param_lr_fun" in o:
    refined = (
      o.get("head_ratio", 1.0) != 1 or o.get("depth_normalized") or case.scan_axis is not None
    )
    if refined:
      raise Refusal("set_param_lr_fun replaces it")
    out = [custom_rule(decay, None, leaf.name) if s else None for leaf, s in zip(case.leaves, seen)]
    if decay != 1 and all(r == 1.0 for r in out if r is not None):
      raise Refusal("set_param_lr_fun gave every parameter ratio 1.0")
    return [None if r is None else _clamp(case, r) for r in out]
  depths: dict[str, int] = {}  # the model's: a transformation that sees part of it places it so
  for leaf in case.leaves:
    if leaf.kind == "layer":
      depths[leaf.stack] = max(depths.get(leaf.stack, 0), leaf.index + 1)
    if leaf.kind == "scan":
      depths[leaf.stack] = leaf.shape[leaf.index]
  if "n_layers" in o:
    depths = {k: o["n_layers"] for k in depths}
  else:  # a stack whose scanned leaves are all hidden: its depth cannot be read
    unread = {x.stack for x in case.leaves if x.kind == "scan"} - {
      x.stack for x, s in zip(case.leaves, seen) if s and x.kind == "scan"
    }
    needs = [x for x, s in zip(case.leaves, seen) if s and x.kind in ("embedding", "layer", "scan")]
    if unread and any(x.stack in unread or x.stack is None for x in needs):
      raise Refusal("are left out of this tree")
  scales = decay != 1 or o.get("head_ratio", 1.0) != 1
  if not depths and scales and decay != 1 and any(seen):
    raise Refusal("no parameter name is recognised as a layer")
  out = []
  for leaf, s in zip(case.leaves, seen):
    if not s:
      out.append(None)
      continue
    depth = depths.get(leaf.stack) if leaf.stack is not None else max(depths.values(), default=None)
    if leaf.kind in ("head", "none"):  # a name no rule recognises is put at the top
      out.append(_clamp(case, o.get("head_ratio", 1.0)))
      continue
    if depth is None:
      out.append(_clamp(case, 1.0))
      continue
    if leaf.kind == "embedding":
      exponent = np.float64(depth + 1)
    elif leaf.kind == "layer":
      exponent = np.float64(depth - leaf.index)
    else:  # scan: a vector along the layer axis
      shape = [1] * len(leaf.shape)
      shape[leaf.index] = leaf.shape[leaf.index]
      exponent = (depth - np.arange(leaf.shape[leaf.index], dtype=np.float64)).reshape(shape)
    if o.get("depth_normalized"):
      exponent = exponent / (depth + 1)
    out.append(_clamp(case, np.power(np.float64(decay), exponent)))
  return out


def _clamp(case: Case, ratio: Any) -> Any:
  ratio = np.maximum(np.float64(ratio), case.options.get("min_ratio", 0.0))
  if "freeze_below" in case.options:
    ratio = np.where(ratio < case.options["freeze_below"], 0.0, ratio)
  return ratio


CHANGED = {"learning_rate": 0.05, "layerwise_decay": 0.6}  # set anew after the first part


def restores(case: Case) -> bool:
  """A state made by another decay, restored: drawn, and possible (same state structure)."""
  c = case.composition
  return (
    c["restore"]
    and "freeze_below" not in case.options
    and "layerwise_decay" not in (c["inject"] or ())
  )


def layerwise_decay(case: Case, first_part: bool) -> float:
  if first_part and restores(case):
    return 0.9 if case.options["layerwise_decay"] != 0.9 else 0.6
  if not first_part and case.composition["changed"] == "layerwise_decay":
    return CHANGED["layerwise_decay"]
  return case.options["layerwise_decay"]


def learning_rate(case: Case, step: int, first_part: bool) -> float:
  lr = case.options["learning_rate"]
  if lr == "schedule":
    return 0.1 - 0.03 * min(step, 3)  # optax.linear_schedule(0.1, 0.01, 3)
  if not first_part and case.composition["changed"] == "learning_rate":
    return CHANGED["learning_rate"]
  return lr


def gradients(case: Case) -> list[list[np.ndarray]]:
  """Per step, one gradient per leaf (in the leaf's dtype), with zero rows and a NaN if drawn."""
  rng = np.random.default_rng(case.seed)
  steps = STEPS * (case.composition["multisteps"] or 1)
  out = []
  for t in range(steps):
    grads = [rng.normal(size=leaf.shape) for leaf in case.leaves]
    if case.composition["zero_rows"] and t == 1:
      for g in grads:
        if g.ndim >= 1 and g.shape[0] > 1:
          g[0] = 0.0
    if case.composition["apply_if_finite"] and t == 1:
      big = max(range(len(grads)), key=lambda i: grads[i].size)
      if grads[big].size:
        grads[big].reshape(-1)[0] = np.nan
    out.append([np.asarray(g, _np_dtype(leaf.dtype)) for g, leaf in zip(grads, case.leaves)])
  return out


def initial_values(case: Case) -> list[np.ndarray]:
  """Parameters in ±[1, 2), in each leaf's dtype."""
  rng = np.random.default_rng(case.seed + 1)
  return [
    np.asarray(
      rng.uniform(1, 2, leaf.shape) * rng.choice([-1, 1], leaf.shape), _np_dtype(leaf.dtype)
    )
    for leaf in case.leaves
  ]


def _np_dtype(name: str):
  return jnp.dtype(name)


def expected_refusal(case: Case) -> Refusal | None:
  """The errors the configuration deserves at construction or init (any one of them), or None."""
  o, c = case.options, case.composition
  seen = visible(case)
  patterns = []
  refines = o.get("head_ratio", 1.0) != 1 or o.get("depth_normalized") or case.scan_axis is not None
  if "set_param_lr_fun" in o and refines:
    patterns.append("set_param_lr_fun replaces it")
  ladder_numbers = ("layerwise_decay", "n_layers", "head_ratio", "min_ratio", "freeze_below")
  if "freeze_below" in o and c["inject"] and any(k in c["inject"] for k in ladder_numbers):
    patterns.append("freeze_below decides which parameters keep optimizer state")
  float16 = any(s and leaf.dtype == "float16" for leaf, s in zip(case.leaves, seen))
  if float16 and not o.get("multi_precision"):  # float16 moments underflow
    patterns.append("is float16: Adam's second moment")
  for check in (
    lambda: ladder_ratios(case, seen, layerwise_decay(case, first_part=True)),
    lambda: multipliers(case, "lr_mults"),
    lambda: multipliers(case, "wd_mults"),
  ):
    try:
      check()
    except Refusal as refusal:
      patterns += refusal.patterns
  return Refusal(*patterns) if patterns else None


def reference(case: Case) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """The parameters after the case's steps, in float64 (the maths, as the docs state it), and
  the length of each element's path (the sum of its steps' sizes), which tolerances scale with."""
  o, c = case.options, case.composition
  seen = visible(case)
  init = [np.asarray(x, np.float64) for x in initial_values(case)]
  p = [x.copy() for x in init]
  path = [np.zeros_like(x) for x in init]
  m = [np.zeros_like(x) for x in p]
  v = [np.zeros_like(x) for x in p]
  b1, b2 = o.get("b1", 0.9), o.get("b2", 0.999)
  eps, eps_root = o.get("eps", 1e-8), o.get("eps_root", 0.0)
  wd = o.get("weight_decay", 0.01)
  decay_mask = [("mask" not in o) or decays(leaf.name) for leaf in case.leaves]
  wd_mults = multipliers(case, "wd_mults")
  count = mini_steps = 0  # inner steps taken, outer steps MultiSteps counted
  k = c["multisteps"] or 1
  accumulated = None
  for t, grads in enumerate(gradients(case)):
    first_part = t < k  # the outer steps before the restore, or before the change
    g = [np.asarray(x, np.float64) for x in grads]
    if c["apply_if_finite"] and not all(np.all(np.isfinite(x)) for x in g):
      continue  # skipped whole, before MultiSteps counts it
    if k > 1:
      accumulated = g if accumulated is None else [a + x for a, x in zip(accumulated, g)]
      mini_steps += 1
      if mini_steps % k:
        continue
      g, accumulated = [a / k for a in accumulated], None
    if c["before"] == "scale":
      g = [0.5 * x for x in g]
    elif c["before"] == "clip":
      g = _clip(g, 5.0)
    inner_g = [x if s else None for x, s in zip(g, seen)]
    r = ratios(case, seen, layerwise_decay(case, first_part))
    if "grad_clip" in o:  # over the leaves that train
      trained = [x is not None and not f for x, f in zip(inner_g, frozen(case, r))]
      clipped = iter(_clip([x for x, t in zip(inner_g, trained) if t], 1.0))
      inner_g = [next(clipped) if t else x for x, t in zip(inner_g, trained)]
    lr = learning_rate(case, count, first_part)
    count += 1
    for i in range(len(case.leaves)):
      if not seen[i]:
        u = (g[i] if c["wrapper"] == "masked" else -0.05 * g[i]) * _after(c)
        p[i], path[i] = p[i] + u, path[i] + np.abs(u)
        continue
      u, m[i], v[i] = adam_update(
        p[i],
        m[i],
        v[i],
        inner_g[i],
        count,
        r[i],
        lr=lr,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        wd=wd * wd_mults[i],
        decay=decay_mask[i],
        nesterov=bool(o.get("nesterov")),
        decay_follows_ratio=o.get("decay_follows_ratio", True),
        lazy=bool(o.get("lazy_mode")),
      )
      p[i], path[i] = p[i] + u * _after(c), path[i] + np.abs(u * _after(c))
  return p, path


def late_refusal(case: Case) -> Refusal | None:
  """The refusal at update of an injected decay set anew, away from 1, on a tree with no layer."""
  if case.composition["changed"] != "layerwise_decay":
    return None
  try:
    ladder_ratios(case, visible(case), layerwise_decay(case, first_part=False))
  except Refusal as refusal:
    return refusal
  return None


def _after(c: dict) -> float:
  return 0.5 if c["after"] == "scale" else 1.0


def _clip(g: list[np.ndarray], max_norm: float) -> list[np.ndarray]:
  norm = math.sqrt(sum(float(np.sum(x * x)) for x in g))
  return g if norm < max_norm else [x * (max_norm / norm) for x in g]


def tolerance(
  case: Case, leaf: Leaf, want: np.ndarray, moved: np.ndarray, seen: bool
) -> np.ndarray:
  """How far the library may be from the float64 reference: its dtype's roundings, per step,
  and a relative error along the path ``moved`` (the sum of the steps' sizes). ``seen``: the
  leaf is adamwdl's (not the other part of ``optax.masked`` / ``optax.partition``)."""
  steps = STEPS * (case.composition["multisteps"] or 1)
  if leaf.dtype in LOW:
    nmant = jnp.finfo(leaf.dtype).nmant
    final = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(want), 1e-30))) - nmant)
    if case.options.get("multi_precision") and seen:  # the float32 master, rounded once
      return 1.01 * final + 1e-5 * moved
    largest = np.abs(want) + moved  # no parameter along the path is larger: nor its rounding
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(largest, 1e-30))) - nmant)
    return steps * ulp + 0.05 * moved
  # A global norm (clipping) sums a low-precision leaf's squares in its dtype: every leaf's
  # gradient is then scaled within that dtype's precision.
  clipped = "grad_clip" in case.options or case.composition["before"] == "clip"
  mixed = clipped and any(other.dtype in LOW for other in case.leaves)
  rel = 1e-9 if leaf.dtype == "float64" else 2e-5
  if leaf.dtype == "float64" and (
    case.composition["multisteps"] or case.options["learning_rate"] == "schedule"
  ):
    rel = 1e-6  # optax.MultiSteps accumulates float64 gradients, and schedules count, in float32
  if case.options.get("mu_dtype") or mixed:
    rel = 2e-2  # a bfloat16 first moment, or a norm summed in bfloat16
  return rel * moved + (1e-12 if leaf.dtype == "float64" else 1e-6)


def matches(error: BaseException, refusal: Refusal) -> bool:
  return any(re.search(re.escape(p), str(error)) for p in refusal.patterns)


def is_named_error(error: BaseException) -> bool:
  """A ValueError or TypeError, or a runtime error carrying one (an init run under jax.jit)."""
  if isinstance(error, ValueError | TypeError):
    return True
  return (
    isinstance(error, jax.errors.JaxRuntimeError)
    and re.search(r"\b(ValueError|TypeError)\b", str(error)) is not None
  )


Runner = Callable[[Case], list[np.ndarray]]
