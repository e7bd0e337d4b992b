"""layer_metrics (``_metrics``): names, and values against a NumPy restatement.

The restatement: the learning rate of the update at step t is ``schedule(t) * ratio`` (or the
injected value times the ratio), the update ratio of a row is ``||u|| / ||p||`` over the row's
parameters (a scanned leaf's layer slice for a layer), computed in float64 by NumPy; each row's
leaves are listed by hand here, not by the package.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl, layer_metrics

SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)


def _tree(n_layers: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {
    "embeddings": {"word_embeddings": leaf(10, 4)},
    "encoder": {
      "layers": [{"ffn": {"kernel": leaf(4, 4), "bias": leaf(4)}} for _ in range(n_layers)]
    },
    "classifier": {"kernel": leaf(4, 2)},
  }


def _grads(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _norm_ratio(updates, params) -> float:
  u = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in updates))
  p = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in params))
  return u / p


def _check(metrics, expected_lr: dict, rows: dict, params, updates):
  """``rows``: name -> function of a tree returning the row's arrays."""
  assert list(metrics) == sorted(metrics)
  assert set(metrics) == {f"lr/{r}" for r in rows} | {f"update_ratio/{r}" for r in rows}
  assert all(v.shape == () and v.dtype == jnp.float32 for v in metrics.values())
  for row, pick in rows.items():
    np.testing.assert_allclose(metrics[f"lr/{row}"], expected_lr[row], rtol=1e-6, atol=1e-12)
    want = _norm_ratio(pick(updates), pick(params))
    np.testing.assert_allclose(metrics[f"update_ratio/{row}"], want, rtol=1e-5)


def _bert_rows(n_layers: int) -> tuple[dict, dict]:
  width = len(str(n_layers - 1))
  layer = lambda i: lambda t: list(t["encoder"]["layers"][i]["ffn"].values())
  rows = {"bottom": lambda t: [t["embeddings"]["word_embeddings"]]}
  rows |= {f"layer_{i:0{width}d}": layer(i) for i in range(n_layers)}
  rows["top"] = lambda t: [t["classifier"]["kernel"]]
  return rows, {
    "bottom": n_layers + 1,
    **{f"layer_{i:0{width}d}": n_layers - i for i in range(n_layers)},
    "top": 0,
  }


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_a_schedule_times_each_rows_ratio_and_norm_ratios(jit):
  n, decay = 11, 0.75
  config = dict(learning_rate=SCHEDULE, layerwise_decay=decay, weight_decay=0.1, b1=0.8)
  params = _tree(n)
  tx = adamwdl(**config)
  metrics = layer_metrics(**config)
  metrics = jax.jit(metrics) if jit else metrics
  opt_state = tx.init(params)
  rows, exponents = _bert_rows(n)
  assert "layer_00" in rows and "layer_10" in rows  # zero-padded to the stack's width
  for t in range(4):
    updates, opt_state = tx.update(_grads(params, t), opt_state, params)
    out = metrics(params, updates, opt_state)
    lr = {r: float(SCHEDULE(t)) * decay**e for r, e in exponents.items()}
    _check(out, lr, rows, params, updates)
    params = optax.apply_updates(params, updates)
  assert float(out["lr/top"]) > 0


def test_positional_arguments_and_a_constant_learning_rate():
  params = _tree(2)
  tx = adamwdl(0.1, layerwise_decay=0.5)
  updates, opt_state = tx.update(_grads(params, 0), tx.init(params), params)
  out = layer_metrics(0.1, layerwise_decay=0.5)(params, updates, opt_state)
  assert [float(out[k]) for k in ("lr/bottom", "lr/layer_0", "lr/layer_1", "lr/top")] == [
    pytest.approx(0.1 * 0.5**k) for k in (3, 2, 1, 0)
  ]
  with pytest.raises(TypeError):
    layer_metrics(learning_rate=0.1, layerwise_dacay=0.5)  # a typo is refused, as adamwdl does


@pytest.mark.parametrize("learning_rate", [0.01, SCHEDULE], ids=["number", "schedule"])
def test_injected_learning_rate_and_decay_set_by_hand_mid_run(learning_rate):
  config = dict(learning_rate=learning_rate, layerwise_decay=0.75)
  params = _tree(3)
  tx = optax.inject_hyperparams(adamwdl)(**config)
  metrics = jax.jit(layer_metrics(**config))
  update = jax.jit(tx.update)
  opt_state = tx.init(params)
  rows, exponents = _bert_rows(3)
  for t in range(5):
    if t == 2 and not callable(learning_rate):  # by hand, between steps: the state counts
      opt_state.hyperparams["learning_rate"] = jnp.asarray(0.05, jnp.float32)
    if t == 3:
      opt_state.hyperparams["layerwise_decay"] = jnp.asarray(0.5, jnp.float32)
    updates, opt_state = update(_grads(params, t), opt_state, params)
    out = metrics(params, updates, opt_state)
    base = float(SCHEDULE(t)) if callable(learning_rate) else 0.01 if t < 2 else 0.05
    decay = 0.75 if t < 3 else 0.5
    _check(out, {r: base * decay**e for r, e in exponents.items()}, rows, params, updates)
    params = optax.apply_updates(params, updates)


def test_multi_steps_report_the_last_applied_update():
  config = dict(learning_rate=SCHEDULE, layerwise_decay=0.75)
  params = _tree(2)
  tx = optax.MultiSteps(adamwdl(**config), every_k_schedule=2)
  metrics = jax.jit(layer_metrics(**config))
  opt_state = tx.init(params)
  rows, exponents = _bert_rows(2)
  for t in range(6):
    updates, opt_state = tx.update(_grads(params, t), opt_state, params)
    out = metrics(params, updates, opt_state)
    applied = (t + 1) // 2  # inner updates so far; the last used schedule(applied - 1)
    lr = {r: float(SCHEDULE(max(applied - 1, 0))) * 0.75**e for r, e in exponents.items()}
    _check(out, lr, rows, params, updates)
    if t % 2 == 0:  # a mini-step: nothing moves
      assert all(float(v) == 0 for k, v in out.items() if k.startswith("update_ratio/"))
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("wrapper", ["apply_if_finite", "multi_precision", "freeze_below"])
def test_the_count_is_found_under_wrappers(wrapper):
  config = dict(learning_rate=SCHEDULE, layerwise_decay=0.75)
  params = _tree(2)
  if wrapper == "multi_precision":
    config["multi_precision"] = True
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  if wrapper == "freeze_below":
    config["freeze_below"] = 0.5  # the embeddings (0.42) are frozen: lr 0, no moments
  tx = adamwdl(**config)
  if wrapper == "apply_if_finite":
    tx = optax.apply_if_finite(tx, 3)
  metrics = jax.jit(layer_metrics(**config))
  opt_state = tx.init(params)
  rows, exponents = _bert_rows(2)
  for t in range(3):
    updates, opt_state = tx.update(_grads(params, t), opt_state, params)
    out = metrics(params, updates, opt_state)
    lr = {r: float(SCHEDULE(t)) * 0.75**e for r, e in exponents.items()}
    if wrapper == "freeze_below":
      lr["bottom"] = 0.0
    if wrapper == "multi_precision":  # bfloat16 updates and parameters: bfloat16's precision
      for row, pick in rows.items():
        np.testing.assert_allclose(out[f"lr/{row}"], lr[row], rtol=1e-6)
        want = _norm_ratio(pick(updates), pick(params))
        np.testing.assert_allclose(out[f"update_ratio/{row}"], want, rtol=1e-2)
    else:
      _check(out, lr, rows, params, updates)
    params = optax.apply_updates(params, updates)


def test_scanned_leaves_contribute_each_layer_slice():
  rng = np.random.default_rng(0)
  n = 4
  params = {
    "embed": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
    "encoderblock": {
      "kernel": jnp.asarray(rng.normal(size=(3, n, 3)), jnp.float32),  # layer axis 1
      "bias": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),  # layer axis 0
    },
    "head": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
  }
  axes = lambda name: 1 if name.endswith("kernel") else 0
  config = dict(learning_rate=SCHEDULE, layerwise_decay=0.5,
                scan_axes=lambda name: axes(name) if name.startswith("encoderblock") else None)  # fmt: skip
  tx = adamwdl(**config)
  opt_state = tx.init(params)
  metrics = jax.jit(layer_metrics(**config))
  layer = lambda i: lambda t: [t["encoderblock"]["kernel"][:, i], t["encoderblock"]["bias"][i]]
  rows = {"bottom": lambda t: [t["embed"]], "top": lambda t: [t["head"]]}
  rows |= {f"layer_{i}": layer(i) for i in range(n)}
  exponents = {"bottom": n + 1, "top": 0, **{f"layer_{i}": n - i for i in range(n)}}
  for t in range(2):
    updates, opt_state = tx.update(_grads(params, t), opt_state, params)
    out = metrics(params, updates, opt_state)
    _check(
      out, {r: float(SCHEDULE(t)) * 0.5**e for r, e in exponents.items()}, rows, params, updates
    )
    params = optax.apply_updates(params, updates)


def test_two_stacks_are_prefixed_by_their_names():
  params = _tree(2)
  params["decoder"] = {"layers": [{"w": jnp.full((3,), 2.0)} for _ in range(12)]}
  config = dict(learning_rate=0.1, layerwise_decay=0.5, stacks=["encoder", "decoder"])
  tx = adamwdl(**config)
  updates, opt_state = tx.update(_grads(params, 1), tx.init(params), params)
  out = layer_metrics(**config)(params, updates, opt_state)
  names = [k[3:] for k in out if k.startswith("lr/")]
  decoder = [f"decoder/layer_{i:02d}" for i in range(12)]
  assert names == ["bottom", *decoder, "encoder/layer_0", "encoder/layer_1", "top"]
  assert float(out["lr/decoder/layer_00"]) == pytest.approx(0.1 * 0.5**12)
  assert float(out["lr/encoder/layer_0"]) == pytest.approx(0.1 * 0.5**2)
  assert float(out["lr/bottom"]) == pytest.approx(0.1 * 0.5**13)  # below the deepest stack
  u, p = updates["decoder"]["layers"][3]["w"], params["decoder"]["layers"][3]["w"]
  want = np.linalg.norm(np.asarray(u)) / np.linalg.norm(np.asarray(p))
  np.testing.assert_allclose(out["update_ratio/decoder/layer_03"], want, rtol=1e-5)


def test_a_position_with_several_ratios_names_each_by_its_ratio():
  params = {"layers": [{"w": jnp.ones(4), "b": jnp.ones(2)}], "head": jnp.ones(2)}
  rule = lambda d, n, name: d if name.endswith("b") else 1.0
  config = dict(learning_rate=0.1, layerwise_decay=0.5, set_param_lr_fun=rule)
  tx = adamwdl(**config)
  updates, opt_state = tx.update(_grads(params, 0), tx.init(params), params)
  out = layer_metrics(**config)(params, updates, opt_state)
  lrs = {k: round(float(v), 6) for k, v in out.items() if k.startswith("lr/")}
  assert lrs == {"lr/layer_0": 0.1, "lr/layer_0/r0.5": 0.05, "lr/top": 0.1}
  want = np.linalg.norm(np.asarray(updates["layers"][0]["b"])) / np.linalg.norm(np.ones(2))
  np.testing.assert_allclose(out["update_ratio/layer_0/r0.5"], want, rtol=1e-5)


def _pick(indices, tree):
  leaves = jax.tree.leaves(tree)
  return [leaves[i] for i in indices]


def test_nnx_state_params_inside_a_jitted_train_step():
  nnx = pytest.importorskip("flax.nnx")
  from optax_adamwdl.demo import TransformerEncoder

  model = TransformerEncoder(
    vocab=20, length=6, classes=2, n_layers=3, dim=8, heads=2, rngs=nnx.Rngs(0)
  )
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  config = dict(learning_rate=SCHEDULE, layerwise_decay=0.75)
  tx = adamwdl(**config)
  metrics = layer_metrics(**config)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(20, size=(4, 6)), jnp.int32)
  labels = jnp.asarray(rng.integers(2, size=4), jnp.int32)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params, rest)(tokens)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (
      optax.apply_updates(params, updates),
      opt_state,
      updates,
      metrics(params, updates, opt_state),
    )

  opt_state = tx.init(params)
  names = jax.tree.leaves(
    jax.tree.map_with_path(lambda path, _: jax.tree_util.keystr(path), params)
  )
  row_of = lambda name: (
    f"layer_{m.group(1)}" if (m := re.search(r"'layers'\]\[(\d+)\]", name))
    else "bottom" if "embedding" in name else "top"
  )  # fmt: skip
  rows = {}
  for i, name in enumerate(names):
    rows.setdefault(row_of(name), []).append(i)
  exponents = {"bottom": 4, "layer_0": 3, "layer_1": 2, "layer_2": 1, "top": 0}
  for t in range(2):
    old = params
    params, opt_state, updates, out = step(params, opt_state)
    picks = {r: functools.partial(_pick, idx) for r, idx in rows.items()}
    _check(
      out, {r: float(SCHEDULE(t)) * 0.75**e for r, e in exponents.items()}, picks, old, updates
    )


def test_a_schedule_needs_the_adam_count():
  params = _tree(1)
  metrics = layer_metrics(learning_rate=SCHEDULE, layerwise_decay=0.5)
  with pytest.raises(ValueError, match="ScaleByAdamState"):
    metrics(params, params, optax.EmptyState())


def test_lr_mults_add_a_row_per_multiple():
  params = _tree(2)
  config = dict(learning_rate=0.1, layerwise_decay=0.5, lr_mults=[(r".*\.bias", 2.0)])
  tx = adamwdl(**config)
  updates, opt_state = tx.update(_grads(params, 0), tx.init(params), params)
  out = layer_metrics(**config)(params, updates, opt_state)
  lrs = {k: round(float(v), 6) for k, v in out.items() if k.startswith("lr/")}
  assert lrs == {
    "lr/bottom": 0.0125,
    "lr/layer_0": 0.025,
    "lr/layer_0/x2": 0.05,
    "lr/layer_1": 0.05,
    "lr/layer_1/x2": 0.1,
    "lr/top": 0.1,
  }
  bias = lambda t: [t["encoder"]["layers"][1]["ffn"]["bias"]]
  want = _norm_ratio(bias(updates), bias(params))
  np.testing.assert_allclose(out["update_ratio/layer_1/x2"], want, rtol=1e-5)


def test_an_injected_decay_schedule_and_an_array_decay():
  params = _tree(2)
  decay = optax.linear_schedule(0.5, 1.0, 10)
  config = dict(learning_rate=0.1, layerwise_decay=decay)
  tx = optax.inject_hyperparams(adamwdl)(**config)
  metrics = jax.jit(layer_metrics(**config))
  opt_state = tx.init(params)
  rows, exponents = _bert_rows(2)
  for t in range(3):
    updates, opt_state = tx.update(_grads(params, t), opt_state, params)
    d = float(np.float32(decay(t)))
    _check(metrics(params, updates, opt_state), {r: 0.1 * d**e for r, e in exponents.items()},
           rows, params, updates)  # fmt: skip
  config = dict(learning_rate=0.1, layerwise_decay=jnp.asarray(0.5))  # an array, not injected
  tx = adamwdl(**config)
  updates, opt_state = tx.update(_grads(params, 0), tx.init(params), params)
  out = layer_metrics(**config)(params, updates, opt_state)
  _check(out, {r: 0.1 * 0.5**e for r, e in exponents.items()}, rows, params, updates)


def test_an_lr_mults_rule_is_one_row_per_layer_named_by_its_multiplier():
  """A rule's parameters keep their suffix in every layer, whatever the layer's other ratios."""
  params = {"layers": [{"w": jnp.ones(4), "b": jnp.ones(2)} for _ in range(3)], "head": jnp.ones(2)}
  config = dict(learning_rate=0.1, layerwise_decay=0.5, lr_mults=[(r".*\.b", 3.0)])
  tx = adamwdl(**config)
  updates, opt_state = tx.update(_grads(params, 0), tx.init(params), params)
  lrs = {k: round(float(v), 6) for k, v in layer_metrics(**config)(params, updates, opt_state).items()
         if k.startswith("lr/")}  # fmt: skip
  assert lrs == {
    "lr/layer_0": 0.0125,
    "lr/layer_0/x3": 0.0375,
    "lr/layer_1": 0.025,
    "lr/layer_1/x3": 0.075,
    "lr/layer_2": 0.05,
    "lr/layer_2/x3": 0.15,
    "lr/top": 0.1,
  }


def test_a_scanned_leaf_of_one_layer_counts_whole_on_any_axis():
  rng = np.random.default_rng(0)
  params = {
    "embed": jnp.ones((6, 3)),
    "head": jnp.ones((3, 2)),
    "block": {"kernel": jnp.asarray(rng.normal(size=(3, 1, 3)), jnp.float32)},
  }
  config = dict(learning_rate=0.1, layerwise_decay=0.5,
                scan_axes=lambda n: 1 if n.startswith("block") else None)  # fmt: skip
  tx = adamwdl(**config)
  g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  updates, opt_state = tx.update(g, tx.init(params), params)
  out = layer_metrics(**config)(params, updates, opt_state)
  u, p = np.asarray(updates["block"]["kernel"]), np.asarray(params["block"]["kernel"])
  np.testing.assert_allclose(out["update_ratio/layer_0"], np.linalg.norm(u) / np.linalg.norm(p),
                             rtol=1e-5)  # fmt: skip


def test_a_decay_rule_under_a_scheduled_decay_keeps_its_rows_apart():
  params = {"layers": [{"w": jnp.ones(4), "b": jnp.ones(2)}] * 2, "head": jnp.ones(2)}
  rule = lambda d, n, name: d if name.endswith("b") else 1.0
  config = dict(learning_rate=0.1, weight_decay=0.0, set_param_lr_fun=rule,
                layerwise_decay=optax.constant_schedule(0.5))  # fmt: skip
  tx = optax.inject_hyperparams(adamwdl, static_args=("set_param_lr_fun",))(**config)
  updates, opt_state = tx.update(_grads(params, 0), tx.init(params), params)
  out = layer_metrics(**config)(params, updates, opt_state)
  assert round(float(out["lr/layer_0"]), 6) == 0.1
  assert round(float(out["lr/layer_0/r0.987654"]), 6) == 0.05  # named at the rows' stand-in decay
