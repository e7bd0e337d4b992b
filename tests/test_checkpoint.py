"""Orbax: a run checkpointed at step k and resumed is bit for bit the uninterrupted run."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from optax_adamwdl import adamwdl
from optax_adamwdl.demo import TransformerEncoder
from tests.model_trees import leaf_names

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
