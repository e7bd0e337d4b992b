"""What the tests share: the problem builder, a small model's names and the checks they repeat.

The maths they compare against is ``tests/reference.py``; the training loop, ``tests/steps.py``.
(The compilation cache hooks are in the repository's root ``conftest.py``.) Import from here:
``from tests.conftest import problem``.
"""

import re
from typing import Any

import jax
import numpy as np
import pytest
from hypothesis import Phase

# Hypothesis without shrinking: the examples are small, and shrinking a failure costs minutes of jax.
QUICK = dict(deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))

# A small model: embeddings, three layers and a head, as flat dotted names (what param_names gives).
SMALL = {
  "embeddings.w": (3,),
  "encoder.layers.0.w": (2, 2),
  "encoder.layers.1.w": (2,),
  "encoder.layers.2.w": (3,),
  "classifier.w": (2,),
}
SMALL_ONES = {k: np.ones(s, np.float32) for k, s in SMALL.items()}  # its parameters, all ones


def _is_shape(x: Any) -> bool:
  return isinstance(x, tuple)


def draw(rng: np.random.Generator, shapes: Any, *, dtype=np.float32, uniform=None, signed=False):
  """One array of ``dtype`` per shape of ``shapes``, drawn from ``rng`` in order.

  Standard normal, or uniform in ``[low, high)`` with ``uniform=(low, high)``; ``signed``: times a
  random sign, drawn after each array's magnitudes (so ``uniform=(1, 2), signed=True`` gives values
  in ±[1, 2): no zeros, no -0.0). ``shapes`` is a flat dict {dotted name: shape}, drawn in its
  order, or any pytree whose leaves are shape tuples, drawn in JAX's leaf order; the result has
  the same structure.
  """

  def one(shape):
    x = rng.normal(size=shape) if uniform is None else rng.uniform(*uniform, size=shape)
    if signed:
      x = x * rng.choice([-1.0, 1.0], size=shape)
    return x.astype(dtype)

  if isinstance(shapes, dict) and all(map(_is_shape, shapes.values())):
    return {k: one(s) for k, s in shapes.items()}
  return jax.tree.map(one, shapes, is_leaf=_is_shape)


def problem(shapes: Any, steps: int, seed: int = 0, *, dtype=np.float32, init_range=None):
  """``(init, grads)``: parameters and ``steps`` gradients of the shapes ``shapes``, as NumPy.

  One generator seeded with ``seed`` draws the parameters, then each step's gradients (standard
  normal), in the order of :func:`draw`. The parameters are standard normal too, or with
  ``init_range=(low, high)`` in ±[low, high).
  """
  rng = np.random.default_rng(seed)
  init = draw(rng, shapes, dtype=dtype, uniform=init_range, signed=init_range is not None)
  return init, [draw(rng, shapes, dtype=dtype) for _ in range(steps)]


def assert_close(ours, want, rtol=1e-5, atol=1e-7):
  """Every leaf of the flat dict ``want`` against the same leaf of ``ours``."""
  for k in want:
    np.testing.assert_allclose(np.asarray(ours[k]), want[k], rtol=rtol, atol=atol, err_msg=k)


def raises(kind, call, *patterns):
  """Runs ``call``, which must raise ``kind`` with a message matching every pattern; returns it."""
  with pytest.raises(kind) as info:
    call()
  message = str(info.value)
  for pattern in patterns:
    assert re.search(pattern, message), f"{pattern!r} not in: {message}"
  return message


def assert_dtypes(tree, like, what):
  """Every leaf of ``tree`` has the dtype of the same leaf of ``like``."""
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(like)):
    assert x.dtype == y.dtype, f"{what} {jax.tree_util.keystr(path)}: {x.dtype} != {y.dtype}"


def assert_finite(tree, what):
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    assert np.all(np.isfinite(np.asarray(x, np.float32))), f"{what} {jax.tree_util.keystr(path)}"
