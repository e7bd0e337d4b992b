"""clip_by_norm and clip_by_value against NumPy, and their argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_adamwdl import clip_by_norm, clip_by_value


@pytest.mark.parametrize("jit", [False, True])
def test_clip_by_norm_clips_each_tensor_on_its_own(jit):
  rng = np.random.default_rng(0)
  grads = {
    "big": rng.normal(size=(4, 5)) * 10,
    "small": rng.normal(size=3) * 0.01,
    "zero": np.zeros(2),
  }
  grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
  tx = clip_by_norm(1.5)
  update = jax.jit(tx.update) if jit else tx.update
  clipped, _ = update(grads, tx.init(grads))
  for k, g in grads.items():
    g = np.asarray(g, np.float64)
    norm = np.linalg.norm(g)
    want = g * 1.5 / norm if norm > 1.5 else g
    np.testing.assert_allclose(clipped[k], want, rtol=1e-6, err_msg=k)
  assert np.linalg.norm(clipped["big"]) == pytest.approx(1.5, rel=1e-6)


def test_clip_by_value_asymmetric_and_default_bounds():
  g = jnp.linspace(-3.0, 3.0, 13)
  np.testing.assert_array_equal(clip_by_value(2.0, -0.5).update(g, None)[0], np.clip(g, -0.5, 2.0))
  np.testing.assert_array_equal(clip_by_value(1.0).update(g, None)[0], np.clip(g, -1.0, 1.0))


@pytest.mark.parametrize(
  "make, error, message",
  [
    (lambda: clip_by_norm(0.0), ValueError, r"clip_norm must be finite and in \(0.0, inf\]"),
    (lambda: clip_by_norm("1"), TypeError, "clip_norm must be a real number"),
    (lambda: clip_by_value(-1.0), ValueError, r"max_value must be finite and in \(0.0, inf\]"),
    (lambda: clip_by_value(1.0, 2.0), ValueError, "min_value < max_value, got 2.0 and 1.0"),
    (lambda: clip_by_value(None), TypeError, "max_value must be a real number"),
  ],
)
def test_bad_arguments(make, error, message):
  with pytest.raises(error, match=message):
    make()
