"""Soundness (issue 12): no silent wrong result and no crash in any documented combination.

One test (or one property) per case of the issue's sections 1, 2, 4, 5 and "Also found", each
checking numbers against an independent statement of the maths (NumPy in float64, below) or an
exact error naming the argument or the parameter. Section 3 (optax's own conformance suite) is
``tests/test_optax_conformance.py``.
"""

import dataclasses
import functools
import itertools
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from optax_adamwdl import adamwdl, lr_ratios, lr_table, param_names
from tests.steps import run_steps

# Without shrinking: the examples are small, and shrinking a failure here costs minutes of jax.
QUICK = dict(deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))

LR, WD = 0.1, 0.1
B1, B2, EPS = 0.9, 0.999, 1e-8
REPO = pathlib.Path(__file__).resolve().parent.parent

# Embeddings, three layers and a head, as a flat dict of dotted names (the names param_names gives).
SHAPES = {
  "embeddings.w": (3,),
  "encoder.layers.0.w": (2, 2),
  "encoder.layers.1.w": (2,),
  "encoder.layers.2.w": (3,),
  "classifier.w": (2,),
}


def _problem(shapes, steps, seed=0, dtype=np.float32):
  """Parameters in ±[1, 2) (no zeros, no -0.0) and ``steps`` gradients, as NumPy arrays."""
  rng = np.random.default_rng(seed)

  def param(s):
    return (rng.uniform(1.0, 2.0, size=s) * rng.choice([-1.0, 1.0], size=s)).astype(dtype)

  init = {k: param(s) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()} for _ in range(steps)]
  return init, grads


def _ladder(name, decay, depth, *, head=1.0, depth_normalized=False, min_ratio=0.0):
  """The spec's default ladder for the names of SHAPES (one stack of ``depth`` layers)."""
  if name.startswith("embeddings."):
    exponent = depth + 1
  elif name.startswith("encoder.layers."):
    exponent = depth - int(name.split(".")[2])
  else:
    return max(head, min_ratio)
  if depth_normalized:
    exponent = exponent / (depth + 1)
  return max(decay**exponent, min_ratio)


def _wide(x):
  x = np.asarray(x)
  return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _adam_direction(grads, b1=B1, b2=B2, eps=EPS):
  """Adam's bias-corrected direction after the gradients ``grads`` of one leaf (float64)."""
  m = v = 0.0
  for g in map(_wide, grads):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * np.abs(g) ** 2
  t = len(grads)
  return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


def _numpy_adamwdl(init, grads, ratios, *, lr=LR, wd=WD, lazy=False, decay_follows_ratio=True):
  """AdamWDL as the spec states it, in float64 (complex128), on flat dicts.

  A ratio of 0 (scalar, or per slice of a scanned leaf) freezes: no update at all. ``lazy``: a
  row (slice along axis 0) whose gradient is all zero keeps its value and its moments.
  """
  p = {k: _wide(x) for k, x in init.items()}
  m = {k: np.zeros_like(x) for k, x in p.items()}
  v = {k: np.zeros(x.shape) for k, x in p.items()}
  for t, g in enumerate(grads, start=1):
    for k in p:
      gk, ratio = _wide(g[k]), np.asarray(ratios[k], np.float64)
      moving = np.broadcast_to(ratio != 0, gk.shape)
      if lazy:
        rows = gk != 0 if gk.ndim <= 1 else np.any(gk != 0, axis=tuple(range(1, gk.ndim)))
        moving = moving & rows.reshape(rows.shape + (1,) * (gk.ndim - rows.ndim))
      with np.errstate(invalid="ignore"):  # inf - inf where a frozen leaf's gradient is inf
        m_new = B1 * m[k] + (1 - B1) * gk
        v_new = B2 * v[k] + (1 - B2) * np.abs(gk) ** 2
        adam = (m_new / (1 - B1**t)) / (np.sqrt(v_new / (1 - B2**t)) + EPS)
      if decay_follows_ratio:
        step = ratio * (adam + wd * p[k])
      else:
        step = ratio * adam + wd * p[k]
      p[k] = np.where(moving, p[k] - lr * step, p[k])
      m[k] = np.where(moving, m_new, m[k])
      v[k] = np.where(moving, v_new, v[k])
  return p


def _assert_close(ours, want, rtol=1e-5, atol=1e-7):
  for k in want:
    np.testing.assert_allclose(np.asarray(ours[k]), want[k], rtol=rtol, atol=atol, err_msg=k)


def _raises(kinds, call, *patterns):
  """Runs ``call``, which must raise one of ``kinds`` whose message matches every pattern."""
  with pytest.raises(kinds) as info:
    call()
  message = str(info.value)
  for pattern in patterns:
    assert re.search(pattern, message), f"{pattern!r} not in: {message}"
  return message


# 1. The optimizer state never overrides the configuration.

CHANGES = {  # name: (the configuration that made the state, the one that resumes from it)
  "layerwise_decay": ({"layerwise_decay": 0.9}, {"layerwise_decay": 0.5}),
  "n_layers": ({"layerwise_decay": 0.5, "n_layers": 3}, {"layerwise_decay": 0.5, "n_layers": 6}),
  "depth_normalized": (
    {"layerwise_decay": 0.5},
    {"layerwise_decay": 0.5, "depth_normalized": True},
  ),
  "head_ratio": ({"layerwise_decay": 0.5}, {"layerwise_decay": 0.5, "head_ratio": 4.0}),
  "min_ratio": ({"layerwise_decay": 0.5}, {"layerwise_decay": 0.5, "min_ratio": 0.2}),
}


def _expected_resumed_update(new, params, grads):
  """The update the new configuration gives after ``grads``, from ``params`` (NumPy)."""
  depth = new.get("n_layers") or 3
  out = {}
  for k in SHAPES:
    ratio = _ladder(
      k,
      new["layerwise_decay"],
      depth,
      head=new.get("head_ratio", 1.0),
      depth_normalized=new.get("depth_normalized", False),
      min_ratio=new.get("min_ratio", 0.0),
    )
    out[k] = -LR * ratio * (_adam_direction([g[k] for g in grads]) + WD * _wide(params[k]))
  return out


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("changed", list(CHANGES))
def test_configuration_wins_over_a_state_made_by_another_configuration(changed, jit):
  old, new = CHANGES[changed]
  init, grads = _problem(SHAPES, 3)
  tx_old = adamwdl(LR, weight_decay=WD, **old)
  tx_new = adamwdl(LR, weight_decay=WD, **new)
  update = jax.jit(tx_new.update) if jit else tx_new.update
  # A run checkpointed after two steps of the old optimizer, resumed with the new one...
  params, state_old = run_steps(tx_old, init, grads[:2], jit)
  resumed, _ = update(grads[2], state_old, params)
  # ...updates as the new optimizer does with its own state (Adam's moments depend on the
  # gradients only, so its own run gives the same moments).
  _, state_new = run_steps(tx_new, init, grads[:2], jit)
  own, _ = update(grads[2], state_new, params)
  chex.assert_trees_all_equal(resumed, own)
  _assert_close(resumed, _expected_resumed_update(new, params, grads))
  # The two configurations do differ here, so the old state had something to override.
  with_old, _ = tx_old.update(grads[2], state_old, params)
  assert any(not np.allclose(with_old[k], resumed[k]) for k in SHAPES)


def test_configuration_wins_after_an_orbax_restore(tmp_path):
  import orbax.checkpoint as ocp

  old, new = CHANGES["layerwise_decay"]
  init, grads = _problem(SHAPES, 3, seed=1)
  tx_old = adamwdl(LR, weight_decay=WD, **old)
  tx_new = adamwdl(LR, weight_decay=WD, **new)
  params, state = run_steps(tx_old, init, grads[:2])
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "step2", state)
  # Restored into the new optimizer's state, as a training script does on resume.
  abstract = jax.eval_shape(tx_new.init, params)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / "step2", abstract)
  resumed, _ = jax.jit(tx_new.update)(grads[2], restored, params)
  _assert_close(resumed, _expected_resumed_update(new, params, grads))


_configs = st.fixed_dictionaries(
  {
    "layerwise_decay": st.floats(0.3, 1.0),
    "n_layers": st.one_of(st.none(), st.integers(3, 6)),
    "head_ratio": st.floats(0.5, 4.0),
    "min_ratio": st.floats(0.0, 0.3),
    "depth_normalized": st.booleans(),
  }
)


@settings(max_examples=15, **QUICK)
@given(old=_configs, new=_configs)
def test_configuration_wins_for_any_pair_of_configurations(old, new):
  init, grads = _problem(SHAPES, 2, seed=2)
  tx_old = adamwdl(LR, weight_decay=WD, **old)
  tx_new = adamwdl(LR, weight_decay=WD, **new)
  params, state_old = run_steps(tx_old, init, grads[:1], jit=False)
  resumed, _ = tx_new.update(grads[1], state_old, params)
  _assert_close(resumed, _expected_resumed_update(new, params, grads), rtol=2e-5, atol=1e-7)


# 2. Every documented combination works: options pairwise, float32 and bfloat16, bare and inside
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
  rng = np.random.default_rng(3)
  is_shape = lambda x: isinstance(x, tuple)
  shapes = _grid_shapes(names)
  params = jax.tree.map(
    lambda s: jnp.asarray(rng.uniform(1.0, 2.0, size=s) * rng.choice([-1, 1], size=s), dtype),
    shapes,
    is_leaf=is_shape,
  )
  grads = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes, is_leaf=is_shape)
  grads["embeddings"]["word"] = grads["embeddings"]["word"].at[1].set(0)  # a lazy row
  bad = dict(grads, head={"w": grads["head"]["w"].at[0].set(jnp.inf)})
  return params, grads, bad


def _assert_dtypes(tree, like, what):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(like)):
    assert x.dtype == y.dtype, f"{what} {jax.tree_util.keystr(path)}: {x.dtype} != {y.dtype}"


def _assert_finite(tree, what):
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    assert np.all(np.isfinite(np.asarray(x, np.float32))), f"{what} {jax.tree_util.keystr(path)}"


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
  _assert_dtypes(updates, params, "update")
  _assert_finite(updates, "update")
  bare = optax.apply_updates(params, updates)
  _assert_dtypes(bare, params, "parameter")
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
  _assert_dtypes(updates, params, "update")
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  # The mean of two equal gradients is that gradient: the bare step.
  updates, state = step(grads, state, params)
  _assert_dtypes(updates, params, "update")
  stepped = optax.apply_updates(params, updates)
  _assert_dtypes(stepped, params, "parameter")
  chex.assert_trees_all_close(stepped, bare, rtol=tol, atol=tol)
  for field in ("mu", "nu", *masters):
    chex.assert_trees_all_close(
      optax.tree.get(state, field), optax.tree.get(bare_state, field), rtol=tol, atol=tol
    )

  # Two micro-steps with an inf gradient: apply_if_finite skips the step, bit for bit.
  before = state
  for _ in range(2):
    updates, state = step(bad, state, stepped)
    _assert_dtypes(updates, params, "update")
    chex.assert_trees_all_equal(optax.apply_updates(stepped, updates), stepped)
  assert int(optax.tree.get(state, "notfinite_count")) == 1
  for field in ("mu", "nu", *masters):
    chex.assert_trees_all_equal(
      optax.tree.get(state, field), optax.tree.get(before, field), custom_message=field
    )
  chex.assert_trees_all_equal(state.inner_opt_state.inner_state, before.inner_opt_state.inner_state)


SCANNED_SHAPES = {"embedding.w": (2,), "encoderblock.w": (3, 2, 2), "head.w": (2,)}
UNROLLED_SHAPES = {
  "embedding.w": (2,),
  **{f"encoderblock_{i}.w": (2, 2) for i in range(3)},
  "head.w": (2,),
}


def test_scanned_equals_unrolled_with_freeze_below_and_decoupled_decay():
  options = dict(weight_decay=WD, layerwise_decay=0.5, freeze_below=0.2, decay_follows_ratio=False)
  unrolled_init, unrolled_grads = _problem(UNROLLED_SHAPES, 3, seed=4)

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
  want = _numpy_adamwdl(unrolled_init, unrolled_grads, ratios, decay_follows_ratio=False)
  _assert_close(unrolled, want)
  np.testing.assert_array_equal(unrolled["encoderblock_0.w"], unrolled_init["encoderblock_0.w"])
  np.testing.assert_array_equal(scanned["encoderblock.w"][0], unrolled_init["encoderblock_0.w"])
  np.testing.assert_array_equal(scanned["embedding.w"], unrolled_init["embedding.w"])
  np.testing.assert_array_equal(unrolled["embedding.w"], unrolled_init["embedding.w"])
  np.testing.assert_allclose(scanned["head.w"], unrolled["head.w"], rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(
    scanned["encoderblock.w"], stacked(unrolled)["encoderblock.w"], rtol=1e-6, atol=1e-7
  )


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
  init, grads = _problem(SHAPES, 2, seed=5)
  frozen, options = ZERO_RATIO[how]
  for g in grads:
    g[frozen] = np.array([np.inf, -np.inf, np.nan][: g[frozen].size], np.float32)
  tx = adamwdl(LR, weight_decay=WD, **options)
  params, state = run_steps(tx, init, grads, jit)  # bare adamwdl, no apply_if_finite
  np.testing.assert_array_equal(params[frozen], init[frozen])
  updates, _ = (jax.jit(tx.update) if jit else tx.update)(grads[1], state, params)
  np.testing.assert_array_equal(updates[frozen], np.zeros_like(init[frozen]))
  others = {k: v for k, v in params.items() if k != frozen}
  _assert_finite(others, "parameter")
  if how == "set_param_lr_fun":
    ratios = {k: 1.0 for k in SHAPES} | {frozen: 0.0}
  else:
    ratios = {k: _ladder(k, 0.5, 3, head=options.get("head_ratio", 1.0)) for k in SHAPES}
    ratios[frozen] = 0.0
  want = _numpy_adamwdl(init, grads, ratios)
  _assert_close(others, {k: want[k] for k in others})


def test_apply_if_finite_with_master_weights_on_bfloat16():
  shapes = SHAPES
  init32, grads32 = _problem(shapes, 2, seed=6)
  to_bf16 = lambda tree: {k: jnp.asarray(v, jnp.bfloat16) for k, v in tree.items()}
  params, grads = to_bf16(init32), [to_bf16(g) for g in grads32]
  tx = optax.apply_if_finite(
    adamwdl(LR, weight_decay=WD, layerwise_decay=0.5, multi_precision=True), 3
  )
  step = jax.jit(tx.update)
  updates, state = step(grads[0], tx.init(params), params)
  _assert_dtypes(updates, params, "update")
  new = optax.apply_updates(params, updates)
  master = optax.tree.get(state, "master")
  for k in shapes:
    assert master[k].dtype == jnp.float32
    np.testing.assert_array_equal(new[k], master[k].astype(jnp.bfloat16), err_msg=k)
  # The master copy is the float32 step from the bfloat16 values.
  ratios = {k: _ladder(k, 0.5, 3) for k in shapes}
  start = {k: np.asarray(v, np.float32) for k, v in params.items()}
  grads_seen = [{k: np.asarray(v, np.float32) for k, v in grads[0].items()}]
  _assert_close(master, _numpy_adamwdl(start, grads_seen, ratios), rtol=1e-6)
  bad = dict(grads[1], **{"encoder.layers.1.w": jnp.full((2,), jnp.nan, jnp.bfloat16)})
  updates, skipped = step(bad, state, new)
  chex.assert_trees_all_equal(optax.apply_updates(new, updates), new)
  chex.assert_trees_all_equal(skipped.inner_state, state.inner_state)


def test_lazy_mode_with_freeze_below():
  shapes = {
    "embeddings.word": (4, 2),
    "encoder.layers.0.w": (3, 2),
    "encoder.layers.1.w": (3, 2),
    "head.w": (2,),
  }
  init, grads = _problem(shapes, 2, seed=7)
  grads[1]["encoder.layers.0.w"][0] = 0.0  # rows with no gradient at the second step
  grads[1]["encoder.layers.1.w"][2] = 0.0
  grads[1]["embeddings.word"][1] = 0.0
  tx = adamwdl(LR, weight_decay=WD, layerwise_decay=0.5, freeze_below=0.2, lazy_mode=True)
  after_one, state_one = run_steps(tx, init, grads[:1])
  params, state = run_steps(tx, init, grads)
  ratios = {"embeddings.word": 0.0, "encoder.layers.0.w": 0.25, "encoder.layers.1.w": 0.5}
  ratios["head.w"] = 1.0
  _assert_close(params, _numpy_adamwdl(init, grads, ratios, lazy=True))
  np.testing.assert_array_equal(params["embeddings.word"], init["embeddings.word"])
  for k, row in (("encoder.layers.0.w", 0), ("encoder.layers.1.w", 2)):
    np.testing.assert_array_equal(params[k][row], after_one[k][row])
    for moment in ("mu", "nu"):
      np.testing.assert_array_equal(
        optax.tree.get(state, moment)[k][row], optax.tree.get(state_one, moment)[k][row]
      )


def test_readme_sharding_recipe_with_master_weights_on_a_mixed_tree():
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  params = {
    "embeddings": jnp.ones((4, 2), jnp.bfloat16),
    "layers": [{"w": jnp.ones((2, 2), jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}] * 2,
    "head": jnp.ones(2, jnp.float32),
  }
  # The documented recipe (docs/guides/sharding_and_checkpoints.md), with multi_precision: optax's
  # is_leaf for masked states, since float32 leaves have no master copy (an optax.MaskedNode).
  mesh = Mesh(np.array(jax.devices()).reshape(-1, 1), ("data", "model"))
  param_sharding = jax.tree.map(lambda x: NamedSharding(mesh, P()), params)
  tx = adamwdl(1e-3, layerwise_decay=0.8, multi_precision=True)
  state_sharding = optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    jax.eval_shape(tx.init, params),
    param_sharding,
    transform_non_params=lambda _: NamedSharding(mesh, P()),
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )
  opt_state = jax.jit(tx.init, out_shardings=state_sharding)(params)
  chex.assert_trees_all_equal_structs(opt_state, tx.init(params))
  master = optax.tree.get(opt_state, "master")
  assert master["embeddings"].dtype == jnp.float32
  updates, opt_state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), opt_state, params)
  _assert_dtypes(updates, params, "update")
  _assert_dtypes(optax.apply_updates(params, updates), params, "parameter")


# 4. Values that cannot work are refused at construction or init.

FLAT = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
STATIC = ("layerwise_decay", "n_layers", "head_ratio", "min_ratio", "freeze_below")


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
  _raises(ValueError, lambda: adamwdl(LR, **options).init(FLAT), r"classifier\.w")


DEEP = {"embeddings.w": np.ones(1, np.float32)}
DEEP |= {f"encoder.layers.{i}.w": np.ones(1, np.float32) for i in range(200)}
DEEP |= {"classifier.w": np.ones(1, np.float32)}


def _assert_names_vanishing_ratios(message, decay, depth):
  """The message names parameters, each of whose float32 ratio is 0 or subnormal."""
  named = re.findall(r"embeddings\.w|encoder\.layers\.\d+\.w", message)
  tiny = np.finfo(np.float32).tiny
  assert named and all(np.float32(_ladder(n, decay, depth)) < tiny for n in named), message


def test_a_ratio_that_underflows_to_zero_is_refused_and_min_ratio_or_freeze_below_work():
  # 0.001 ** (200 - i) is exactly 0 in float32 for the embeddings and layers 0 to 184.
  message = _raises(
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
def test_ratios_are_refused_exactly_when_they_vanish_in_float32(decay, depth):
  params = {"embeddings.w": np.ones(1, np.float32)}
  params |= {f"encoder.layers.{i}.w": np.ones(1, np.float32) for i in range(depth)}
  smallest = decay ** (depth + 1)  # the embeddings'
  tx = adamwdl(LR, layerwise_decay=decay)
  if np.float32(smallest) == 0:
    message = _raises(ValueError, lambda: tx.init(params), r"min_ratio|freeze_below")
    _assert_names_vanishing_ratios(message, decay, depth)
  elif smallest >= np.finfo(np.float32).tiny:  # normal in float32: nothing to refuse
    tx.init(params)
  # In between (subnormal) either is right.


def test_inject_hyperparams_with_bfloat16_zero_d_hyperparameters():
  init, grads = _problem(SHAPES, 1, seed=8)
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
    _assert_dtypes(updates, params, "update")
    for k in SHAPES:
      ratio = _ladder(k, hyper["layerwise_decay"], 3)
      adam = _adam_direction([np.asarray(g[k], np.float32)], hyper["b1"], hyper["b2"], hyper["eps"])
      want = -hyper["learning_rate"] * ratio * (adam + hyper["weight_decay"] * init[k])
      # bfloat16 arithmetic: a few roundings of 2**-9 each.
      np.testing.assert_allclose(np.asarray(updates[k], np.float32), want, rtol=2**-5, err_msg=k)
  # The same 0-d bfloat16 hyperparameters given directly.
  direct = adamwdl(**state.hyperparams)
  chex.assert_trees_all_equal(
    direct.update(g, direct.init(params), params)[0], tx.update(g, state, params)[0]
  )


def test_freeze_below_under_inject_hyperparams_names_the_static_args_that_work():
  init, grads = _problem(SHAPES, 1, seed=9)
  init = jax.tree.map(jnp.asarray, init)
  options = dict(learning_rate=LR, weight_decay=WD, layerwise_decay=0.5, freeze_below=0.1)

  def without_static_args():  # refused at init, or at the latest when first traced
    tx = optax.inject_hyperparams(adamwdl)(**options)
    jax.jit(tx.update)(grads[0], tx.init(init), init)

  message = _raises((TypeError, ValueError), without_static_args, "static_args")
  for name in STATIC:
    assert name in message, (name, message)
  tx = optax.inject_hyperparams(adamwdl, static_args=STATIC)(**options)
  state = tx.init(init)
  assert set(state.hyperparams) >= {"learning_rate", "weight_decay"}
  updates, _ = jax.jit(tx.update)(grads[0], state, init)
  np.testing.assert_array_equal(updates["embeddings.w"], 0.0)  # 0.5 ** 4 < 0.1: frozen
  ratios = {k: _ladder(k, 0.5, 3) for k in SHAPES} | {"embeddings.w": 0.0}
  want = _numpy_adamwdl(init, grads, ratios)
  _assert_close(optax.apply_updates(init, updates), want)


def test_scan_axes_naming_no_parameter_is_refused():
  params = FLAT | {"encoderblock.w": np.ones((3, 2), np.float32)}
  message = _raises(
    ValueError,
    lambda: adamwdl(LR, layerwise_decay=0.8, scan_axes={"encoderblok": 0}).init(params),
    "encoderblok",
  )
  assert "scan_axes" in message


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
  _raises(ValueError, lambda: tx.init(params), r"encoderblock\.(attn|mlp)\.w")


@pytest.mark.parametrize("n_layers", [math.nan, math.inf], ids=["nan", "inf"])
def test_n_layers_nan_or_inf_is_refused(n_layers):
  _raises(
    (TypeError, ValueError),
    lambda: adamwdl(LR, layerwise_decay=0.8, n_layers=n_layers).init(FLAT),
    "n_layers",
  )
  _raises((TypeError, ValueError), lambda: lr_ratios(FLAT, 0.8, n_layers=n_layers), "n_layers")


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
  options = {"learning_rate": LR, "layerwise_decay": 0.8, name: COMPLEX[name]}
  _raises((TypeError, ValueError), lambda: adamwdl(**options).init(FLAT), name)


def test_a_rule_returning_a_complex_ratio_is_refused():
  tx = adamwdl(
    LR, layerwise_decay=0.8, n_layers=3, set_param_lr_fun=lambda decay, n, name: complex(decay, 1)
  )
  _raises((TypeError, ValueError), lambda: tx.init(FLAT), "set_param_lr_fun")


def test_a_key_that_is_a_digit_but_not_an_integer():
  # "²".isdigit() is True but int("²") fails. By the spec a layer is a "layers" component followed
  # by an integer, so "layers.².w" is no layer: accepted as an unrecognised name (head_ratio), or
  # refused with a message naming it; never int()'s "invalid literal" about nothing in particular.
  params = {
    "embeddings": {"w": np.ones(2, np.float32)},
    "layers": {"0": {"w": np.ones(2, np.float32)}, "²": {"w": np.ones(2, np.float32)}},
    "head": {"w": np.ones(2, np.float32)},
  }
  try:
    ratios = lr_ratios(params, 0.5)
  except ValueError as error:
    assert "layers.².w" in str(error), str(error)
    return
  assert ratios["layers"]["²"]["w"] == 1.0
  assert ratios["layers"]["0"]["w"] == 0.5
  assert "layers.².w" in lr_table(params, 0.5).unrecognised


def test_overlapping_stacks_are_refused():
  # Parameters under both prefixes, so that neither stack is empty: the overlap itself is refused.
  params = {
    "encoder": {"block": [{"w": np.ones(2, np.float32)}] * 2, "norm": np.ones(2, np.float32)},
    "head": {"w": np.ones(2, np.float32)},
  }
  message = _raises(
    (TypeError, ValueError),
    lambda: adamwdl(LR, layerwise_decay=0.8, stacks=["encoder", "encoder.block"]).init(params),
    "stacks",
  )
  assert "'encoder'" in message and "'encoder.block'" in message, message


def test_scan_axes_given_as_a_list_is_refused():
  params = FLAT | {"encoderblock.w": np.ones((3, 2), np.float32)}
  _raises(
    (TypeError, ValueError), lambda: lr_ratios(params, 0.8, scan_axes=["encoderblock"]), "scan_axes"
  )


def test_head_ratio_on_a_tree_without_layers():
  # With no layer, every parameter is "above the last layer" (or unrecognised): both get
  # head_ratio, so the right result scales everything by it; refusing is acceptable only with a
  # message about head_ratio, not one that blames layerwise_decay (which is 1 here).
  init, grads = _problem({"w": (2, 2), "b": (2,)}, 1, seed=10)
  tx = adamwdl(LR, weight_decay=WD, head_ratio=2.0)
  try:
    state = tx.init(init)
  except ValueError as error:
    assert "head_ratio" in str(error) and "layerwise_decay" not in str(error), str(error)
    return
  updates, _ = tx.update(grads[0], state, init)
  _assert_close(
    optax.apply_updates(init, updates), _numpy_adamwdl(init, grads, {"w": 2.0, "b": 2.0})
  )


def test_apply_decay_param_fun_without_static_args_points_at_static_args():
  # inject_hyperparams calls every callable it is not told is static as a schedule, with the step
  # count: a rule such as `"bias" not in name` then fails inside the rule, in optax's code, before
  # adamwdl is called. A rule that returns something (here `count != "classifier.w"`, True) hands
  # adamwdl a non-callable apply_decay_param_fun, which must point at static_args.
  tx = optax.inject_hyperparams(adamwdl)(
    learning_rate=LR, apply_decay_param_fun=lambda name: name != "classifier.w"
  )
  message = _raises((TypeError, ValueError), lambda: tx.init(FLAT), "static_args")
  assert "apply_decay_param_fun" in message


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

  init = {k: draw(k, s) for k, s in SHAPES.items()}
  grads = [{k: draw(k, s) for k, s in SHAPES.items()} for _ in range(2)]
  tx = adamwdl(LR, weight_decay=WD, layerwise_decay=0.5)
  params, _ = run_steps(tx, init, grads, jit)
  _assert_dtypes(params, init, "parameter")
  ratios = {k: _ladder(k, 0.5, 3) for k in SHAPES}
  _assert_close(params, _numpy_adamwdl(init, grads, ratios))


# 5. The seed's own example runs as written.


def test_paddle_docstring_rule_without_n_layers():
  def simple_lr_setting(decay_rate, n_layers, name):  # ignores n_layers
    return decay_rate**0.5 if "weight" in name else 1.0

  init, grads = _problem({"weight": (10, 10), "bias": (10,)}, 1, seed=12)
  ratios = {"weight": 0.8**0.5, "bias": 1.0}
  assert lr_ratios(init, 0.8, set_param_lr_fun=simple_lr_setting) == pytest.approx(ratios)
  tx = adamwdl(0.1, layerwise_decay=0.8, set_param_lr_fun=simple_lr_setting)
  updates, _ = tx.update(grads[0], tx.init(init), init)
  _assert_close(
    optax.apply_updates(init, updates), _numpy_adamwdl(init, grads, ratios, lr=0.1, wd=0.01)
  )


def test_a_rule_that_uses_n_layers_when_none_can_be_inferred_says_n_layers():
  def needs_depth(decay_rate, n_layers, name):
    return decay_rate ** (n_layers - 1) if "weight" in name else 1.0

  params = {"weight": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}
  tx = adamwdl(0.1, layerwise_decay=0.8, set_param_lr_fun=needs_depth)
  _raises(ValueError, lambda: tx.init(params), "n_layers")
  _raises(ValueError, lambda: lr_ratios(params, 0.8, set_param_lr_fun=needs_depth), "n_layers")


# Also found.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Scale:
  value: Any


class _Box(NamedTuple):
  value: Any


def test_a_field_called_value_keeps_its_name_while_nnx_value_is_dropped():
  from flax import nnx

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


def test_eager_and_jitted_training_agree():
  init, grads = _problem(SHAPES, 4, seed=13)
  tx = adamwdl(LR, weight_decay=WD, layerwise_decay=0.5, lazy_mode=True, min_ratio=0.1)
  eager, eager_state = run_steps(tx, init, grads, jit=False)
  jitted, jitted_state = run_steps(tx, init, grads, jit=True)
  # XLA may fuse a multiply-add under jit: a few ulps, not bit for bit.
  chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(eager_state, jitted_state, rtol=1e-6, atol=1e-7)
  ratios = {k: max(_ladder(k, 0.5, 3), 0.1) for k in SHAPES}
  _assert_close(eager, _numpy_adamwdl(init, grads, ratios, lazy=True))
