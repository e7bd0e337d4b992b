"""Defects that an adversarial review of the rule found, each fixed, one test per defect.

Linen's boxed parameters named with their box's ".value"; an injected decay leaving 1 on a tree
with no layer (late in eager, silent under jit); check_ladder taking a pre-pass over the weights
for the network's order; and a transformation that sees part of a model placing it with another
depth than the whole model's lr_table shows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl, check_ladder, lr_ratios, param_names


def _big_vision_tree():
  """A big_vision-style ViT's linen parameters: class token, patch embedding, two encoder blocks."""
  block = lambda: {
    "MlpBlock_0": {"Dense_0": {"kernel": jnp.full((3, 3), 1.5), "bias": jnp.full(3, 0.5)}}
  }  # noqa: E731
  return {
    "cls": jnp.full((1, 1, 3), 1.2),
    "embedding": {"kernel": jnp.full((2, 2, 3, 3), 0.7)},
    "Transformer": {
      "encoderblock_0": block(),
      "encoderblock_1": block(),
      "encoder_norm": {"scale": jnp.ones(3)},
    },
    "head": {"kernel": jnp.full((3, 2), -0.4)},
  }


def test_linen_boxed_parameters_get_the_same_ratios_names_and_updates_as_unboxed_ones():
  # flax linen's sharding annotations (nn.with_partitioning -> nn.Partitioned, and
  # nn.LogicallyPartitioned) box each leaf; its pytree path then ends in ".value". Today the
  # names keep that ".value" (nnx's is dropped): big_vision's class token "cls.value" is no longer
  # the leaf "cls", so it is read as a head (ratio 1 instead of the embedding's 0.125), and
  # apply_decay_param_fun's `not name.endswith("bias")` decays every boxed bias and scale.
  nn = pytest.importorskip("flax.linen")
  plain = _big_vision_tree()
  boxed = jax.tree.map(lambda x: nn.Partitioned(x, names=(None,) * x.ndim), plain)

  assert jax.tree.leaves(param_names(nn.unbox(boxed))) == jax.tree.leaves(param_names(plain))
  assert not any(n.endswith(".value") for n in jax.tree.leaves(param_names(boxed)))
  assert jax.tree.leaves(nn.unbox(lr_ratios(boxed, 0.5))) == jax.tree.leaves(lr_ratios(plain, 0.5))

  tx = adamwdl(
    0.1,
    weight_decay=0.1,
    layerwise_decay=0.5,
    apply_decay_param_fun=lambda name: not name.endswith(("bias", "scale")),
  )
  grads = jax.tree.map(jnp.ones_like, plain)
  want, _ = tx.update(grads, tx.init(plain), plain)
  boxed_grads = jax.tree.map(jnp.ones_like, boxed)
  got, _ = tx.update(boxed_grads, tx.init(boxed), boxed)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6), nn.unbox(got), want)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_an_injected_layerwise_decay_on_a_tree_without_layers_is_refused_when_it_leaves_1(jit):
  # A schedule for layerwise_decay that starts at 1 (as the hyperparameters guide allows, and as
  # setting opt_state.hyperparams["layerwise_decay"] after init does) on a tree in which no layer
  # is found: init accepts it (the decay is 1 there), then an eager update refuses at step 1 (a
  # late refusal) while the jitted update applies ratio 1 everywhere (silently no ladder): eager
  # and jit differ. Decided: init accepts a decay of 1 (optax.inject_hyperparams injects the
  # default 1 of every user who does not use it), and the update at which it leaves 1 refuses,
  # eagerly and under jit alike (there as the runtime error carrying the message).
  flat = {"dense_a": {"kernel": jnp.ones((3, 3))}, "dense_b": {"bias": jnp.ones(3)}}
  tx = optax.inject_hyperparams(adamwdl)(
    learning_rate=0.1, weight_decay=0.0, layerwise_decay=optax.linear_schedule(1.0, 0.5, 2)
  )
  state = tx.init(flat)
  update = jax.jit(tx.update) if jit else tx.update
  _, state = update(jax.tree.map(jnp.ones_like, flat), state, flat)  # the decay is 1: trains
  error = (jax.errors.JaxRuntimeError, ValueError)
  with pytest.raises(error, match="no parameter name is recognised as a layer"):
    update(jax.tree.map(jnp.ones_like, flat), state, flat)  # 0.75 at the second step


def test_check_ladder_orders_parameters_by_where_the_network_uses_them_not_by_a_prepass():
  # A forward pass that first transforms every weight (dequantization, a LoRA merge, weight
  # normalisation, a scale) reads them all, in tree order, before the network runs. check_ladder
  # takes that pre-pass for the network's order: the head (read early by the pre-pass) is
  # reported as "first read before the layers, should get at most 0.125". The forward pass
  # itself runs embeddings, layers 0..2, head, exactly as without the pre-pass.
  params = {
    "embed": jnp.zeros((10, 4)),
    "layers": [{"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)} for _ in range(3)],
    "head": jnp.zeros((4, 2)),
  }

  def net(p, ids):
    x = p["embed"][ids]
    for layer in p["layers"]:
      x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ p["head"]

  def dequantized(p, ids):
    return net(jax.tree.map(lambda w: w * 0.5, p), ids)

  ids = jnp.zeros(3, int)
  assert check_ladder(net, params, ids).ok
  result = check_ladder(dequantized, params, ids)
  assert result.ok, str(result)


def test_under_multi_transform_the_applied_ratios_are_those_lr_ratios_gives_for_the_model():
  # Judgement call (tests/differential.py's reference takes the depth from the visible leaves):
  # optax.multi_transform hands the top two of four layers to another transformation, and the
  # adamwdl part infers its depth from the layers it sees (2), not from the model's (4), although
  # it knows the hidden names (it reads them to tell a sequence from a stack). So layer 1 gets
  # 0.5 where lr_ratios / lr_table of the model say 0.125 (embeddings 0.125 against 0.03125):
  # the table printed before training is not what the update applies.
  params = {
    "embeddings": jnp.full((4, 3), 1.5),
    "encoder": {"layers": [{"w": jnp.full((3, 3), -1.2)} for _ in range(4)]},
    "classifier": jnp.full((3, 2), 1.1),
  }
  labels = {
    "embeddings": "a",
    "encoder": {"layers": [{"w": "a"}, {"w": "a"}, {"w": "b"}, {"w": "b"}]},
    "classifier": "a",
  }
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.3), params)
  tx = optax.multi_transform(
    {"a": adamwdl(0.1, weight_decay=0.0, layerwise_decay=0.5), "b": optax.set_to_zero()}, labels
  )
  got, _ = tx.update(grads, tx.init(params), params)
  plain = optax.adamw(0.1, weight_decay=0.0)
  base, _ = plain.update(grads, plain.init(params), params)
  applied = jax.tree.map(lambda u, b: float(u.ravel()[0] / b.ravel()[0]), got, base)
  want = lr_ratios(params, 0.5)
  for name in ("embeddings", "classifier"):
    assert applied[name] == pytest.approx(want[name], rel=1e-5), name
  for i in (0, 1):
    assert applied["encoder"]["layers"][i]["w"] == pytest.approx(
      want["encoder"]["layers"][i]["w"], rel=1e-5
    ), i
