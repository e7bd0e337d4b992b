"""Series or parallel: which lists of layers make one ladder, and in which order (rule 2).

Lists under distinct modules whose names say they are towers (text, vision,
encoder, decoder, ...) take inputs of their own: a ladder each. Lists side by
side in one module run one on the other's output: one ladder, in the order
their names give. Anything else is refused, with the ``stacks=`` to write.
:mod:`optax_adamwdl._stacks` asks these questions of a whole tree.
"""

import functools
from collections.abc import Sequence

from optax_adamwdl import _layers

# Words that name a tower (a stack with inputs of its own), in a list's own name.
TOWER_WORDS = frozenset(
  {
    "text",
    "vision",
    "visual",
    "image",
    "audio",
    "speech",
    "video",
    "encoder",
    "decoder",
    "language",
    "img",
    "txt",
    "tower",
  }
)
# Words that order lists of layers in series: a lower rank runs first (MaxText's DeepSeek runs
# its dense layers, then its MoE layers).
ORDER_WORDS = {"dense": 0, "moe": 1, "sparse": 1}


def _words(component: str) -> set[str]:
  return set(component.lower().split("_"))


def list_root(prefix: str, root: str) -> bool:
  """Whether a stack's root is its module's own list: the list itself, or a module named as one.

  ``decoder.dense_layers`` (the list is what tells it from the other stacks) and
  ``decoder.layers_remainder`` (a module named as a list) are; ``encoder``,
  ``text_model`` and ``vision_layers`` (a tower's name) are not.
  """
  if root == "" or prefix == "scan_axes":  # a scan_axes function's leaves: one stack, no module
    return False
  words = _words(root.rpartition(".")[2])
  if words & TOWER_WORDS:
    return False
  return root == prefix or bool(words & _layers.LAYER_LISTS)


def _before(a: str, b: str) -> bool | None:
  """Whether list component ``a`` runs before ``b`` by their names, or None when they do not say."""
  if b.startswith(a + "_"):  # layers, then layers_remainder
    return True
  if a.startswith(b + "_"):
    return False
  rank_a = [ORDER_WORDS[w] for w in _words(a) if w in ORDER_WORDS]
  rank_b = [ORDER_WORDS[w] for w in _words(b) if w in ORDER_WORDS]
  if rank_a and rank_b and min(rank_a) != min(rank_b):
    return min(rank_a) < min(rank_b)
  return None


def series_order(key: str | None, lists: Sequence[str], given: bool = False) -> list[str]:
  """The lists of one stack in the order they run (rule 2), or a refusal.

  Each list is named by its component right under the lists' common module
  (``dense_layers``; ``layers_remainder`` for ``decoder.layers_remainder.layers``).
  """
  if len(lists) < 2:
    return list(lists)
  split = [p.split(".") for p in lists]
  common = 0
  while all(len(q) > common + 1 for q in split) and len({q[common] for q in split}) == 1:
    common += 1
  own = {p: q[common] for p, q in zip(lists, split)}
  for i, a in enumerate(lists):
    for b in lists[i + 1 :]:
      if own[a] == own[b] or _before(own[a], own[b]) is None:
        parent = ".".join(split[0][:common])
        roots = [".".join(p.split(".")[: common + 1]) for p in (a, b)]
        where = repr(parent) if parent else "the model"
        where = f"stack {key!r} (given in stacks=)" if given else where
        raise ValueError(
          f"The lists of layers {a!r} and {b!r} sit side by side in {where}, and their names "
          "say neither that they are towers with inputs of their own (a ladder each) nor in "
          "which order one runs on the other's output (one ladder, in series). For a ladder "
          f"each, pass stacks={roots!r}; for one ladder in series, pass set_param_lr_fun "
          "(see the ladder guide, 'Series or parallel')."
        )
  compare = lambda a, b: -1 if _before(own[a], own[b]) else 1
  return sorted(lists, key=functools.cmp_to_key(compare))


def check_towers(keys: dict[str, str]) -> None:
  """Refuses lists under distinct modules whose names do not say they are towers (rule 2).

  A tower takes inputs of its own (``encoder``/``decoder``, ``text_model``/``vision_model``); two
  lists under modules named otherwise (``blocks`` and an MLP's ``proj.layers``; ``stage1`` and
  ``stage2``) may as well run one on the other's output, which a ladder each would get wrong.
  """
  towers = {
    k for k in keys.values() if k == "" or set().union(*map(_words, k.split("."))) & TOWER_WORDS
  }
  others = sorted({k for k in keys.values()} - towers)
  if others:
    lists = sorted(keys)
    raise ValueError(
      f"The lists of layers {lists} sit under different modules, and the names of {others} say "
      "neither that they are towers with inputs of their own (text, vision, encoder, decoder, "
      "...: a ladder each) nor in which order they run (one ladder, in series). For a ladder "
      f"each, pass stacks={sorted(set(keys.values()) - {''})!r}; for one ladder in series, "
      "pass set_param_lr_fun (see the ladder guide, 'Series or parallel')."
    )
