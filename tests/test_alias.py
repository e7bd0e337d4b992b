"""adamwdl against optax.adamw and a NumPy restatement of the maths (SEMANTICS.md)."""

import math

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optax_adamwdl import adamwdl
from tests import reference
from tests.steps import run_steps

STEPS = 6


def _problem(shapes, seed=0):
  rng = np.random.default_rng(seed)
  init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [
    {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(STEPS)
  ]
  return init, grads


def _assert_matches_reference(ours, ref, init, bias_correction_slack=0.0):
  # float32 against float64: a few ulp of |p| per step, far below the step size.
  for k in init:
    tol = 8 * STEPS * np.spacing(np.float32(np.max(np.abs(ref[k])) + 1)) + bias_correction_slack
    np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=tol, err_msg=k)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("grad_scale", [1.0, 1e-5])  # small gradients: where eps sits matters
def test_matches_numpy_restatement(jit, grad_scale):
  shapes = reference.bert_paddle_names(3)
  init, grads = _problem(shapes)
  grads = jax.tree.map(lambda g: grad_scale * g, grads)
  schedule = optax.linear_schedule(3e-2, 1e-2, STEPS)
  tx = adamwdl(
    schedule,
    0.8,
    0.95,
    1e-6,
    weight_decay=0.1,
    layerwise_decay=0.7,
    apply_decay_param_fun=reference.paddle_no_decay,
  )
  ours, _ = run_steps(tx, init, grads, jit)
  ref = reference.numpy_adamwdl(
    init,
    lambda p, t: grads[t - 1],
    STEPS,
    lr=lambda t: float(schedule(t)),
    b1=0.8,
    b2=0.95,
    eps=1e-6,
    wd=0.1,
    ratios={k: reference.paddle_layerwise_lr_decay(0.7, 3, k) for k in init},
    decay_mask={k: reference.paddle_no_decay(k) for k in init},
  )
  _assert_matches_reference(ours, ref, init)


def test_decay_one_is_bitwise_optax_adamw_with_the_same_mask():
  shapes = reference.bert_paddle_names(2)
  init, grads = _problem(shapes, seed=1)
  mask = {k: reference.paddle_no_decay(k) for k in shapes}
  ours, _ = run_steps(adamwdl(1e-2, weight_decay=0.05, mask=mask), init, grads)
  theirs, _ = run_steps(optax.adamw(1e-2, weight_decay=0.05, mask=mask), init, grads)
  chex.assert_trees_all_equal(ours, theirs)


def test_mask_and_apply_decay_param_fun_agree():
  shapes = reference.bert_paddle_names(2)
  init, grads = _problem(shapes, seed=2)
  by_name = adamwdl(
    1e-2, weight_decay=0.3, layerwise_decay=0.8, apply_decay_param_fun=reference.paddle_no_decay
  )
  by_tree = adamwdl(
    1e-2,
    weight_decay=0.3,
    layerwise_decay=0.8,
    mask={k: reference.paddle_no_decay(k) for k in shapes},
  )
  by_fn = adamwdl(
    1e-2,
    weight_decay=0.3,
    layerwise_decay=0.8,
    mask=lambda p: {k: reference.paddle_no_decay(k) for k in p},
  )
  chex.assert_trees_all_equal(
    run_steps(by_name, init, grads)[0], run_steps(by_tree, init, grads)[0]
  )
  chex.assert_trees_all_equal(run_steps(by_name, init, grads)[0], run_steps(by_fn, init, grads)[0])
  everything = run_steps(adamwdl(1e-2, weight_decay=0.3, layerwise_decay=0.8), init, grads)[0]
  assert not np.allclose(
    everything["classifier.bias"], run_steps(by_name, init, grads)[0]["classifier.bias"]
  )


def test_weight_decay_schedule():
  shapes = {"encoder.layers.0.w": (3,), "encoder.layers.1.w": (3,), "head.w": (2,)}
  init, grads = _problem(shapes, seed=3)
  wd = optax.linear_schedule(0.0, 0.5, STEPS)
  ours, _ = run_steps(adamwdl(1e-2, weight_decay=wd, layerwise_decay=0.5), init, grads)
  # The NumPy reference takes a constant wd: check step by step instead.
  p = {k: np.float64(v) for k, v in init.items()}
  m = {k: 0.0 for k in p}
  v = {k: 0.0 for k in p}
  ratios = {"encoder.layers.0.w": 0.25, "encoder.layers.1.w": 0.5, "head.w": 1.0}
  for t in range(1, STEPS + 1):
    for k in p:
      g = grads[t - 1][k]
      m[k] = 0.9 * m[k] + 0.1 * g
      v[k] = 0.999 * v[k] + 0.001 * g * g
      adam = (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
      p[k] = p[k] - 1e-2 * ratios[k] * (adam + float(wd(t - 1)) * p[k])
  _assert_matches_reference(ours, p, init)


def test_mu_dtype_sets_the_first_moment_dtype():
  params = {"layers": [jnp.ones(3)] * 2}
  state = adamwdl(layerwise_decay=0.5, mu_dtype=jnp.bfloat16).init(params)
  assert jax.tree.leaves(optax.tree.get(state, "mu"))[0].dtype == jnp.bfloat16
  assert jax.tree.leaves(optax.tree.get(state, "nu"))[0].dtype == jnp.float32


def test_grad_clip_is_applied_to_raw_gradients_first():
  shapes = {"layers.0.w": (4,), "layers.1.w": (4,)}
  init, grads = _problem(shapes, seed=5)
  grads = jax.tree.map(lambda g: 100 * g, grads)
  clipped = [optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())[0] for g in grads]
  with_clip = run_steps(
    adamwdl(1e-2, layerwise_decay=0.5, grad_clip=optax.clip_by_global_norm(1.0), eps=1e-1),
    init,
    grads,
  )[0]
  pre_clipped = run_steps(adamwdl(1e-2, layerwise_decay=0.5, eps=1e-1), init, clipped)[0]
  chex.assert_trees_all_close(with_clip, pre_clipped, rtol=1e-6)
  unclipped = run_steps(adamwdl(1e-2, layerwise_decay=0.5, eps=1e-1), init, grads)[0]
  assert not np.allclose(with_clip["layers.0.w"], unclipped["layers.0.w"], rtol=1e-4)


# inject_hyperparams: every numeric argument is a hyperparameter in the state.


def test_inject_hyperparams_exposes_every_numeric_argument_and_changes_six():
  shapes = {
    "embeddings.w": (3,),
    "encoder.layers.0.w": (3,),
    "encoder.layers.1.w": (3,),
    "classifier.w": (2,),
  }
  init, grads = _problem(shapes, seed=6)
  tx = optax.inject_hyperparams(adamwdl)(
    learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, layerwise_decay=0.8
  )
  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)
  assert set(state.hyperparams) == {
    "learning_rate",
    "b1",
    "b2",
    "eps",
    "eps_root",
    "weight_decay",
    "layerwise_decay",
    "head_ratio",  # the numeric options of issue 7 are hyperparameters too
    "min_ratio",
  }
  update = jax.jit(tx.update)
  hyper = [
    dict(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, decay=0.8),
    dict(learning_rate=3e-2, b1=0.5, b2=0.9, eps=1e-3, weight_decay=0.4, decay=0.3),
  ]
  for t, g in enumerate(grads[:2]):
    h = hyper[t]
    state.hyperparams.update(
      learning_rate=jnp.float32(h["learning_rate"]),
      b1=jnp.float32(h["b1"]),
      b2=jnp.float32(h["b2"]),
      eps=jnp.float32(h["eps"]),
      weight_decay=jnp.float32(h["weight_decay"]),
      layerwise_decay=jnp.float32(h["decay"]),
    )
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)

  # NumPy: two steps, each with its own hyperparameters (moments carry over).
  p = {k: np.float64(v) for k, v in init.items()}
  m = {k: 0.0 for k in p}
  v = {k: 0.0 for k in p}
  for t, h in enumerate(hyper, start=1):
    d = h["decay"]
    ratios = {
      "embeddings.w": d**3,
      "encoder.layers.0.w": d**2,
      "encoder.layers.1.w": d,
      "classifier.w": 1.0,
    }
    for k in p:
      g = grads[t - 1][k]
      m[k] = h["b1"] * m[k] + (1 - h["b1"]) * g
      v[k] = h["b2"] * v[k] + (1 - h["b2"]) * g * g
      adam = (m[k] / (1 - h["b1"] ** t)) / (np.sqrt(v[k] / (1 - h["b2"] ** t)) + h["eps"])
      p[k] = p[k] - h["learning_rate"] * ratios[k] * (adam + h["weight_decay"] * p[k])
  for k in p:
    np.testing.assert_allclose(params[k], p[k], rtol=2e-6, atol=1e-7, err_msg=k)


def test_inject_hyperparams_with_a_rule_and_mask_in_static_args():
  tx = optax.inject_hyperparams(adamwdl, static_args=("set_param_lr_fun", "apply_decay_param_fun"))(
    learning_rate=0.1,
    weight_decay=0.0,
    layerwise_decay=0.5,
    n_layers=2,
    set_param_lr_fun=lambda d, n, name: d if name == "a" else 1.0,
    apply_decay_param_fun=lambda name: True,
  )
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  np.testing.assert_allclose(updates["a"], -0.05, rtol=1e-6)
  np.testing.assert_allclose(updates["b"], -0.1, rtol=1e-6)


# Hypothesis: random trees and hyperparameters against the NumPy statement.


@st.composite
def trees(draw):
  n_layers = draw(st.integers(1, 5))
  names = ["embeddings.word.weight"]
  names += [
    f"encoder.layers.{i}.w{j}" for i in range(n_layers) for j in range(draw(st.integers(1, 2)))
  ]
  names += draw(
    st.lists(st.sampled_from(["pooler.w", "classifier.w", "norm.bias"]), unique=True, max_size=3)
  )
  shapes = {n: draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)) for n in names}
  return shapes, n_layers


@settings(max_examples=12, deadline=None)
@given(
  tree=trees(),
  lr=st.floats(1e-4, 1e-1),
  b1=st.floats(0.0, 0.99),
  b2=st.floats(0.5, 0.9999),
  eps=st.floats(1e-8, 1e-2),
  wd=st.floats(0.0, 0.5),
  decay=st.floats(0.3, 1.2),
  extra_depth=st.integers(0, 3),
  seed=st.integers(0, 2**16),
)
def test_property_random_trees_match_numpy(tree, lr, b1, b2, eps, wd, decay, extra_depth, seed):
  shapes, depth = tree
  n_layers = depth + extra_depth
  init, grads = _problem(shapes, seed)
  mask = {k: not k.endswith("bias") for k in shapes}
  tx = adamwdl(
    lr, b1, b2, eps, weight_decay=wd, layerwise_decay=decay, n_layers=n_layers, mask=mask
  )
  ours, _ = run_steps(tx, init, grads)
  ratios = {k: reference.paddle_layerwise_lr_decay(decay, n_layers, k) for k in shapes}
  ref = reference.numpy_adamwdl(
    init,
    lambda p, t: grads[t - 1],
    STEPS,
    lr=lr,
    b1=b1,
    b2=b2,
    eps=eps,
    wd=wd,
    ratios=ratios,
    decay_mask=mask,
  )
  # In float32, 1 - b**t loses the digits of b**t: a relative error of about
  # 2**-24 / (1 - b) (6e-4 for b2 = 0.9999), which scales each step's size.
  # The step's direction m/sqrt(v) is below 3 here (6 steps).
  conditioning = 2**-24 * (1 / (1 - b1) + 1 / (1 - b2))
  slack = STEPS * lr * max(ratios.values()) * 3 * 2 * conditioning
  _assert_matches_reference(ours, ref, init, slack)


# Errors: at construction, naming the argument and its value.


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(b1=1.0), r"b1 must be finite and in \[0.0, 1.0\), got 1.0"),
    (dict(b1=-0.1), r"b1 must be finite and in \[0.0, 1.0\), got -0.1"),
    (dict(b2=1.5), r"b2 must be finite and in \[0.0, 1.0\), got 1.5"),
    (dict(b2=math.nan), r"b2 must be finite"),
    (dict(eps=-1e-8), r"eps must be finite and in \[0.0, inf\], got -1e-08"),
    (dict(weight_decay=math.inf), r"weight_decay must be finite.*got inf"),
    (dict(learning_rate=-1e-3), r"learning_rate must be finite and in \[0.0, inf\]"),
    (dict(learning_rate=math.nan), r"learning_rate must be finite"),
    (dict(layerwise_decay=0.0), r"layerwise_decay must be finite and in \(0.0, inf\]"),
    (dict(layerwise_decay=math.inf), r"layerwise_decay must be finite"),
    (dict(b1=np.array(1.2, np.float32)), r"b1 must be finite and in \[0.0, 1.0\)"),
    (dict(mask={}, apply_decay_param_fun=lambda n: True), r"mask .* or apply_decay_param_fun"),
  ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    adamwdl(**kwargs)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(b1="0.9"), r"b1 must be a real number or a 0-d real array, got '0.9'"),
    (dict(eps=None), r"eps must be a real number"),
    (dict(b2=np.array([0.99])), r"b2 must be a real number or a 0-d real array"),
    (dict(grad_clip=1.0), r"grad_clip must be an optax.GradientTransformation"),
    (dict(apply_decay_param_fun=True), r"apply_decay_param_fun must be a callable"),
  ],
)
def test_bad_argument_types_raise_type_error(kwargs, message):
  with pytest.raises(TypeError, match=message):
    adamwdl(**kwargs)


def test_apply_decay_param_fun_must_return_a_bool():
  tx = adamwdl(apply_decay_param_fun=lambda name: None)
  with pytest.raises(TypeError, match=r"must return True or False, got None for parameter 'w'"):
    tx.init({"w": jnp.ones(2)})


def test_traced_arguments_are_not_checked():
  # Under jit the values are unknown; construction must not fail on them.
  @jax.jit
  def build_and_step(b1, decay):
    tx = adamwdl(1e-2, b1=b1, layerwise_decay=decay)
    params = {"layers": [jnp.ones(2)] * 2}
    updates, _ = tx.update(params, tx.init(params), params)
    return updates

  assert np.all(np.isfinite(jax.tree.leaves(build_and_step(0.9, 0.5))))
