"""adamwdl against real Paddle: paddle.optimizer.AdamW with per-parameter learning rates.

SEMANTICS.md: Paddle's AdamWDL is AdamW whose parameters carry
``ParamAttr(learning_rate=ratio)``; that configuration runs on CPU and is the
oracle. The ratios given to Paddle come from the restated Paddle rule in
``reference.py``, not from optax_adamwdl.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl, clip_by_norm, clip_by_value
from tests import reference
from tests.conftest import draw

paddle = pytest.importorskip("paddle")

STEPS = 25
HYPER = dict(lr=2e-2, b1=0.9, b2=0.999, eps=1e-8, wd=0.05)


def _our_adamwdl(**options):
  """adamwdl with HYPER and the BERT no-decay rule, as the Paddle side is configured."""
  return adamwdl(
    HYPER["lr"],
    HYPER["b1"],
    HYPER["b2"],
    HYPER["eps"],
    weight_decay=HYPER["wd"],
    apply_decay_param_fun=reference.paddle_no_decay,
    **options,
  )


def _problem(shapes, seed=0):
  """A quadratic with per-step noise: grad = a * p - b + noise_t."""
  rng = np.random.default_rng(seed)
  init, a, b = draw(rng, shapes), draw(rng, shapes, uniform=(0.5, 2.0)), draw(rng, shapes)
  return init, a, b, [draw(rng, shapes) for _ in range(STEPS)]


def _run_paddle(
  init, a, b, noise, ratios, *, lr, b1, b2, eps, wd, apply_decay_param_fun, grad_clip=None
):
  paddle.set_device("cpu")
  params = {}
  with paddle.utils.unique_name.guard():  # Paddle refuses a parameter name twice per scope.
    for name, value in init.items():
      attr = paddle.ParamAttr(name=name, learning_rate=ratios[name])
      params[name] = paddle.create_parameter(list(value.shape), "float32", attr=attr)
      params[name].set_value(value)
  opt = paddle.optimizer.AdamW(
    learning_rate=lr,
    beta1=b1,
    beta2=b2,
    epsilon=eps,
    weight_decay=wd,
    parameters=list(params.values()),
    apply_decay_param_fun=apply_decay_param_fun,
    grad_clip=grad_clip,
  )
  for t in range(STEPS):
    loss = sum(
      (0.5 * paddle.to_tensor(a[k]) * p * p - paddle.to_tensor(b[k] - noise[t][k]) * p).sum()
      for k, p in params.items()
    )
    loss.backward()
    opt.step()
    opt.clear_grad()
  return {k: p.numpy() for k, p in params.items()}


def _run_ours(init, a, b, noise, tx):
  def loss(params, noise_t):
    return sum(jnp.sum(0.5 * a[k] * p * p - (b[k] - noise_t[k]) * p) for k, p in params.items())

  @jax.jit
  def step(params, state, noise_t):
    updates, state = tx.update(jax.grad(loss)(params, noise_t), state, params)
    return optax.apply_updates(params, updates), state

  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)
  for noise_t in noise:
    params, state = step(params, state, noise_t)
  return jax.tree.map(np.asarray, params)


def _assert_close_to_float32_rounding(ours, theirs, init):
  """Equal up to float32 rounding, which is tiny next to how far each tensor moved.

  Each implementation rounds p to float32 every step (half an ulp of |p|) and the
  quadratic feeds that back into the gradients, so the allowance is 4 ulp of the
  tensor's largest |p| per step. Measured: 49 ulp after 25 steps (about 1e-5 of
  the motion); a ladder off by one layer misses by about 25% of the motion.
  """
  for name in init:
    moved = np.max(np.abs(theirs[name] - init[name]))
    assert moved > 1e-3, f"{name} hardly moved ({moved}); the test would prove nothing"
    tol = 4 * STEPS * np.spacing(np.max(np.abs(theirs[name])))
    err = np.max(np.abs(ours[name] - theirs[name]))
    assert err <= tol, f"{name}: |ours - paddle| = {err:.3g} > {tol:.3g} (moved {moved:.3g})"


@pytest.mark.parametrize("decay, n_layers", [(0.75, None), (0.9, 6)])
def test_matches_paddle_adamw_with_per_parameter_lr(n_layers, decay):
  shapes = reference.bert_paddle_names(n_layers=4)
  init, a, b, noise = _problem(shapes)
  depth = 4 if n_layers is None else n_layers
  ratios = {k: reference.paddle_layerwise_lr_decay(decay, depth, k) for k in shapes}
  assert len(set(ratios.values())) == 6  # embeddings, 4 layers, head

  theirs = _run_paddle(
    init, a, b, noise, ratios, apply_decay_param_fun=reference.paddle_no_decay, **HYPER
  )
  tx = _our_adamwdl(layerwise_decay=decay, n_layers=n_layers)
  ours = _run_ours(init, a, b, noise, tx)
  _assert_close_to_float32_rounding(ours, theirs, init)


def test_paddle_parity_would_catch_a_wrong_ladder():
  """The oracle can tell ratios apart: off-by-one depth gives a visible mismatch."""
  shapes = reference.bert_paddle_names(n_layers=4)
  init, a, b, noise = _problem(shapes)
  ratios = {k: reference.paddle_layerwise_lr_decay(0.75, 4, k) for k in shapes}
  theirs = _run_paddle(
    init, a, b, noise, ratios, apply_decay_param_fun=reference.paddle_no_decay, **HYPER
  )
  off_by_one = _our_adamwdl(layerwise_decay=0.75, n_layers=5)
  ours = _run_ours(init, a, b, noise, off_by_one)
  with pytest.raises(AssertionError):
    _assert_close_to_float32_rounding(ours, theirs, init)


@pytest.mark.parametrize(
  "paddle_clip, our_clip",
  [
    (lambda: paddle.nn.ClipGradByGlobalNorm(5.0), lambda: optax.clip_by_global_norm(5.0)),
    (lambda: paddle.nn.ClipGradByNorm(1.0), lambda: clip_by_norm(1.0)),
    (lambda: paddle.nn.ClipGradByValue(2.0, -0.5), lambda: clip_by_value(2.0, -0.5)),
    (lambda: paddle.nn.ClipGradByValue(0.3), lambda: clip_by_value(0.3)),
  ],
  ids=["global_norm", "norm", "value_asymmetric", "value_symmetric"],
)
def test_matches_paddle_with_each_grad_clip(paddle_clip, our_clip):
  shapes = reference.bert_paddle_names(n_layers=3)
  init, a, b, noise = _problem(shapes, seed=7)
  b = {k: 30 * v for k, v in b.items()}  # gradients of norm ~30 per element: clipping is active
  first_grads = {k: a[k] * init[k] - (b[k] - noise[0][k]) for k in init}
  assert min(np.abs(g).max() for g in first_grads.values()) > 2.0
  ratios = {k: reference.paddle_layerwise_lr_decay(0.75, 3, k) for k in shapes}
  theirs = _run_paddle(
    init,
    a,
    b,
    noise,
    ratios,
    apply_decay_param_fun=reference.paddle_no_decay,
    grad_clip=paddle_clip(),
    **HYPER,
  )
  tx = _our_adamwdl(layerwise_decay=0.75, grad_clip=our_clip())
  _assert_close_to_float32_rounding(_run_ours(init, a, b, noise, tx), theirs, init)
  if isinstance(paddle_clip(), paddle.nn.ClipGradByGlobalNorm):  # the mildest clip of the four
    unclipped = _our_adamwdl(layerwise_decay=0.75)
    with pytest.raises(AssertionError):  # clipping changed the trajectory
      _assert_close_to_float32_rounding(_run_ours(init, a, b, noise, unclipped), theirs, init)
