"""lazy_mode (``_lazy``) against the float64 maths (tests/reference.py, ``lazy=True``): a row with
no gradient keeps its value and its moments."""

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl
from tests import reference
from tests.conftest import assert_close, draw, problem
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


@pytest.mark.parametrize("seed", [0, 1])
def test_lazy_mode_matches_numpy_rule(seed):
  init = draw(np.random.default_rng(100 + seed), SHAPES)
  grads = _grads(seed)
  tx = adamwdl(0.05, 0.8, 0.95, 1e-6, weight_decay=0.1, layerwise_decay=0.5, lazy_mode=True)
  params, state = run_steps(tx, init, grads)
  ratios = {
    "embeddings.word": 0.125,
    "encoder.layers.0.w": 0.25,
    "encoder.layers.1.w": 0.5,
    "head.scale": 1.0,
  }
  # A row with zero gradient keeps p, m, v; others take the AdamW step with the global t.
  p, m, v = reference.run(
    init, grads, ratios, lr=0.05, b1=0.8, b2=0.95, eps=1e-6, wd=0.1, lazy=True
  )
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
  init = draw(np.random.default_rng(5), SHAPES)
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


def test_lazy_mode_with_freeze_below():
  shapes = {
    "embeddings.word": (4, 2),
    "encoder.layers.0.w": (3, 2),
    "encoder.layers.1.w": (3, 2),
    "head.w": (2,),
  }
  init, grads = problem(shapes, 2, seed=7, init_range=(1.0, 2.0))
  grads[1]["encoder.layers.0.w"][0] = 0.0  # rows with no gradient at the second step
  grads[1]["encoder.layers.1.w"][2] = 0.0
  grads[1]["embeddings.word"][1] = 0.0
  tx = adamwdl(0.1, weight_decay=0.1, layerwise_decay=0.5, freeze_below=0.2, lazy_mode=True)
  after_one, state_one = run_steps(tx, init, grads[:1])
  params, state = run_steps(tx, init, grads)
  ratios = {"embeddings.word": 0.0, "encoder.layers.0.w": 0.25, "encoder.layers.1.w": 0.5}
  ratios["head.w"] = 1.0
  assert_close(params, reference.run(init, grads, ratios, lr=0.1, wd=0.1, lazy=True)[0])
  np.testing.assert_array_equal(params["embeddings.word"], init["embeddings.word"])
  for k, row in (("encoder.layers.0.w", 0), ("encoder.layers.1.w", 2)):
    np.testing.assert_array_equal(params[k][row], after_one[k][row])
    for moment in ("mu", "nu"):
      np.testing.assert_array_equal(
        optax.tree.get(state, moment)[k][row], optax.tree.get(state_one, moment)[k][row]
      )
