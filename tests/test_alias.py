"""adamwdl (``_alias``) against optax.adamw and the float64 maths (tests/reference.py): its options
pairwise, inside optax's wrappers, under jit and across processes, and its argument checks."""

import functools
import itertools
import math
import os
import pathlib
import subprocess
import sys
import textwrap

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
from tests.conftest import (
  SMALL,
  SMALL_ONES,
  assert_close,
  assert_dtypes,
  assert_finite,
  problem,
  raises,
)
from tests.steps import run_steps

STEPS = 6
LR, WD = 0.1, 0.1
REPO = pathlib.Path(__file__).resolve().parent.parent


def _assert_matches_reference(ours, ref, init, bias_correction_slack=0.0):
  # float32 against float64: a few ulp of |p| per step, far below the step size.
  for k in init:
    tol = 8 * STEPS * np.spacing(np.float32(np.max(np.abs(ref[k])) + 1)) + bias_correction_slack
    np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=tol, err_msg=k)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("grad_scale", [1.0, 1e-5])  # small gradients: where eps sits matters
def test_matches_numpy_restatement(jit, grad_scale):
  shapes = reference.bert_paddle_names(3)
  init, grads = problem(shapes, STEPS)
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
  ref, _, _ = reference.run(
    init,
    grads,
    {k: reference.paddle_layerwise_lr_decay(0.7, 3, k) for k in init},
    lr=lambda t: float(schedule(t)),
    b1=0.8,
    b2=0.95,
    eps=1e-6,
    wd=0.1,
    decay={k: reference.paddle_no_decay(k) for k in init},
  )
  _assert_matches_reference(ours, ref, init)


def test_decay_one_is_bitwise_optax_adamw_with_the_same_mask():
  shapes = reference.bert_paddle_names(2)
  init, grads = problem(shapes, STEPS, seed=1)
  mask = {k: reference.paddle_no_decay(k) for k in shapes}
  ours, _ = run_steps(adamwdl(1e-2, weight_decay=0.05, mask=mask), init, grads)
  theirs, _ = run_steps(optax.adamw(1e-2, weight_decay=0.05, mask=mask), init, grads)
  chex.assert_trees_all_equal(ours, theirs)


def test_mask_and_apply_decay_param_fun_agree():
  shapes = reference.bert_paddle_names(2)
  init, grads = problem(shapes, STEPS, seed=2)
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
  init, grads = problem(shapes, STEPS, seed=3)
  wd = optax.linear_schedule(0.0, 0.5, STEPS)
  ours, _ = run_steps(adamwdl(1e-2, weight_decay=wd, layerwise_decay=0.5), init, grads)
  ratios = {"encoder.layers.0.w": 0.25, "encoder.layers.1.w": 0.5, "head.w": 1.0}
  p, _, _ = reference.run(init, grads, ratios, lr=1e-2, wd=lambda t: float(wd(t)))
  _assert_matches_reference(ours, p, init)


def test_mu_dtype_sets_the_first_moment_dtype():
  params = {"layers": [jnp.ones(3)] * 2}
  state = adamwdl(layerwise_decay=0.5, mu_dtype=jnp.bfloat16).init(params)
  assert jax.tree.leaves(optax.tree.get(state, "mu"))[0].dtype == jnp.bfloat16
  assert jax.tree.leaves(optax.tree.get(state, "nu"))[0].dtype == jnp.float32


def test_grad_clip_is_applied_to_raw_gradients_first():
  shapes = {"layers.0.w": (4,), "layers.1.w": (4,)}
  init, grads = problem(shapes, STEPS, seed=5)
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


# Every documented combination works: options pairwise, float32 and bfloat16, bare and inside
# optax.apply_if_finite and optax.MultiSteps, under jit.

OPTIONS = {
  "lazy_mode": {"lazy_mode": True},
  "multi_precision": {"multi_precision": True},
  # With layerwise_decay=0.5 and two layers: embeddings 0.125, layers 0.25 and 0.5, head 1.
  "freeze_below": {"freeze_below": 0.3},  # freezes the embeddings and layer 0
  "grad_clip": {"grad_clip": optax.clip_by_global_norm(1.0)},
  "stacks": {"stacks": ["encoder", "decoder"]},
  "scan_axes": {"scan_axes": {"encoderblock": 0}},
  "decay_follows_ratio": {"decay_follows_ratio": False},
  "min_ratio": {"min_ratio": 0.2},  # lifts the embeddings
}
PAIRS = list(itertools.combinations(OPTIONS, 2))


@functools.cache
def _fast_compile():
  """XLA:CPU options that compile these small steps several times faster, with the same values
  checked here: compile time is what these tests spend (measured 3x). None where unknown."""
  options = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
  try:
    jax.jit(lambda x: x + 1, compiler_options=options)(jnp.zeros(()))
  except jax.errors.JaxRuntimeError:
    return None
  return options


def _grid_shapes(names):
  """Embeddings, a head and a stack of two layers: a list ``layers`` of dicts, or with
  scan_axes one leaf ``encoderblock`` stacking them on axis 0; with stacks, one such stack under
  "encoder" and one under "decoder"."""

  def stack():
    if "scan_axes" in names:
      return {"encoderblock": {"w": (2, 2, 2)}}
    return {"layers": [{"w": (2, 2)} for _ in range(2)]}

  shapes = {"embeddings": {"word": (4, 2)}, "head": {"w": (2,)}}
  if "stacks" in names:
    return {**shapes, "encoder": stack(), "decoder": stack()}
  return {**shapes, **stack()}


def _grid_problem(names, dtype):
  init, (grads,) = problem(_grid_shapes(names), 1, seed=3, dtype=dtype, init_range=(1.0, 2.0))
  params, grads = jax.tree.map(jnp.asarray, init), jax.tree.map(jnp.asarray, grads)
  grads["embeddings"]["word"] = grads["embeddings"]["word"].at[1].set(0)  # a lazy row
  bad = dict(grads, head={"w": grads["head"]["w"].at[0].set(jnp.inf)})
  return params, grads, bad


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("names", PAIRS, ids=["+".join(p) for p in PAIRS])
def test_options_pairwise_bare_apply_if_finite_and_multisteps_under_jit(names, dtype):
  options = {k: v for name in names for k, v in OPTIONS[name].items()}
  params, grads, bad = _grid_problem(names, dtype)
  tx = adamwdl(LR, weight_decay=WD, layerwise_decay=0.5, **options)
  tol = 1e-6 if dtype == jnp.float32 else 2**-7  # one bfloat16 ulp in [1, 2)
  masters = ("master",) if "multi_precision" in names else ()

  # Bare.
  updates, bare_state = jax.jit(tx.update, compiler_options=_fast_compile())(
    grads, tx.init(params), params
  )
  assert_dtypes(updates, params, "update")
  assert_finite(updates, "update")
  bare = optax.apply_updates(params, updates)
  assert_dtypes(bare, params, "parameter")
  moment_dtype = jnp.float32 if masters else dtype
  for moment in ("mu", "nu"):
    for x in jax.tree.leaves(optax.tree.get(bare_state, moment)):
      assert x.dtype == moment_dtype, moment
  assert not np.array_equal(bare["head"]["w"], params["head"]["w"])  # it does train

  # Inside apply_if_finite inside MultiSteps, as the README stacks them: one compiled step covers
  # both wrappers (compile time is what these tests spend).
  wrapped = optax.MultiSteps(optax.apply_if_finite(tx, 3), every_k_schedule=2)
  step = jax.jit(wrapped.update, compiler_options=_fast_compile())
  updates, state = step(grads, wrapped.init(params), params)
  assert_dtypes(updates, params, "update")
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  # The mean of two equal gradients is that gradient: the bare step.
  updates, state = step(grads, state, params)
  assert_dtypes(updates, params, "update")
  stepped = optax.apply_updates(params, updates)
  assert_dtypes(stepped, params, "parameter")
  chex.assert_trees_all_close(stepped, bare, rtol=tol, atol=tol)
  for field in ("mu", "nu", *masters):
    chex.assert_trees_all_close(
      optax.tree.get(state, field), optax.tree.get(bare_state, field), rtol=tol, atol=tol
    )

  # Two micro-steps with an inf gradient: apply_if_finite skips the step, bit for bit.
  before = state
  for _ in range(2):
    updates, state = step(bad, state, stepped)
    assert_dtypes(updates, params, "update")
    chex.assert_trees_all_equal(optax.apply_updates(stepped, updates), stepped)
  assert int(optax.tree.get(state, "notfinite_count")) == 1
  for field in ("mu", "nu", *masters):
    chex.assert_trees_all_equal(
      optax.tree.get(state, field), optax.tree.get(before, field), custom_message=field
    )
  chex.assert_trees_all_equal(state.inner_opt_state.inner_state, before.inner_opt_state.inner_state)


def test_eager_and_jitted_training_agree():
  init, grads = problem(SMALL, 4, seed=13, init_range=(1.0, 2.0))
  tx = adamwdl(LR, weight_decay=WD, layerwise_decay=0.5, lazy_mode=True, min_ratio=0.1)
  eager, eager_state = run_steps(tx, init, grads, jit=False)
  jitted, jitted_state = run_steps(tx, init, grads, jit=True)
  # XLA may fuse a multiply-add under jit: a few ulps, not bit for bit.
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(eager_state, jitted_state, rtol=1e-6, atol=1e-7)
  ratios = {k: max(reference.ladder(k, 0.5, 3), 0.1) for k in SMALL}
  assert_close(eager, reference.run(init, grads, ratios, lr=LR, wd=WD, lazy=True)[0])


_TRAINING_LOOP = textwrap.dedent(
  """
  import hashlib
  import jax, jax.numpy as jnp, numpy as np, optax
  from optax_adamwdl import adamwdl

  rng = np.random.default_rng(0)
  shapes = {"embeddings": (6, 3), "layers": [(3, 3)] * 3, "head": (3, 2)}
  is_shape = lambda x: isinstance(x, tuple)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=is_shape)
  params["layers"][1] = params["layers"][1].astype(jnp.bfloat16)
  x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)

  def loss(p):
    h = x @ p["embeddings"]
    for w in p["layers"]:
      h = jnp.tanh(h @ w.astype(jnp.float32))
    return jnp.sum((h @ p["head"]) ** 2)

  tx = adamwdl(optax.cosine_decay_schedule(1e-2, 20), weight_decay=0.05, layerwise_decay=0.7,
               multi_precision=True, lazy_mode=True, min_ratio=0.3)

  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p, s = params, tx.init(params)
  run = jax.jit(step)
  for _ in range(20):
    p, s = run(p, s)
  leaves = jax.tree.leaves((p, s))
  print(hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in leaves)).hexdigest(),
        sum(x.size for x in leaves))
  """
)


@pytest.mark.slow
def test_training_is_bit_for_bit_deterministic_across_processes():
  # Two processes with different hash seeds: an order that depends on set or dict hashing (of
  # names, ratios) would show as different bytes.
  runs = [
    subprocess.Popen(
      [sys.executable, "-c", _TRAINING_LOOP],
      cwd=REPO,
      env={**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(REPO)},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for seed in (1, 2)
  ]
  outputs = []
  for run in runs:
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    outputs.append(out.split())
  assert len(outputs[0]) == 2 and int(outputs[0][1]) > 0 and outputs[0] == outputs[1]


# inject_hyperparams: every numeric argument is a hyperparameter in the state.


def test_inject_hyperparams_exposes_every_numeric_argument_and_changes_six():
  shapes = {
    "embeddings.w": (3,),
    "encoder.layers.0.w": (3,),
    "encoder.layers.1.w": (3,),
    "classifier.w": (2,),
  }
  init, grads = problem(shapes, STEPS, seed=6)
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

  # The maths: two steps, each with its own hyperparameters (moments carry over).
  p = {k: reference.wide(v) for k, v in init.items()}
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
      p[k], m[k], v[k] = reference.adam_step(
        p[k],
        m[k],
        v[k],
        reference.wide(grads[t - 1][k]),
        t,
        ratios[k],
        lr=h["learning_rate"],
        b1=h["b1"],
        b2=h["b2"],
        eps=h["eps"],
        wd=h["weight_decay"],
      )
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
  init, grads = problem(shapes, STEPS, seed)
  mask = {k: not k.endswith("bias") for k in shapes}
  tx = adamwdl(
    lr, b1, b2, eps, weight_decay=wd, layerwise_decay=decay, n_layers=n_layers, mask=mask
  )
  ours, _ = run_steps(tx, init, grads)
  ratios = {k: reference.paddle_layerwise_lr_decay(decay, n_layers, k) for k in shapes}
  ref, _, _ = reference.run(init, grads, ratios, lr=lr, b1=b1, b2=b2, eps=eps, wd=wd, decay=mask)
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


COMPLEX = {
  "learning_rate": 0.1 + 0.1j,
  "b1": 0.9 + 0j,
  "eps": 1e-8 + 1e-9j,
  "weight_decay": 0.01j,
  "layerwise_decay": 0.8 + 0.1j,
  "head_ratio": 1 + 1j,
  "min_ratio": 0.1j,
  "freeze_below": 0.1 + 0j,
}


@pytest.mark.parametrize("name", list(COMPLEX))
def test_a_complex_hyperparameter_is_refused_naming_it(name):
  # A complex number is not a real number: a TypeError, as for any argument of the wrong type.
  options = {"learning_rate": LR, "layerwise_decay": 0.8, name: COMPLEX[name]}
  raises(TypeError, lambda: adamwdl(**options).init(SMALL_ONES), name)


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
