"""The ladder (``_ladder``) beyond the peers: scanned layers, several stacks, head multiplier,
clamps, freezing, decoupled decay and depth-normalised exponents, and their refusals."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl, lr_ratios, lr_table, scale_by_layerwise_lr
from tests import flax_models, reference
from tests.conftest import SMALL_ONES, assert_close, problem, raises
from tests.steps import run_steps

H, DEPTH, DECAY = 4, 3, 0.6
LR, WD = 0.1, 0.1


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x + nn.Dense(H, name="Dense_1")(nn.gelu(nn.Dense(2 * H, name="Dense_0")(x)))


class _ScanBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return _Block(name="MlpBlock_0")(x), None


class _Scanned(nn.Module):
  """big_vision's ViT with scan=True: one "encoderblock" leaf per weight, layers on axis 0."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(H, name="embedding")(x)
    blocks = nn.scan(
      _ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=DEPTH
    )
    x, _ = blocks(name="encoderblock")(x, None)
    return nn.Dense(2, name="head")(x)


class _Unrolled(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dense(H, name="embedding")(x)
    for i in range(DEPTH):
      x = _Block(name=f"encoderblock_{i}")(x)  # same as _ScanBlock's MlpBlock_0
    return nn.Dense(2, name="head")(x)


def _unroll(tree):
  """The scanned tree's parameters as the unrolled model lays them out."""
  tree = dict(tree)
  stacked = tree.pop("encoderblock")["MlpBlock_0"]
  for i in range(DEPTH):
    tree[f"encoderblock_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return tree


@pytest.mark.parametrize("jit", [False, True])
def test_scanned_and_unrolled_models_get_identical_updates(jit):
  x = jnp.ones((2, H))
  scanned = _Scanned().init(jax.random.key(0), x)["params"]
  assert scanned["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (DEPTH, H, 2 * H)
  grad = jax.jit(jax.grad(lambda p, t: jnp.sum(jnp.sin(_Scanned().apply({"params": p}, x * t)))))
  grads = [grad(scanned, t) for t in (1.0, 2.0, 3.0)]
  tx_scanned = adamwdl(1e-2, layerwise_decay=DECAY, scan_axes={"encoderblock": 0})
  tx_unrolled = adamwdl(1e-2, layerwise_decay=DECAY)
  got = _unroll(run_steps(tx_scanned, scanned, grads, jit)[0])
  want = run_steps(tx_unrolled, _unroll(scanned), [_unroll(g) for g in grads], jit)[0]
  if not jit:
    chex.assert_trees_all_equal(got, want)
  else:
    # The ratios are constants of the compiled step, and XLA folds a constant learning rate into
    # a layer's scalar ratio (one rounding of ratio * lr) but not into a scanned leaf's vector of
    # ratios (two roundings): a step may differ by one rounding, a parameter by two (the step and
    # the sum) per step.
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      tol = 2 * len(grads) * np.spacing(np.max(np.abs(np.asarray(w))))
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=tol)
  # And the unrolled model is what Flax builds, so its names are the real ones.
  real = _Unrolled().init(jax.random.key(0), x)["params"]
  assert jax.tree.structure(real) == jax.tree.structure(want)


def test_scanned_ratio_is_a_length_L_vector_and_n_layers_is_inferred():
  scanned = _Scanned().init(jax.random.key(0), jnp.ones((2, H)))["params"]
  ratios = lr_ratios(scanned, DECAY, scan_axes={"encoderblock": 0})
  kernel = ratios["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
  assert kernel.shape == (DEPTH, 1, 1)
  np.testing.assert_array_equal(kernel.ravel(), [DECAY**3, DECAY**2, DECAY**1])
  assert ratios["embedding"]["kernel"] == DECAY ** (DEPTH + 1)
  assert ratios["head"]["kernel"] == 1.0
  table = lr_table(scanned, DECAY, scan_axes={"encoderblock": 0})
  assert [r.layer for r in table.rows] == ["bottom", "0", "1", "2", "top"]
  assert [r.rule for r in table.rows[1:4]] == ["scan"] * 3
  per_layer = sum(x.size for x in jax.tree.leaves(scanned["encoderblock"])) // DEPTH
  assert [r.n_params for r in table.rows[1:4]] == [per_layer] * 3


def test_the_jitted_update_holds_no_array_larger_than_the_layer_vector():
  scanned = _Scanned().init(jax.random.key(0), jnp.ones((2, H)))["params"]
  tx = scale_by_layerwise_lr(DECAY, scan_axes={"encoderblock": 0})
  jaxpr = jax.make_jaxpr(tx.update)(scanned, tx.init(scanned))
  constants = [np.size(c) for c in jaxpr.consts]
  literals = [np.size(v.val) for eqn in jaxpr.eqns for v in eqn.invars if hasattr(v, "val")]
  assert max(constants + literals, default=0) <= DEPTH


def test_scan_axis_1_as_in_t5x_and_maxtext():
  params = {
    "decoder": {"layers": {"mlp": {"wi": jnp.ones((H, DEPTH, 8))}}},
    "token_embedder": {"embedding": jnp.ones((10, H))},
  }
  ratios = lr_ratios(params, 0.5, scan_axes={"layers": 1})
  wi = ratios["decoder"]["layers"]["mlp"]["wi"]
  assert wi.shape == (1, DEPTH, 1)
  np.testing.assert_array_equal(wi.ravel(), [0.125, 0.25, 0.5])
  assert ratios["token_embedder"]["embedding"] == 0.0625
  by_function = lr_ratios(params, 0.5, scan_axes=lambda name: 1 if ".layers." in name else None)
  np.testing.assert_array_equal(by_function["decoder"]["layers"]["mlp"]["wi"], wi)


def test_scanned_layers_without_scan_axes_are_refused_with_a_hint():
  scanned = _Scanned().init(jax.random.key(0), jnp.ones((2, H)))["params"]
  with pytest.raises(ValueError, match=r"scanned layers .* pass scan_axes="):
    adamwdl(layerwise_decay=DECAY).init(scanned)


def test_bad_scan_axis_is_refused_naming_the_parameter():
  with pytest.raises(ValueError, match=r"scan_axes gives axis 3 for parameter 'layers.w' of shape"):
    lr_ratios({"layers": {"w": jnp.ones((2, 2))}}, 0.5, scan_axes={"layers": 3})


def test_scan_axes_naming_no_parameter_is_refused():
  params = SMALL_ONES | {"encoderblock.w": np.ones((3, 2), np.float32)}
  message = raises(
    ValueError,
    lambda: adamwdl(LR, layerwise_decay=0.8, scan_axes={"encoderblok": 0}).init(params),
    "encoderblok",
  )
  assert "scan_axes" in message


def test_scan_axes_given_as_a_list_is_refused():
  # A list where a mapping is expected: a TypeError, as for any argument of the wrong type.
  params = SMALL_ONES | {"encoderblock.w": np.ones((3, 2), np.float32)}
  raises(TypeError, lambda: lr_ratios(params, 0.8, scan_axes=["encoderblock"]), "scan_axes")


def test_scanned_leaves_of_one_stack_with_different_lengths_are_refused():
  params = {
    "embedding": {"w": np.ones(2, np.float32)},
    "encoderblock": {
      "attn": {"w": np.ones((3, 2), np.float32)},
      "mlp": {"w": np.ones((4, 2), np.float32)},
    },
    "head": {"w": np.ones(2, np.float32)},
  }
  tx = adamwdl(LR, layerwise_decay=0.8, scan_axes={"encoderblock": 0})
  raises(ValueError, lambda: tx.init(params), r"encoderblock\.(attn|mlp)\.w")


UNROLLED_SHAPES = {
  "embedding.w": (2,),
  **{f"encoderblock_{i}.w": (2, 2) for i in range(3)},
  "head.w": (2,),
}


def test_scanned_equals_unrolled_with_freeze_below_and_decoupled_decay():
  options = dict(weight_decay=WD, layerwise_decay=0.5, freeze_below=0.2, decay_follows_ratio=False)
  unrolled_init, unrolled_grads = problem(UNROLLED_SHAPES, 3, seed=4, init_range=(1.0, 2.0))

  def stacked(tree):
    layers = [tree[f"encoderblock_{i}.w"] for i in range(3)]
    rest = {k: v for k, v in tree.items() if not k.startswith("encoderblock_")}
    return {**rest, "encoderblock.w": np.stack(layers)}

  scanned, _ = run_steps(
    adamwdl(LR, scan_axes={"encoderblock": 0}, **options),
    stacked(unrolled_init),
    [stacked(g) for g in unrolled_grads],
  )
  unrolled, _ = run_steps(adamwdl(LR, **options), unrolled_init, unrolled_grads)
  # embedding 0.5**4 and layer 0 0.5**3 are frozen: not even the weight decay moves them.
  ratios = {"embedding.w": 0.0, "encoderblock_0.w": 0.0, "encoderblock_1.w": 0.25}
  ratios |= {"encoderblock_2.w": 0.5, "head.w": 1.0}
  want, _, _ = reference.run(
    unrolled_init, unrolled_grads, ratios, lr=LR, wd=WD, decay_follows_ratio=False
  )
  assert_close(unrolled, want)
  np.testing.assert_array_equal(unrolled["encoderblock_0.w"], unrolled_init["encoderblock_0.w"])
  np.testing.assert_array_equal(scanned["encoderblock.w"][0], unrolled_init["encoderblock_0.w"])
  np.testing.assert_array_equal(scanned["embedding.w"], unrolled_init["embedding.w"])
  np.testing.assert_array_equal(unrolled["embedding.w"], unrolled_init["embedding.w"])
  np.testing.assert_allclose(scanned["head.w"], unrolled["head.w"], rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(
    scanned["encoderblock.w"], stacked(unrolled)["encoderblock.w"], rtol=1e-6, atol=1e-7
  )


# Several stacks or towers.


def test_encoder_and_decoder_of_different_depths_each_get_their_own_ladder():
  module, inputs, _ = flax_models.t5_style(4, 2)
  params = module.init(jax.random.key(0), inputs)["params"]
  ratios = lr_ratios(params, 0.5)  # each stack its own depth: both top layers get 0.5 ** 1
  assert ratios == lr_ratios(params, 0.5, stacks=["encoder", "decoder"])
  assert [ratios["encoder"]["block"][str(i)]["mlp"]["kernel"] for i in range(4)] == [
    0.5**4,
    0.5**3,
    0.5**2,
    0.5,
  ]
  assert [ratios["decoder"]["block"][str(i)]["mlp"]["kernel"] for i in range(2)] == [0.25, 0.5]
  assert ratios["shared"]["embedding"] == 0.5**5  # below the deepest stack
  assert ratios["lm_head"]["kernel"] == 1.0
  rows = lr_table(params, 0.5, stacks=["encoder", "decoder"]).rows
  stacks = list(dict.fromkeys(r.stack for r in rows))
  assert sorted(stacks) == ["(outside)", "decoder", "encoder"]
  # Each stack's rows together, from its bottom to its top.
  assert [r.stack for r in rows] == sorted((r.stack for r in rows), key=stacks.index)
  assert {s: [r.layer for r in rows if r.stack == s] for s in stacks} == {
    "encoder": ["0", "1", "2", "3", "top"],
    "decoder": ["0", "1", "top"],
    "(outside)": ["bottom", "top"],
  }
  assert [r.ratio for r in rows if r.stack == "(outside)"] == [0.5**5, 1.0]


def test_towers_with_their_own_decay_and_depth():
  # CLIP-style towers; EVA-CLIP uses a different decay per tower.
  params = {
    "img": {"embedding": jnp.ones(2), "blocks": [jnp.ones(2)] * 3},
    "txt": {"token_embedding": jnp.ones(2), "layers": [jnp.ones(2)] * 2},
    "logit_scale": jnp.ones(()),
  }
  ratios = lr_ratios(params, 0.9, stacks={"img": {"decay": 0.5}, "txt": {"n_layers": 4}})
  assert ratios["img"]["blocks"] == [0.125, 0.25, 0.5] and ratios["img"]["embedding"] == 0.0625
  assert ratios["txt"]["layers"] == [0.9**4, 0.9**3] and ratios["txt"]["token_embedding"] == 0.9**5
  assert ratios["logit_scale"] == 1.0


@pytest.mark.parametrize(
  "stacks, message",
  [
    (["encoder", "decodr"], r"stacks: no parameter name starts with 'decodr'"),
    (
      {"encoder": {"depth": 3}},
      r"stacks\['encoder'\] must be a non-empty name prefix with options",
    ),
    ({"encoder": {"decay": -1.0}}, r"stacks\['encoder'\]\['decay'\] must be finite"),
    ({"encoder": {"n_layers": 2}}, r"n_layers=2 but parameter 'encoder.block.3.*' is in layer 3"),
  ],
)
def test_bad_stacks_are_refused(stacks, message):
  module, inputs, _ = flax_models.t5_style(4, 2)
  params = module.init(jax.random.key(0), inputs)["params"]
  with pytest.raises(ValueError, match=message):
    adamwdl(layerwise_decay=0.5, stacks=stacks).init(params)


def test_overlapping_stacks_are_refused():
  # Parameters under both prefixes, so that neither stack is empty: the overlap itself is refused,
  # a ValueError (the stacks are of the right type; their values contradict each other).
  params = {
    "encoder": {"block": [{"w": np.ones(2, np.float32)}] * 2, "norm": np.ones(2, np.float32)},
    "head": {"w": np.ones(2, np.float32)},
  }
  message = raises(
    ValueError,
    lambda: adamwdl(LR, layerwise_decay=0.8, stacks=["encoder", "encoder.block"]).init(params),
    "stacks",
  )
  assert "'encoder'" in message and "'encoder.block'" in message, message


# Head multiplier, clamps, decoupled decay, depth normalisation.


def _bert_params(n_layers=4, seed=0):
  rng = np.random.default_rng(seed)
  return {
    k: jnp.asarray(rng.normal(size=s), jnp.float32)
    for k, s in reference.bert_paddle_names(n_layers).items()
  }


def test_head_ratio_multiplies_only_what_is_above_the_top_layer():
  ratios = lr_ratios(_bert_params(), 0.5, head_ratio=10.0)
  assert ratios["classifier.weight"] == 10.0 and ratios["pooler.dense.weight"] == 10.0
  assert ratios["encoder.layers.3.linear1.weight"] == 0.5
  assert ratios["embeddings.word_embeddings.weight"] == 0.5**5
  # No custom rule needed, and no decay needed either.
  assert lr_ratios(_bert_params(), 1.0, head_ratio=10.0)["encoder.layers.0.linear1.weight"] == 1.0


def test_head_ratio_on_a_tree_without_layers():
  # With no layer, every parameter is unrecognised, and a name no rule recognises gets head_ratio
  # (the ladder's contract, docs/guides/ladder.md); "no layer found" is refused only with
  # layerwise_decay != 1 (1 here). So the tree trains, every update scaled by head_ratio.
  init, grads = problem({"w": (2, 2), "b": (2,)}, 1, seed=10, init_range=(1.0, 2.0))
  tx = adamwdl(LR, weight_decay=WD, head_ratio=2.0)
  updates, _ = tx.update(grads[0], tx.init(init), init)
  assert_close(
    optax.apply_updates(init, updates),
    reference.run(init, grads, {"w": 2.0, "b": 2.0}, lr=LR, wd=WD)[0],
  )


def test_min_ratio_floors_every_ratio():
  ratios = lr_ratios(_bert_params(), 0.5, min_ratio=0.1)
  assert ratios["embeddings.word_embeddings.weight"] == 0.1  # 0.5 ** 5 = 0.03125
  assert ratios["encoder.layers.0.linear1.weight"] == 0.1  # 0.0625
  assert ratios["encoder.layers.1.linear1.weight"] == 0.125


def test_freeze_below_zeroes_updates_and_allocates_no_moments():
  params = _bert_params()
  tx = adamwdl(1e-2, weight_decay=0.1, layerwise_decay=0.5, freeze_below=0.1)
  state = tx.init(params)
  frozen = [k for k in params if k.startswith(("embeddings.", "encoder.layers.0."))]
  mu = optax.tree.get(state, "mu")
  assert len(jax.tree.leaves(mu)) == len(params) - len(frozen)
  assert all(isinstance(mu[k], optax.MaskedNode) for k in frozen)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  for k in params:
    moved = bool(jnp.any(updates[k] != 0))
    assert moved == (k not in frozen), k  # no step and no weight decay when frozen


def test_freeze_below_with_a_traced_decay_is_a_clear_error():
  tx = optax.inject_hyperparams(adamwdl)(layerwise_decay=0.5, freeze_below=0.1)
  params = _bert_params()
  with pytest.raises(TypeError, match=r"freeze_below .* Python numbers.*static_args="):
    tx.init(params)  # at init, where inject_hyperparams builds adamwdl, not at the first update


@pytest.mark.parametrize("follows", [True, False])
def test_decay_follows_ratio_against_numpy(follows):
  params = _bert_params(3, seed=1)
  rng = np.random.default_rng(2)
  grads = [
    {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(5)
  ]
  tx = adamwdl(
    2e-2,
    weight_decay=0.3,
    layerwise_decay=0.5,
    decay_follows_ratio=follows,
    apply_decay_param_fun=reference.paddle_no_decay,
  )
  got = run_steps(tx, params, grads)[0]

  def numpy_run(decay_follows_ratio):
    return reference.run(
      params,
      grads,
      {k: reference.paddle_layerwise_lr_decay(0.5, 3, k) for k in params},
      lr=2e-2,
      wd=0.3,
      decay={k: reference.paddle_no_decay(k) for k in params},
      decay_follows_ratio=decay_follows_ratio,
    )[0]

  want, other = numpy_run(follows), numpy_run(not follows)
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=5e-6, err_msg=k)
  k = "embeddings.word_embeddings.weight"
  assert np.max(np.abs(np.asarray(got[k]) - other[k])) > 1e-4  # the two really differ


@pytest.mark.parametrize("depth", [4, 12, 24])
def test_depth_normalized_keeps_embedding_and_head_fixed(depth):
  ratios = lr_ratios(_bert_params(depth), 0.5, depth_normalized=True)
  assert ratios["embeddings.word_embeddings.weight"] == pytest.approx(0.5)
  assert ratios["classifier.weight"] == 1.0
  for i in range(depth):
    # (L + 1 - d) / (L + 1) with d = i + 1
    assert ratios[f"encoder.layers.{i}.linear1.weight"] == pytest.approx(
      0.5 ** ((depth - i) / (depth + 1))
    )


def test_ladder_options_with_a_custom_rule_are_refused():
  with pytest.raises(ValueError, match="set_param_lr_fun replaces it"):
    lr_ratios(_bert_params(), 0.5, set_param_lr_fun=lambda d, n, name: 1.0, head_ratio=2.0)
