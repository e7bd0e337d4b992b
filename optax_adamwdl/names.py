"""Dotted parameter names from pytree paths.

A parameter's name is its pytree path joined by ".", the form that PyTorch's
``named_parameters()`` and Paddle's parameter names use, so that name-based
rules (``set_param_lr_fun``, ``apply_decay_param_fun``) port unchanged.
"""

import sys
from typing import Any

import jax

# Flax nnx wraps each array in a Variable whose pytree path ends in ".value".
_VARIABLE_SUFFIXES = ("value", "raw_value")


def path_name(path: tuple[Any, ...]) -> str:
  """Returns the dotted name of one pytree key path.

  Dict keys, attribute names and sequence indices are joined by "."; flax
  nnx's trailing ``.value`` is dropped.

  Examples:
    >>> import jax
    >>> path = (jax.tree_util.DictKey("layers"), jax.tree_util.SequenceKey(3))
    >>> path_name(path)
    'layers.3'
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey):
    if path[-1].name in _VARIABLE_SUFFIXES:
      path = path[:-1]
  return jax.tree_util.keystr(path, simple=True, separator=".")


def parameter_tree(params: Any) -> Any:
  """Returns the parameters of a flax nnx ``Module`` as an ``nnx.State``; other trees unchanged.

  This lets :func:`optax_adamwdl.lr_ratios` and :func:`optax_adamwdl.lr_table`
  take a model as well as its parameters.
  """
  nnx = sys.modules.get("flax.nnx")  # A Module exists only if flax.nnx was imported.
  if nnx is not None and isinstance(params, nnx.Module):
    return nnx.state(params, nnx.Param)
  return params


def param_names(tree: Any) -> Any:
  """Returns ``tree`` with each leaf replaced by its dotted name.

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
  """
  return jax.tree_util.tree_map_with_path(lambda p, _: path_name(p), tree)


def leaf_names(tree: Any) -> list[str]:
  """Returns the dotted names of ``tree``'s leaves, in ``jax.tree.leaves`` order."""
  return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
