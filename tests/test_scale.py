"""scale_by_layerwise_lr (``_scale``) and lr_ratios: ratios, traced decay, and every error path."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import lr_ratios, scale_by_layerwise_lr
from tests import reference


def _bert(n_layers=4):
  return {k: jnp.ones(s, jnp.float32) for k, s in reference.bert_paddle_names(n_layers).items()}


@pytest.mark.parametrize("jit", [False, True])
def test_scales_each_leaf_by_its_ratio(jit):
  params = _bert()
  tx = scale_by_layerwise_lr(0.6)
  update = jax.jit(tx.update) if jit else tx.update
  grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
  scaled, state = update(grads, tx.init(params))
  assert state == optax.EmptyState()  # the ratios come from the configuration, not the state
  for name, value in scaled.items():
    want = 3.0 * reference.paddle_layerwise_lr_decay(0.6, 4, name)
    np.testing.assert_allclose(value, want, rtol=1e-7, err_msg=name)


def test_a_ratio_shared_with_a_float64_leaf_is_kept_in_float64():
  with jax.enable_x64(True):
    params = {"layers": [jnp.ones(2, jnp.float32), jnp.ones(2, jnp.float32)]}
    params["embed"] = jnp.ones(2, jnp.float64)
    params["layers"].append({"w": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.float64)})
    tx = scale_by_layerwise_lr(0.7)
    scaled, _ = jax.jit(tx.update)(jax.tree.map(lambda p: 3 * p, params), tx.init(params))
    assert scaled["layers"][2]["b"][0] == 3 * 0.7**1  # a float64 ratio, not a rounded float32 one
    assert scaled["layers"][2]["w"][0] == np.float32(3 * np.float32(0.7**1))
    assert scaled["embed"][0] == 3 * 0.7**4


def test_inferred_depth_equals_explicit_depth():
  params = _bert(6)
  assert lr_ratios(params, 0.8) == lr_ratios(params, 0.8, n_layers=6)
  assert lr_ratios(params, 0.8) != lr_ratios(params, 0.8, n_layers=7)


def test_ratios_are_python_floats_not_arrays():
  ratios = jax.tree.leaves(lr_ratios(_bert(), 0.75))
  assert all(type(r) is float for r in ratios)


def test_traced_decay_matches_constant_decay():
  params = _bert()
  grads = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def scaled(decay):
    tx = scale_by_layerwise_lr(decay)
    return tx.update(grads, tx.init(params))[0]

  tx = scale_by_layerwise_lr(0.7)
  want = tx.update(grads, tx.init(params))[0]
  chex.assert_trees_all_close(scaled(jnp.float32(0.7)), want, rtol=1e-6)


def test_bfloat16_update_is_scaled_in_float32():
  tx = scale_by_layerwise_lr(0.7)
  g = jnp.linspace(1.0, 3.0, 64, dtype=jnp.bfloat16)
  grads = {"layers": [g, g], "embed": g}
  scaled, _ = tx.update(grads, tx.init(grads))
  assert scaled["embed"].dtype == jnp.bfloat16
  want = (g.astype(jnp.float32) * jnp.float32(0.7**3)).astype(jnp.bfloat16)
  ratio_rounded_first = g * jnp.asarray(0.7**3, jnp.bfloat16)
  assert np.any(want != ratio_rounded_first)  # so the check below can tell them apart
  np.testing.assert_array_equal(scaled["embed"], want)


def test_decay_one_is_the_identity_even_with_no_layers():
  tx = scale_by_layerwise_lr(1.0)
  grads = {"w": jnp.arange(3.0)}
  chex.assert_trees_all_equal(tx.update(grads, tx.init(grads))[0], grads)


def test_custom_rule_receives_names_decay_and_depth():
  seen = []

  def rule(decay_rate, n_layers, name):
    seen.append((decay_rate, n_layers, name))
    return 0.5 if name.startswith("head") else 1.0

  params = {"layers": [jnp.ones(1)] * 3, "head": jnp.ones(1)}
  assert lr_ratios(params, 0.9, set_param_lr_fun=rule) == {"head": 0.5, "layers": [1.0] * 3}
  assert ("head" in {n for _, _, n in seen}) and {(d, n) for d, n, _ in seen} == {(0.9, 3)}


# Errors: at construction or at init, naming the argument and the value.


@pytest.mark.parametrize("decay", [0.0, -0.5, math.inf, math.nan])
def test_bad_decay_is_refused_at_construction(decay):
  with pytest.raises(ValueError, match=r"layerwise_decay must be finite and in \(0.0, inf\]"):
    scale_by_layerwise_lr(decay)


def test_non_numeric_decay_is_a_type_error():
  with pytest.raises(TypeError, match="layerwise_decay must be a real number"):
    scale_by_layerwise_lr("0.75")


@pytest.mark.parametrize("n_layers", [0, -1, 2.5])
def test_bad_n_layers_is_refused(n_layers):
  with pytest.raises(ValueError, match="n_layers must be a positive integer"):
    scale_by_layerwise_lr(0.75, n_layers=n_layers)


def test_n_layers_below_a_found_layer_is_an_error():
  tx = scale_by_layerwise_lr(0.75, n_layers=3)
  with pytest.raises(
    ValueError,
    match=r"n_layers=3 but parameter 'encoder.layers.3\..*' is in "
    r"layer 3, so n_layers must be at least 4",
  ):
    tx.init(_bert(4))


def test_no_recognised_layer_is_an_error_naming_parameters():
  params = {"stem": {"conv": jnp.ones(2)}, "features": [jnp.ones(2)], "fc": jnp.ones(2)}
  with pytest.raises(
    ValueError,
    match=r"no parameter name is recognised as a layer.*"
    r"'fc', 'features.0', 'stem.conv'.*set_param_lr_fun",
  ):
    scale_by_layerwise_lr(0.75).init(params)


def test_custom_rule_without_depth_needs_n_layers():
  params = {"stem": jnp.ones(2), "fc": jnp.ones(2)}

  def rule(decay_rate, n_layers, name):
    return decay_rate ** (n_layers + 1) if name == "stem" else 1.0

  with pytest.raises(ValueError, match=r"set_param_lr_fun used n_layers.*pass n_layers="):
    scale_by_layerwise_lr(0.75, set_param_lr_fun=rule).init(params)
  # With n_layers given, the same rule runs.
  assert lr_ratios(params, 0.75, 2, rule) == {"stem": 0.75**3, "fc": 1.0}
  scale_by_layerwise_lr(0.75, 2, set_param_lr_fun=rule).init(params)


def test_custom_rule_that_changes_nothing_is_an_error():
  with pytest.raises(
    ValueError,
    match=r"layerwise_decay=0.75 but set_param_lr_fun gave every "
    r"parameter ratio 1.0",
  ):
    scale_by_layerwise_lr(0.75, set_param_lr_fun=lambda d, n, name: 1.0).init(_bert())


@pytest.mark.parametrize(
  "bad, error",
  [
    (-0.1, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    ("fast", TypeError),
    (None, TypeError),
    ([0.5], TypeError),
    (True, TypeError),
  ],
)
def test_bad_ratio_from_rule_is_refused_at_init_with_the_name(bad, error):
  def rule(decay_rate, n_layers, name):
    return bad if name == "classifier.bias" else decay_rate

  with pytest.raises(error, match=r"returned .* for parameter 'classifier.bias'"):
    scale_by_layerwise_lr(0.75, set_param_lr_fun=rule).init(_bert())


def test_rule_must_be_callable():
  with pytest.raises(TypeError, match="set_param_lr_fun must be a callable"):
    scale_by_layerwise_lr(0.75, set_param_lr_fun=0.5)
