"""scale_by_layerwise_lr (``_scale``) and lr_ratios: ratios, traced decay, ratios of 0, ratios that
float32 cannot hold, complex parameters, and every error path."""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from optax_adamwdl import adamwdl, lr_ratios, scale_by_layerwise_lr
from tests import reference
from tests.conftest import (
  QUICK,
  SMALL,
  SMALL_ONES,
  assert_close,
  assert_dtypes,
  assert_finite,
  problem,
  raises,
)
from tests.steps import run_steps

LR, WD = 0.1, 0.1


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


def _zero_for_embeddings(decay, n_layers, name):
  return 0.0 if name.startswith("embeddings") else 1.0


ZERO_RATIO = {  # the three ways the spec gives to a ratio of 0: (that parameter, the options)
  "freeze_below": ("embeddings.w", {"layerwise_decay": 0.5, "freeze_below": 0.1}),  # 0.5**4
  "head_ratio": ("classifier.w", {"layerwise_decay": 0.5, "head_ratio": 0.0}),
  "set_param_lr_fun": (
    "embeddings.w",
    {"layerwise_decay": 0.5, "n_layers": 3, "set_param_lr_fun": _zero_for_embeddings},
  ),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("how", list(ZERO_RATIO))
def test_a_parameter_with_ratio_zero_gets_exactly_zero_even_from_inf_and_nan(how, jit):
  init, grads = problem(SMALL, 2, seed=5, init_range=(1.0, 2.0))
  frozen, options = ZERO_RATIO[how]
  for g in grads:
    g[frozen] = np.array([np.inf, -np.inf, np.nan][: g[frozen].size], np.float32)
  tx = adamwdl(LR, weight_decay=WD, **options)
  params, state = run_steps(tx, init, grads, jit)  # bare adamwdl, no apply_if_finite
  np.testing.assert_array_equal(params[frozen], init[frozen])
  updates, _ = (jax.jit(tx.update) if jit else tx.update)(grads[1], state, params)
  np.testing.assert_array_equal(updates[frozen], np.zeros_like(init[frozen]))
  others = {k: v for k, v in params.items() if k != frozen}
  assert_finite(others, "parameter")
  if how == "set_param_lr_fun":
    ratios = {k: 1.0 for k in SMALL} | {frozen: 0.0}
  else:
    ratios = {k: reference.ladder(k, 0.5, 3, head=options.get("head_ratio", 1.0)) for k in SMALL}
    ratios[frozen] = 0.0
  want, _, _ = reference.run(init, grads, ratios, lr=LR, wd=WD)
  assert_close(others, {k: want[k] for k in others})


@pytest.mark.filterwarnings("error")  # jax's "Casting from complex to real" warning included
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_complex_parameters_train_without_a_complex_warning(jit):
  # Complex and real leaves in one tree: a factor built in the widest (complex) dtype and cast
  # onto the real leaves' ratios is what warned.
  rng = np.random.default_rng(11)
  complex_leaves = ("embeddings.w", "encoder.layers.1.w")

  def draw(k, s):
    x = rng.normal(size=s)
    if k in complex_leaves:
      return (x + 1j * rng.normal(size=s)).astype(np.complex64)
    return x.astype(np.float32)

  init = {k: draw(k, s) for k, s in SMALL.items()}
  grads = [{k: draw(k, s) for k, s in SMALL.items()} for _ in range(2)]
  tx = adamwdl(LR, weight_decay=WD, layerwise_decay=0.5)
  params, _ = run_steps(tx, init, grads, jit)
  assert_dtypes(params, init, "parameter")
  ratios = {k: reference.ladder(k, 0.5, 3) for k in SMALL}
  assert_close(params, reference.run(init, grads, ratios, lr=LR, wd=WD)[0])


# Ratios that float32 cannot hold are refused at init, naming the parameter.


@pytest.mark.parametrize(
  "options",
  [
    {"layerwise_decay": 0.8, "head_ratio": 1e39},  # above float32's largest, 3.4e38
    {
      "layerwise_decay": 0.8,
      "set_param_lr_fun": lambda decay, n, name: 1e300 if name.startswith("classifier") else 1.0,
    },
  ],
  ids=["head_ratio", "set_param_lr_fun"],
)
def test_a_ratio_that_overflows_the_parameters_dtype_is_refused(options):
  raises(ValueError, lambda: adamwdl(LR, **options).init(SMALL_ONES), r"classifier\.w")


DEEP = {"embeddings.w": np.ones(1, np.float32)}
DEEP |= {f"encoder.layers.{i}.w": np.ones(1, np.float32) for i in range(200)}
DEEP |= {"classifier.w": np.ones(1, np.float32)}


def _assert_names_vanishing_ratios(message, decay, depth):
  """The message names parameters, each of whose float32 ratio is 0 or subnormal."""
  named = re.findall(r"embeddings\.w|encoder\.layers\.\d+\.w", message)
  tiny = np.finfo(np.float32).tiny
  assert named and all(np.float32(reference.ladder(n, decay, depth)) < tiny for n in named), message


def test_a_ratio_that_underflows_to_zero_is_refused_and_min_ratio_or_freeze_below_work():
  # 0.001 ** (200 - i) is exactly 0 in float32 for the embeddings and layers 0 to 184.
  message = raises(
    ValueError,
    lambda: adamwdl(LR, layerwise_decay=0.001).init(DEEP),
    r"min_ratio|freeze_below",
  )
  _assert_names_vanishing_ratios(message, 0.001, 200)
  grads = {k: np.ones_like(v) for k, v in DEEP.items()}
  # What the message suggests works: a floor, or freezing what was meant to be frozen.
  tx = adamwdl(LR, weight_decay=0.0, layerwise_decay=0.001, min_ratio=1e-6)
  updates, _ = tx.update(grads, tx.init(DEEP), DEEP)
  np.testing.assert_allclose(updates["encoder.layers.0.w"], -LR * 1e-6, rtol=1e-5)
  np.testing.assert_allclose(updates["encoder.layers.199.w"], -LR * 1e-3, rtol=1e-5)
  tx = adamwdl(LR, weight_decay=0.0, layerwise_decay=0.001, freeze_below=1e-6)
  updates, _ = tx.update(grads, tx.init(DEEP), DEEP)
  for k in ("embeddings.w", "encoder.layers.0.w", "encoder.layers.197.w"):  # 1e-9 and below
    np.testing.assert_array_equal(updates[k], 0.0, err_msg=k)
  np.testing.assert_allclose(updates["encoder.layers.199.w"], -LR * 1e-3, rtol=1e-5)


@settings(max_examples=20, **QUICK)
@given(decay=st.floats(1e-3, 0.9), depth=st.integers(1, 60))
@example(decay=0.01, depth=30)  # 1e-62: 0 in float32
@example(decay=0.1, depth=30)  # 1e-31: a normal float32
@example(decay=0.1, depth=39)  # 1e-40: subnormal in float32
def test_ratios_are_refused_exactly_when_they_vanish_in_float32(decay, depth):
  # A subnormal ratio vanishes too: XLA:CPU flushes subnormals to zero, so its updates would be 0
  # (and where kept it has a few bits of precision at most). Refused below float32's normal range,
  # as 0 is, and accepted from it.
  params = {"embeddings.w": np.ones(1, np.float32)}
  params |= {f"encoder.layers.{i}.w": np.ones(1, np.float32) for i in range(depth)}
  smallest = decay ** (depth + 1)  # the embeddings'
  tx = adamwdl(LR, layerwise_decay=decay)
  if smallest < np.finfo(np.float32).tiny:
    message = raises(ValueError, lambda: tx.init(params), r"min_ratio|freeze_below")
    _assert_names_vanishing_ratios(message, decay, depth)
  else:  # normal in float32: nothing to refuse
    tx.init(params)


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


@pytest.mark.parametrize("n_layers", [math.nan, math.inf], ids=["nan", "inf"])
def test_n_layers_nan_or_inf_is_refused(n_layers):
  # A float, but not a positive integer: a ValueError, as for 2.5.
  raises(
    ValueError,
    lambda: adamwdl(LR, layerwise_decay=0.8, n_layers=n_layers).init(SMALL_ONES),
    "n_layers",
  )
  raises(ValueError, lambda: lr_ratios(SMALL_ONES, 0.8, n_layers=n_layers), "n_layers")


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


def test_a_rule_that_uses_n_layers_when_none_can_be_inferred_says_n_layers():
  def needs_depth(decay_rate, n_layers, name):
    return decay_rate ** (n_layers - 1) if "weight" in name else 1.0

  params = {"weight": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}
  tx = adamwdl(0.1, layerwise_decay=0.8, set_param_lr_fun=needs_depth)
  raises(ValueError, lambda: tx.init(params), "n_layers")
  raises(ValueError, lambda: lr_ratios(params, 0.8, set_param_lr_fun=needs_depth), "n_layers")


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


def test_a_rule_returning_a_complex_ratio_is_refused():
  # A complex ratio is not a real number: a TypeError, as for "fast" or None above.
  tx = adamwdl(
    LR, layerwise_decay=0.8, n_layers=3, set_param_lr_fun=lambda decay, n, name: complex(decay, 1)
  )
  raises(TypeError, lambda: tx.init(SMALL_ONES), "set_param_lr_fun")


def test_rule_must_be_callable():
  with pytest.raises(TypeError, match="set_param_lr_fun must be a callable"):
    scale_by_layerwise_lr(0.75, set_param_lr_fun=0.5)
