"""Resuming: a run checkpointed with orbax at step k and resumed is bit for bit the uninterrupted run,
and a state made by another configuration resumes as the configuration says (the state holds no
ratios)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from optax_adamwdl import adamwdl
from optax_adamwdl.demo import TransformerEncoder
from tests import reference
from tests.conftest import QUICK, SMALL, assert_close, problem
from tests.model_trees import leaf_names
from tests.steps import run_steps

STEPS, SPLIT = 6, 3


def _params():
  rng = np.random.default_rng(0)
  return {
    "embeddings": {"word": jnp.asarray(rng.normal(size=(8, 4)), jnp.bfloat16)},
    "encoder": {
      "layers": [
        {
          "w": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=4), jnp.bfloat16),
        }
        for _ in range(2)
      ]
    },
    "head": {"w": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)},
  }


def _grads(params, t):
  rng = np.random.default_rng(100 + t)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  grads["embeddings"]["word"] = grads["embeddings"]["word"].at[t % 8].set(0)  # lazy rows
  return grads


@pytest.mark.parametrize("options", [{}, {"multi_precision": True, "lazy_mode": True}])
def test_resume_from_an_orbax_checkpoint_is_bitwise_identical(tmp_path, options):
  tx = adamwdl(1e-2, weight_decay=0.1, layerwise_decay=0.7, **options)
  step = jax.jit(
    lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)),
    donate_argnums=(0, 1),
  )

  params, state = _params(), tx.init(_params())
  for t in range(STEPS):
    params, state = step(params, state, _grads(params, t))
  uninterrupted = (params, state)

  params, state = _params(), tx.init(_params())
  for t in range(SPLIT):
    old_leaf = jax.tree.leaves(params)[0]
    params, state = step(params, state, _grads(params, t))
    assert old_leaf.is_deleted()  # donated: no second copy of the parameters
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "step3", {"params": params, "opt_state": state})
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": state})
  del params, state
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / "step3", abstract)
  params, state = restored["params"], restored["opt_state"]
  for t in range(SPLIT, STEPS):
    params, state = step(params, state, _grads(params, t))

  chex.assert_trees_all_equal((params, state), uninterrupted)
  if options:
    assert state.master["embeddings"]["word"].dtype == jnp.float32  # master weights came back


def test_nnx_optimizer_state_round_trips_and_keeps_its_names(tmp_path):
  model = TransformerEncoder(10, 8, 4, dim=8, heads=2, n_layers=2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, adamwdl(1e-2, layerwise_decay=0.7), wrt=nnx.Param)
  state = nnx.state(optimizer)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "nnx", state)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(
      tmp_path / "nnx", jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    )
  chex.assert_trees_all_equal(jax.tree.leaves(restored), jax.tree.leaves(state))
  # Orbax may return integer keys ("layers.0") as strings; the names are the same either way.
  assert leaf_names(restored) == leaf_names(state)
  assert any(".layers.1." in name for name in leaf_names(restored))


# The optimizer state never overrides the configuration.

LR, WD = 0.1, 0.1
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
  """The update the new configuration gives after ``grads``, from ``params`` (float64)."""
  depth = new.get("n_layers") or 3
  ratios = {
    k: reference.ladder(
      k,
      new["layerwise_decay"],
      depth,
      head=new.get("head_ratio", 1.0),
      depth_normalized=new.get("depth_normalized", False),
      min_ratio=new.get("min_ratio", 0.0),
    )
    for k in SMALL
  }
  # Adam's moments depend on the gradients only: those before the last, from any parameters.
  _, m, v = reference.run(params, grads[:-1], ratios, lr=LR, wd=WD)
  out = {}
  for k in SMALL:
    p, g = reference.wide(params[k]), reference.wide(grads[-1][k])
    out[k] = reference.adam_update(p, m[k], v[k], g, len(grads), ratios[k], lr=LR, wd=WD)[0]
  return out


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("changed", list(CHANGES))
def test_configuration_wins_over_a_state_made_by_another_configuration(changed, jit):
  old, new = CHANGES[changed]
  init, grads = problem(SMALL, 3, init_range=(1.0, 2.0))
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
  assert_close(resumed, _expected_resumed_update(new, params, grads))
  # The two configurations do differ here, so the old state had something to override.
  with_old, _ = tx_old.update(grads[2], state_old, params)
  assert any(not np.allclose(with_old[k], resumed[k]) for k in SMALL)


def test_configuration_wins_after_an_orbax_restore(tmp_path):
  old, new = CHANGES["layerwise_decay"]
  init, grads = problem(SMALL, 3, seed=1, init_range=(1.0, 2.0))
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
  assert_close(resumed, _expected_resumed_update(new, params, grads))


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
  init, grads = problem(SMALL, 2, seed=2, init_range=(1.0, 2.0))
  tx_old = adamwdl(LR, weight_decay=WD, **old)
  tx_new = adamwdl(LR, weight_decay=WD, **new)
  params, state_old = run_steps(tx_old, init, grads[:1], jit=False)
  resumed, _ = tx_new.update(grads[1], state_old, params)
  assert_close(resumed, _expected_resumed_update(new, params, grads), rtol=2e-5, atol=1e-7)
