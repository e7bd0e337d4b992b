"""lazy_mode against a NumPy statement of the rule in the issue."""

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl
from tests.steps import run_steps

SHAPES = {
  "embeddings.word": (6, 3),
  "encoder.layers.0.w": (4, 2),
  "encoder.layers.1.w": (5,),
  "head.scale": (),
}
STEPS = 8


def _grads(seed, with_zero_rows=True):
  rng = np.random.default_rng(seed)
  out = []
  for t in range(STEPS):
    g = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    if with_zero_rows:
      for k, v in g.items():
        if v.ndim == 0:
          g[k] = np.float32(0.0) if t % 3 == 1 else v
        else:
          rows = rng.random(v.shape[0]) < 0.5  # different rows are zero at each step
          v[rows] = 0.0
    out.append(g)
  return out


def _numpy_lazy(init, grads, *, lr, b1, b2, eps, wd, ratios):
  """A row with zero gradient keeps p, m, v; others take the AdamW step with the global t."""
  p = {k: np.asarray(v, np.float64) for k, v in init.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, g in enumerate(grads, start=1):
    for k in p:
      gk = np.asarray(g[k], np.float64)
      active = (
        gk != 0 if gk.ndim <= 1 else np.any(gk != 0, axis=tuple(range(1, gk.ndim)), keepdims=True)
      )
      m_new = b1 * m[k] + (1 - b1) * gk
      v_new = b2 * v[k] + (1 - b2) * gk * gk
      step = (m_new / (1 - b1**t)) / (np.sqrt(v_new / (1 - b2**t)) + eps) + wd * p[k]
      p[k] = np.where(active, p[k] - lr * ratios[k] * step, p[k])
      m[k] = np.where(active, m_new, m[k])
      v[k] = np.where(active, v_new, v[k])
  return p, m, v


@pytest.mark.parametrize("seed", [0, 1])
def test_lazy_mode_matches_numpy_rule(seed):
  rng = np.random.default_rng(100 + seed)
  init = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
  grads = _grads(seed)
  tx = adamwdl(0.05, 0.8, 0.95, 1e-6, weight_decay=0.1, layerwise_decay=0.5, lazy_mode=True)
  params, state = run_steps(tx, init, grads)
  ratios = {
    "embeddings.word": 0.125,
    "encoder.layers.0.w": 0.25,
    "encoder.layers.1.w": 0.5,
    "head.scale": 1.0,
  }
  p, m, v = _numpy_lazy(init, grads, lr=0.05, b1=0.8, b2=0.95, eps=1e-6, wd=0.1, ratios=ratios)
  mu, nu = optax.tree.get(state, "mu"), optax.tree.get(state, "nu")
  assert int(optax.tree.get(state, "count")) == STEPS  # the global step count
  for k in SHAPES:
    np.testing.assert_allclose(params[k], p[k], rtol=2e-6, atol=2e-6, err_msg=k)
    np.testing.assert_allclose(mu[k], m[k], rtol=2e-6, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(nu[k], v[k], rtol=2e-6, atol=1e-9, err_msg=k)
  # And it differs from dense mode, so the rule was exercised.
  dense, _ = run_steps(
    adamwdl(0.05, 0.8, 0.95, 1e-6, weight_decay=0.1, layerwise_decay=0.5), init, grads
  )
  assert not np.allclose(dense["embeddings.word"], params["embeddings.word"])


def test_without_zero_rows_lazy_equals_dense_bitwise():
  rng = np.random.default_rng(5)
  init = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
  grads = _grads(5, with_zero_rows=False)
  lazy, lazy_state = run_steps(adamwdl(0.05, layerwise_decay=0.5, lazy_mode=True), init, grads)
  dense, dense_state = run_steps(adamwdl(0.05, layerwise_decay=0.5), init, grads)
  chex.assert_trees_all_equal(lazy, dense)
  chex.assert_trees_all_equal(lazy_state, dense_state)


def test_a_row_with_one_nonzero_element_is_active():
  params = {"embeddings.word": jnp.ones((2, 3))}
  tx = adamwdl(0.1, weight_decay=0.5, lazy_mode=True)
  grads = {"embeddings.word": jnp.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
  updates, _ = tx.update(grads, tx.init(params), params)
  u = np.asarray(updates["embeddings.word"])
  np.testing.assert_array_equal(u[0], 0.0)  # inactive row: no Adam step and no weight decay
  np.testing.assert_allclose(u[1], [-0.05, -0.15, -0.05], rtol=1e-5)  # decay on the whole row
