"""Defects that a review of the ladder's refactoring found (old and new placements compared on
1,699 trees), each fixed, one test per defect."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl, lr_placements, lr_ratios, scale_by_layerwise_lr


def _encoder_decoder():
  """Two stacks and an embedding outside both (BART's and T5's "shared")."""
  layers = lambda: [{"w": jnp.ones(2)}, {"w": jnp.ones(2)}]
  return {"encoder": {"layers": layers()}, "decoder": {"layers": layers()}, "shared": jnp.ones(2)}


def _only_shared(params):
  return jax.tree.map(lambda _: False, params) | {"shared": True}


def test_injected_decay_under_masked_places_like_the_concrete_one():
  # Intended change (1) places the visible "shared" at the bottom of the whole model's deepest
  # stack, and a concrete decay does (0.5**3). The update-time refusal of intended change (4)
  # looks only at the visible placements (all outside every stack) and refuses the same tree
  # when the decay is injected: _scale.update_fn's `all(p.stack is None for p in placed)`.
  params = _encoder_decoder()
  grads = jax.tree.map(jnp.ones_like, params)
  concrete = optax.masked(scale_by_layerwise_lr(0.5), _only_shared(params))
  injected = optax.masked(
    optax.inject_hyperparams(scale_by_layerwise_lr)(layerwise_decay=0.5), _only_shared(params)
  )
  expected, _ = concrete.update(grads, concrete.init(params), params)
  np.testing.assert_allclose(expected["shared"], 0.125)
  updates, _ = jax.jit(injected.update)(grads, injected.init(params), params)
  np.testing.assert_allclose(updates["shared"], expected["shared"])


def test_injected_adamwdl_under_masked_trains_the_visible_embedding():
  params = _encoder_decoder()
  tx = optax.masked(
    optax.inject_hyperparams(adamwdl)(learning_rate=1.0, layerwise_decay=0.5, weight_decay=0.0),
    _only_shared(params),
  )
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["shared"], -0.125, rtol=1e-5)


def test_traced_init_accepts_python_scalar_leaves():
  # Regression: init's check of traced numbers now builds jax.ShapeDtypeStruct(np.shape(x),
  # x.dtype) for every leaf, and a Python float leaf has no dtype (AttributeError). The old
  # ladder took names and shapes only, and the same init returned EmptyState().
  params = {"layers": [1.0, 2.0]}
  state = jax.jit(lambda decay: scale_by_layerwise_lr(decay).init(params))(0.5)
  assert state == optax.EmptyState()


def test_masked_scanned_layers_are_refused_by_name_unless_n_layers_says_their_number():
  # Was: "scan_axes: no parameter name has a component 'scan'" for a transformation that sees
  # only the embedding and head of a scanned model. A hidden scanned leaf (an optax.MaskedNode)
  # has no shape, so its number of layers cannot be read: refused, saying so; with n_layers, the
  # embedding gets the whole model's 0.5**4.
  params = {"embed": jnp.ones((5, 4)), "scan": {"w": jnp.ones((3, 4, 4))}, "head": jnp.ones((4, 2))}
  whole = lr_ratios(params, 0.5, scan_axes={"scan": 0})
  assert whole["embed"] == 0.0625
  masked = {"embed": params["embed"], "scan": {"w": optax.MaskedNode()}, "head": params["head"]}
  with pytest.raises(ValueError, match=r"scanned layers of stack .* left out .* pass n_layers"):
    lr_placements(masked, 0.5, scan_axes={"scan": 0})
  placed = lr_placements(masked, 0.5, scan_axes={"scan": 0}, n_layers=3)
  assert placed["embed"].ratio == whole["embed"]


class _FalsyRule:
  """A set_param_lr_fun object that is falsy: a container of per-name overrides, now empty."""

  def __init__(self):
    self.overrides = {}

  def __len__(self):
    return len(self.overrides)

  def __call__(self, decay, n_layers, name):
    return self.overrides.get(name, decay**2 if name.startswith("layers") else 1.0)


def test_falsy_set_param_lr_fun_is_still_a_custom_rule():
  # Regression: _stacks.depth tests `not options.custom` where the old ladder tested
  # `self.rule is None`, so a falsy callable is treated as "no custom rule" there and its n_layers
  # is checked against the layers found (ValueError: n_layers=2 ... must be at least 3).
  params = {"layers": [jnp.zeros(2)] * 3}
  assert lr_ratios(params, 0.5, 2, _FalsyRule()) == {"layers": [0.25, 0.25, 0.25]}
