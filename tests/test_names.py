"""param_names (``_names``): dotted names from pytree paths."""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optax_adamwdl import param_names


def leaf_names(tree):
  return jax.tree.leaves(param_names(tree))


def test_dict_list_and_tuple_paths_join_with_dots():
  tree = {"encoder": {"layers": [{"kernel": 1}, ({"bias": 2},)]}}
  assert param_names(tree) == {
    "encoder": {
      "layers": [{"kernel": "encoder.layers.0.kernel"}, ({"bias": "encoder.layers.1.0.bias"},)]
    }
  }


def test_flat_dict_of_dotted_names_is_unchanged():
  tree = {"encoder.layers.3.self_attn.q_proj.weight": np.zeros(2), "classifier.weight": 0.0}
  assert param_names(tree) == {k: k for k in tree}


def test_integer_and_string_keys_give_the_same_name():
  # After an orbax round trip integer keys may come back as strings.
  assert leaf_names({"layers": {3: {"w": 0}}}) == leaf_names({"layers": {"3": {"w": 0}}})
  assert leaf_names({"layers": {3: {"w": 0}}}) == ["layers.3.w"]


def test_dataclass_attributes_are_names():
  @jax.tree_util.register_dataclass
  @dataclasses.dataclass
  class Block:
    kernel: jax.Array
    bias: jax.Array

  assert leaf_names({"h": [Block(jnp.zeros(2), jnp.zeros(2))]}) == ["h.0.kernel", "h.0.bias"]


def test_nnx_state_drops_the_value_suffix():
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(2)])

  state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  raw_paths = [
    jax.tree_util.keystr(p, simple=True, separator=".")
    for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]
  ]
  assert raw_paths[0].endswith(".value")  # what the suffix rule is for
  assert leaf_names(state) == [
    "layers.0.bias",
    "layers.0.kernel",
    "layers.1.bias",
    "layers.1.kernel",
  ]


def test_a_parameter_called_value_keeps_its_name():
  assert leaf_names({"value": {"w": jnp.zeros(2)}}) == ["value.w"]

  # Only an nnx Variable loses its ".value": a dataclass field called value keeps it, last or not.
  @jax.tree_util.register_dataclass
  @dataclasses.dataclass
  class Scalar:
    value: jax.Array

  assert leaf_names({"h": [Scalar(jnp.zeros(2))]}) == ["h.0.value"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Scale:
  value: Any


class _Box(NamedTuple):
  value: Any


def test_a_field_called_value_keeps_its_name_while_nnx_value_is_dropped():
  tree = {"norm": _Scale(np.ones(2)), "h": [_Box(np.ones(2))]}
  assert jax.tree.leaves(param_names(tree)) == ["h.0.value", "norm.value"]

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(2)])

  state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  assert jax.tree.leaves(param_names(state)) == [
    "layers.0.bias",
    "layers.0.kernel",
    "layers.1.bias",
    "layers.1.kernel",
  ]
