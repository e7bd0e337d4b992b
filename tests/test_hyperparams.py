"""Hyperparameters as 0-d arrays and schedules, inject_hyperparams (bfloat16 hyperparameters and
static_args included), AMP skipping, gradient accumulation, and custom set_param_lr_fun rules."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl, lr_ratios
from tests import reference
from tests.conftest import SMALL, SMALL_ONES, assert_close, assert_dtypes, problem, raises
from tests.steps import run_steps

SHAPES = {
  "embeddings.w": (3,),
  "encoder.layers.0.w": (2, 2),
  "encoder.layers.1.w": (3,),
  "classifier.w": (2,),
}
LR, WD = 0.1, 0.1
STATIC = ("layerwise_decay", "n_layers", "head_ratio", "min_ratio", "freeze_below")


def test_zero_d_arrays_equal_python_floats():
  init, grads = problem(SHAPES, 4, seed=0)
  floats = adamwdl(1e-2, 0.8, 0.99, 1e-6, weight_decay=0.1, layerwise_decay=0.7)
  arrays = adamwdl(
    jnp.float32(1e-2),
    jnp.float32(0.8),
    np.float32(0.99),
    jnp.asarray(1e-6),
    weight_decay=jnp.float32(0.1),
    layerwise_decay=jnp.float32(0.7),
  )
  # Python floats are rounded to float32 after arithmetic like 1 - b1, arrays before it.
  chex.assert_trees_all_close(
    run_steps(floats, init, grads)[0], run_steps(arrays, init, grads)[0], rtol=1e-6, atol=1e-7
  )


@pytest.mark.parametrize("jit", [False, True])  # eagerly, the decay is concrete at every step
def test_inject_hyperparams_anneals_layerwise_decay_with_a_schedule(jit):
  steps = 5
  init, grads = problem(SHAPES, steps, seed=1)
  decay = optax.linear_schedule(0.5, 1.0, steps - 1)
  tx = optax.inject_hyperparams(adamwdl)(
    learning_rate=1e-2, weight_decay=0.1, layerwise_decay=decay
  )
  params, state = run_steps(tx, init, grads, jit)
  assert float(state.hyperparams["layerwise_decay"]) == pytest.approx(1.0)

  def ratios(t):  # at the 0-based step t
    return {k: reference.paddle_layerwise_lr_decay(float(decay(t)), 2, k) for k in SHAPES}

  p, _, _ = reference.run(init, grads, ratios, lr=1e-2, wd=0.1)
  for k in p:
    np.testing.assert_allclose(params[k], p[k], rtol=2e-6, atol=2e-7, err_msg=k)


def test_apply_if_finite_skips_a_bad_step_entirely():
  init, grads = problem(SHAPES, 4, seed=2)
  bad = dict(grads[2])
  bad["encoder.layers.0.w"] = np.full((2, 2), np.inf, np.float32)
  tx = optax.apply_if_finite(adamwdl(1e-2, layerwise_decay=0.6, multi_precision=True), 3)
  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g in grads[:2]:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  before = (params, state.inner_state)
  updates, state = update(bad, state, params)
  params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal((params, state.inner_state), before)  # params and moments
  assert int(state.notfinite_count) == 1 and int(state.total_notfinite) == 1
  # The next good step is the step the run would have taken without the bad one.
  updates, state = update(grads[3], state, params)
  skipped = optax.apply_updates(params, updates)
  clean, _ = run_steps(adamwdl(1e-2, layerwise_decay=0.6), init, [grads[0], grads[1], grads[3]])
  chex.assert_trees_all_close(skipped, clean, rtol=1e-6, atol=1e-7)


def test_multi_steps_accumulates_then_takes_one_adamwdl_step():
  init, grads = problem(SHAPES, 6, seed=3)
  k = 3
  tx = optax.MultiSteps(adamwdl(1e-2, layerwise_decay=0.6), every_k_schedule=k)
  accumulated, _ = run_steps(tx, init, grads)
  means = [
    jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *grads[i : i + k])
    for i in range(0, len(grads), k)
  ]
  direct, _ = run_steps(adamwdl(1e-2, layerwise_decay=0.6), init, means)
  chex.assert_trees_all_close(accumulated, direct, rtol=1e-5, atol=1e-7)


def test_inject_hyperparams_with_bfloat16_zero_d_hyperparameters():
  init, grads = problem(SMALL, 1, seed=8, init_range=(1.0, 2.0))
  init = {k: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float32) for k, v in init.items()}
  params = {k: jnp.asarray(v, jnp.bfloat16) for k, v in init.items()}
  g = {k: jnp.asarray(v, jnp.bfloat16) for k, v in grads[0].items()}
  # b2=0.99: optax.inject_hyperparams casts the hyperparameters to the parameters' dtype, and
  # the default 0.999 rounds to 1.0 in bfloat16 (then Adam's bias correction divides by 0).
  tx = optax.inject_hyperparams(adamwdl)(
    learning_rate=LR, b2=0.99, weight_decay=WD, layerwise_decay=0.5
  )
  state = tx.init(params)
  assert state.hyperparams["layerwise_decay"].dtype == jnp.bfloat16  # what this test is about
  # The reference uses the same bfloat16-rounded hyperparameters.
  hyper = {k: float(v) for k, v in state.hyperparams.items()}
  for update in (tx.update, jax.jit(tx.update)):
    updates, _ = update(g, state, params)
    assert_dtypes(updates, params, "update")
    for k in SMALL:
      ratio = reference.ladder(k, hyper["layerwise_decay"], 3)
      want, _, _ = reference.adam_update(
        reference.wide(init[k]),
        0.0,
        0.0,
        reference.wide(np.asarray(g[k], np.float32)),
        1,
        ratio,
        lr=hyper["learning_rate"],
        b1=hyper["b1"],
        b2=hyper["b2"],
        eps=hyper["eps"],
        wd=hyper["weight_decay"],
      )
      # bfloat16 arithmetic: a few roundings of 2**-9 each.
      np.testing.assert_allclose(np.asarray(updates[k], np.float32), want, rtol=2**-5, err_msg=k)
  # The same 0-d bfloat16 hyperparameters given directly.
  direct = adamwdl(**state.hyperparams)
  chex.assert_trees_all_equal(
    direct.update(g, direct.init(params), params)[0], tx.update(g, state, params)[0]
  )


def test_freeze_below_under_inject_hyperparams_names_the_static_args_that_work():
  init, grads = problem(SMALL, 1, seed=9, init_range=(1.0, 2.0))
  init = jax.tree.map(jnp.asarray, init)
  options = dict(learning_rate=LR, weight_decay=WD, layerwise_decay=0.5, freeze_below=0.1)
  # Refused at init, where inject_hyperparams builds adamwdl, not at the first update: a
  # TypeError, since the ladder's numbers arrive as arrays where Python numbers are needed.
  without_static_args = optax.inject_hyperparams(adamwdl)(**options)
  message = raises(TypeError, lambda: without_static_args.init(init), "static_args")
  for name in STATIC:
    assert name in message, (name, message)
  tx = optax.inject_hyperparams(adamwdl, static_args=STATIC)(**options)
  state = tx.init(init)
  assert set(state.hyperparams) >= {"learning_rate", "weight_decay"}
  updates, _ = jax.jit(tx.update)(grads[0], state, init)
  np.testing.assert_array_equal(updates["embeddings.w"], 0.0)  # 0.5 ** 4 < 0.1: frozen
  ratios = {k: reference.ladder(k, 0.5, 3) for k in SMALL} | {"embeddings.w": 0.0}
  want, _, _ = reference.run(init, grads, ratios, lr=LR, wd=WD)
  assert_close(optax.apply_updates(init, updates), want)


def test_apply_decay_param_fun_without_static_args_points_at_static_args():
  # inject_hyperparams calls every callable it is not told is static as a schedule, with the step
  # count: a rule such as `"bias" not in name` then fails inside the rule, in optax's code, before
  # adamwdl is called. A rule that returns something (here `count != "classifier.w"`, True) hands
  # adamwdl a non-callable apply_decay_param_fun, which must point at static_args: a TypeError,
  # as for any argument of the wrong type.
  tx = optax.inject_hyperparams(adamwdl)(
    learning_rate=LR, apply_decay_param_fun=lambda name: name != "classifier.w"
  )
  message = raises(TypeError, lambda: tx.init(SMALL_ONES), "static_args")
  assert "apply_decay_param_fun" in message


# Custom set_param_lr_fun rules.


def test_paddle_docstring_rule_ported():
  # PaddleNLP's AdamWDL docstring: a rule giving weights decay_rate ** 0.5 on a Linear.
  def simple_lr_setting(decay_rate, n_layers, name):
    return decay_rate**0.5 if "weight" in name else 1.0

  params = {"weight": jnp.ones((10, 10)), "bias": jnp.ones(10)}
  ratios = lr_ratios(params, 0.8, n_layers=12, set_param_lr_fun=simple_lr_setting)
  assert ratios == {"weight": 0.8**0.5, "bias": 1.0}
  tx = adamwdl(
    1e-4, weight_decay=0.0, layerwise_decay=0.8, n_layers=12, set_param_lr_fun=simple_lr_setting
  )
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["weight"], -1e-4 * 0.8**0.5, rtol=1e-5)
  np.testing.assert_allclose(updates["bias"], -1e-4, rtol=1e-5)


def test_paddle_docstring_rule_without_n_layers():
  def simple_lr_setting(decay_rate, n_layers, name):  # ignores n_layers
    return decay_rate**0.5 if "weight" in name else 1.0

  init, grads = problem({"weight": (10, 10), "bias": (10,)}, 1, seed=12, init_range=(1.0, 2.0))
  ratios = {"weight": 0.8**0.5, "bias": 1.0}
  assert lr_ratios(init, 0.8, set_param_lr_fun=simple_lr_setting) == pytest.approx(ratios)
  tx = adamwdl(0.1, layerwise_decay=0.8, set_param_lr_fun=simple_lr_setting)
  updates, _ = tx.update(grads[0], tx.init(init), init)
  assert_close(
    optax.apply_updates(init, updates), reference.run(init, grads, ratios, lr=0.1, wd=0.01)[0]
  )


def test_paddle_style_rule_that_mutates_and_returns_none_is_refused():
  # The docstring's original form sets param.optimize_attr and returns None.
  def mutating_rule(decay_rate, n_layers, name):
    ratio = decay_rate**0.5 if "weight" in name else 1.0
    del ratio

  with pytest.raises(TypeError, match=r"returned None for parameter 'bias'"):
    adamwdl(layerwise_decay=0.8, n_layers=12, set_param_lr_fun=mutating_rule).init(
      {"weight": jnp.ones(2), "bias": jnp.ones(2)}
    )


def test_stagewise_rule_for_convnext_style_trees():
  params = {
    "stem": {"conv": jnp.ones(2)},
    "stages": [{"blocks": [{"w": jnp.ones(2)}] * 3} for _ in range(4)],
    "head": jnp.ones(2),
  }

  def stagewise(decay_rate, n_layers, name):
    if name.startswith("stem."):
      return decay_rate ** (n_layers + 1)
    if name.startswith("stages."):
      return decay_rate ** (n_layers - int(name.split(".")[1]))
    return 1.0

  ratios = lr_ratios(params, 0.5, n_layers=4, set_param_lr_fun=stagewise)
  assert ratios["stem"]["conv"] == 0.5**5
  assert [s["blocks"][2]["w"] for s in ratios["stages"]] == [0.5**4, 0.5**3, 0.5**2, 0.5]
  assert ratios["head"] == 1.0


def test_rule_with_a_separate_head_multiplier():
  from optax_adamwdl import layerwise_lr_decay

  def with_head(decay_rate, n_layers, name):
    if name.startswith("classifier"):
      return 10.0
    return layerwise_lr_decay(decay_rate, n_layers, name)

  params = {k: jnp.ones(s) for k, s in SHAPES.items()}
  ratios = lr_ratios(params, 0.5, set_param_lr_fun=with_head)
  assert ratios == {
    "embeddings.w": 0.125,
    "encoder.layers.0.w": 0.25,
    "encoder.layers.1.w": 0.5,
    "classifier.w": 10.0,
  }


def test_one_compiled_step_serves_every_injected_layerwise_decay():
  # A sweep over layerwise_decay sets it in the state; the ratios follow it with no recompile,
  # as long as the value is float32 like the state's (a weakly typed Python float compiles twice).
  params = {
    "embeddings": jnp.ones((4, 2)),
    "layers": [jnp.ones(2), jnp.ones(2)],
    "head": jnp.ones(2),
  }
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax.inject_hyperparams(adamwdl)(learning_rate=1.0, b1=0.0, b2=0.0, layerwise_decay=1.0)
  update = jax.jit(tx.update)
  for decay in (0.9, 0.5):
    state = tx.init(params)
    state.hyperparams["layerwise_decay"] = jnp.asarray(decay, jnp.float32)
    for _ in range(2):
      updates, state = update(grads, state, params)
    # With b1 = b2 = 0 an Adam step is the sign of the gradient, and the decay follows the ratio:
    # layer 0 of 2 moves by -decay**2 * (1 + wd * p), p = 1.
    want = -(np.float32(decay) ** 2) * np.float32(1.01)
    np.testing.assert_allclose(updates["layers"][0], want, rtol=1e-6)
  assert update._cache_size() == 1
