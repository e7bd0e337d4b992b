"""Flax: nnx.Optimizer, linen TrainState and small real-family models, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

from optax_adamwdl import adamwdl, lr_ratios, lr_table
from optax_adamwdl.demo import TransformerEncoder
from tests import flax_models, model_trees
from tests.model_trees import leaf_names

LR, DECAY = 1e-2, 0.6


def _expected_ratio(layer, depth):
  if layer == "embedding":
    return DECAY ** (depth + 1)
  return 1.0 if layer is None else DECAY ** (depth - layer)


def _assert_first_step_moves_lr_times_ratio(before, after, grads, expected_layer, depth):
  """Adam's first step moves each element by lr * ratio * g / (|g| + eps) = lr * ratio."""
  names = leaf_names(before)
  checked = set()
  for name, p0, p1, g in zip(names, *map(jax.tree.leaves, (before, after, grads))):
    moved = np.abs(np.asarray(p1, np.float64) - np.asarray(p0, np.float64))
    active = np.abs(np.asarray(g)) > 1e-5
    want = LR * _expected_ratio(expected_layer(name), depth)
    np.testing.assert_allclose(moved[active], want, rtol=2e-3, err_msg=name)
    np.testing.assert_array_equal(moved[~active] <= want * 1.001, True, err_msg=name)
    checked.add(expected_layer(name))
  assert {"embedding", None} <= checked and set(range(depth)) <= checked


def test_nnx_optimizer_in_an_nnx_jit_train_step():
  depth = 3
  model = TransformerEncoder(10, 8, 4, dim=16, heads=2, n_layers=depth, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, adamwdl(LR, weight_decay=0.0, layerwise_decay=DECAY), wrt=nnx.Param
  )
  tokens = jax.random.randint(jax.random.key(1), (16, 8), 0, 10)
  labels = jnp.arange(16) % 4

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(tokens), labels).mean()

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)
    return grads

  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  grads = step(model, optimizer)
  after = nnx.state(model, nnx.Param)
  _, expected = model_trees.nnx_list(depth)
  _assert_first_step_moves_lr_times_ratio(before, after, grads, expected.get, depth)


@pytest.mark.parametrize("builder", ["linen_setup_list", "linen_compact"])
def test_linen_train_state_with_auto_named_blocks(builder):
  depth = 3
  module = {
    "linen_setup_list": model_trees._LinenSetupList,
    "linen_compact": model_trees._LinenCompact,
  }[builder](depth)
  tokens = jnp.arange(12).reshape(4, 3) % 10
  params = module.init(jax.random.key(0), tokens)["params"]
  _, expected = model_trees.FAMILIES[builder](depth)
  _check_train_state(module, params, tokens, expected.get, depth)


def _check_train_state(module, params, inputs, expected_layer, depth):
  state = train_state.TrainState.create(
    apply_fn=module.apply, params=params, tx=adamwdl(LR, weight_decay=0.0, layerwise_decay=DECAY)
  )

  @jax.jit
  def step(state):
    grads = jax.grad(lambda p: jnp.sum(jnp.sin(state.apply_fn({"params": p}, inputs))))(
      state.params
    )
    return state.apply_gradients(grads=grads), grads

  new_state, grads = step(state)
  _assert_first_step_moves_lr_times_ratio(params, new_state.params, grads, expected_layer, depth)


@pytest.mark.parametrize("family", sorted(flax_models.MODELS))
def test_real_model_trees_table_and_first_step(family):
  depth = 4
  module, inputs, expected = flax_models.MODELS[family](depth)
  params = module.init(jax.random.key(0), inputs)["params"]
  rows = lr_table(params, DECAY).rows
  layers = ["embedding", *range(depth), None]
  labels = ["bottom", *map(str, range(depth)), "top"]
  # Each stack's rows (T5 has two) go from its bottom to its top.
  for stack in {r.stack for r in rows}:
    steps = [labels.index(r.layer) for r in rows if r.stack == stack]
    assert steps == sorted(steps), stack
  assert {r.layer for r in rows} == set(labels)
  names = leaf_names(params)
  sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(params)]
  for label, layer in zip(labels, layers):
    here = [r for r in rows if r.layer == label]
    assert {r.ratio for r in here} == {_expected_ratio(layer, depth)}, label
    assert sum(r.n_params for r in here) == sum(
      s for n, s in zip(names, sizes) if expected(n) == layer
    ), label
  _check_train_state(module, params, inputs, expected, depth)


def test_encoder_decoder_stacks_each_get_the_ladder():
  module, inputs, expected = flax_models.t5_style(3)
  params = module.init(jax.random.key(0), inputs)["params"]
  ratios = lr_ratios(params, DECAY)
  for stack in ("encoder", "decoder"):
    got = [ratios[stack]["block"][str(i)]["mlp"]["kernel"] for i in range(3)]
    assert got == [DECAY**3, DECAY**2, DECAY]
  assert ratios["shared"]["embedding"] == DECAY**4


def test_lr_ratios_and_table_take_an_nnx_model_its_state_or_linen_params():
  model = TransformerEncoder(10, 8, 4, dim=16, heads=2, n_layers=2, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  assert str(lr_table(model, 0.5)) == str(lr_table(state, 0.5))
  assert jax.tree.leaves(lr_ratios(model, 0.5)) == jax.tree.leaves(lr_ratios(state, 0.5))
  assert lr_ratios(model, 0.5)["layers"][1]["mlp_in"]["kernel"] == 0.5
  module, inputs, _ = flax_models.bert_style(2)
  variables = module.init(jax.random.key(0), inputs)
  assert lr_ratios(variables["params"], 0.5)["embeddings"]["word_embeddings"]["embedding"] == 0.125
