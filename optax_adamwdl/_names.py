"""Dotted parameter names from pytree paths.

A parameter's name is its pytree path joined by ".", the form that PyTorch's
``named_parameters()`` and Paddle's parameter names use, so that name-based
rules (``set_param_lr_fun``, ``apply_decay_param_fun``) port unchanged. A key
that holds a ``/``-joined module path (Haiku's ``"transformer/layer_1/mlp"``,
flattened checkpoints) is read as that path: its ``/`` become ``.``, and
Haiku's ``~`` (a module made inside another's method) is dropped.
"""

import sys
from typing import Any

import jax
import optax


def _variable_types() -> tuple[type, ...]:
  """The boxes that hold one parameter: flax nnx's Variable and linen's ``AxisMetadata``
  (``nn.Partitioned``, ``nn.LogicallyPartitioned``), when flax imported them (never here)."""
  nnx, meta = sys.modules.get("flax.nnx"), sys.modules.get("flax.core.meta")
  return tuple(
    kind for kind in (getattr(nnx, "Variable", None), getattr(meta, "AxisMetadata", None)) if kind
  )


def _dotted(path: Any) -> str:
  """A key path as a dotted name: ``/``-joined module paths inside one key are split."""
  name = jax.tree_util.keystr(path, simple=True, separator=".")
  if "/" in name:
    name = ".".join(part for part in name.replace("/", ".").split(".") if part != "~")
  return name


def _flatten_with_names(tree: Any) -> list[tuple[str, Any]]:
  # An nnx Variable is a leaf here, so its path ends at the attribute that holds it: no ".value".
  # It holds one array, or nothing (optax.masked and optax.partition put an optax.MaskedNode in
  # the Variables they leave out), so the names line up with jax.tree.leaves(tree).
  kinds = _variable_types()
  is_leaf = (lambda x: isinstance(x, kinds)) if kinds else None
  pairs = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  named = []
  for path, x in pairs:
    leaves = jax.tree.leaves(x) if kinds and isinstance(x, kinds) else [x]
    named += [(_dotted(path), leaf) for leaf in leaves]
  return named


def masked_names(tree: Any) -> list[str]:
  """The dotted names of the ``optax.MaskedNode`` placeholders in ``tree`` (no leaves of their own)."""
  kinds = _variable_types()
  hidden = lambda x: (
    isinstance(x, optax.MaskedNode)
    or (bool(kinds) and isinstance(x, kinds) and not jax.tree.leaves(x))
  )
  pairs = jax.tree_util.tree_flatten_with_path(tree, is_leaf=hidden)[0]
  return [_dotted(path) for path, x in pairs if hidden(x)]


def leaf_names(tree: Any) -> list[str]:
  """The dotted names of ``tree``'s leaves, in ``jax.tree.leaves`` order."""
  return [name for name, _ in _flatten_with_names(tree)]


def param_names(tree: Any) -> Any:
  """Returns ``tree`` with each leaf replaced by its dotted name.

  Dict keys, attribute names and sequence indices are joined by "." (a key
  that holds a ``/``-joined path is split, Haiku's ``~`` dropped); a flax
  nnx ``Variable`` is named by the attribute that holds it (no trailing
  ``.value``), while a dataclass field that happens to be called ``value``
  keeps its name.

  Args:
    tree: a pytree of parameters: nested dicts (Flax linen, Hugging Face Flax),
      a flax nnx ``State``, lists, dataclasses, or a flat dict already keyed by
      dotted names (Paddle or PyTorch checkpoints).

  Returns:
    A pytree of the same structure whose leaves are strings.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"encoder": {"layers": [{"kernel": jnp.zeros(2)}]}}
    >>> param_names(params)
    {'encoder': {'layers': [{'kernel': 'encoder.layers.0.kernel'}]}}
    >>> param_names({"lm/~/transformer/layer_1": {"w": jnp.zeros(2)}})  # Haiku
    {'lm/~/transformer/layer_1': {'w': 'lm.transformer.layer_1.w'}}
  """
  return jax.tree.unflatten(jax.tree.structure(tree), leaf_names(tree))


def parameter_tree(params: Any) -> Any:
  """The parameters of a flax nnx ``Module`` as an ``nnx.State``; any other tree unchanged."""
  nnx = sys.modules.get("flax.nnx")  # A Module exists only if flax.nnx was imported.
  if nnx is not None and isinstance(params, nnx.Module):
    return nnx.state(params, nnx.Param)
  return params
