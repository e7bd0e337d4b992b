"""lr_mults and wd_mults: multipliers by name pattern, composed with the ladder and the decay mask.

The reference is optax.adamw, one per parameter, at the learning rate and weight decay that the
rules state: ratio x multiplier, and lambda x mask x multiplier. (The generated differential test
draws the multipliers too, against tests/reference.py.)
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import (
  adamwdl,
  lr_placements,
  lr_ratios,
  lr_table,
  recipes,
  scale_by_layerwise_lr,
)

LR, WD = 0.1, 0.05


def _params():
  rng = np.random.default_rng(0)
  leaf = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {
    "embeddings": {"word": leaf(5, 4), "LayerNorm": {"scale": leaf(4)}},
    "encoder": {
      "layers": [
        {"attn": {"kernel": leaf(4, 4)}, "ffn": {"kernel": leaf(4, 4), "bias": leaf(4)}}
        for _ in range(3)
      ]  # fmt: skip
    },
    "classifier": {"kernel": leaf(4, 2), "bias": leaf(2)},
  }


def _grads(params, t):
  rng = np.random.default_rng(t + 10)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _run(tx, params, steps=3, jit=True):
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  for t in range(steps):
    updates, state = update(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _reference(params, lr_of, wd_of, steps=3):
  """optax.adamw on each leaf alone, at its own learning rate and weight decay."""
  names = jax.tree.leaves(jax.tree.map_with_path(lambda k, _: jax.tree_util.keystr(k, simple=True,
                                                                                 separator="."),
                                                 params))  # fmt: skip
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for i, (name, p) in enumerate(zip(names, leaves)):
    tx = optax.adamw(LR * lr_of(name), weight_decay=wd_of(name))
    state = tx.init(p)
    for t in range(steps):
      g = jax.tree.leaves(_grads(params, t))[i]
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    out.append(p)
  return treedef.unflatten(out)


def _ladder(name):
  """The default ladder at 0.5 on this tree: embeddings 0.0625, layer i 0.5**(3-i), the rest 1."""
  if name.startswith("embeddings"):
    return 0.5**4
  if name.startswith("encoder.layers."):
    return 0.5 ** (3 - int(name.split(".")[2]))
  return 1.0


LR_MULTS = [(r"classifier\..*", 10.0), (r".*\.attn\..*", 1.5), (r"encoder\..*", 0.5)]
WD_MULTS = [(r".*\.kernel", 2.0), (r".*", 0.0)]  # big_vision's default: only kernels decay


def _first(rules, name):
  return next((m for p, m in rules if re.fullmatch(p, name)), 1.0)


@pytest.mark.parametrize("decay_follows_ratio", [True, False])
def test_the_multipliers_are_those_the_rules_state(decay_follows_ratio):
  params = _params()
  tx = adamwdl(LR, weight_decay=WD, layerwise_decay=0.5, lr_mults=LR_MULTS, wd_mults=WD_MULTS,
               decay_follows_ratio=decay_follows_ratio)  # fmt: skip
  got, _ = _run(tx, params)
  ratio = lambda n: _ladder(n) * _first(LR_MULTS, n)
  if decay_follows_ratio:  # the decay follows lr x ratio: optax.adamw at lr x ratio, with lambda
    want = _reference(params, ratio, lambda n: WD * _first(WD_MULTS, n))
  else:  # decay at lr alone: optax.adamw at lr x ratio with lambda / ratio
    want = _reference(params, ratio, lambda n: WD * _first(WD_MULTS, n) / ratio(n))
  # The first match wins: the top layer's attention kernel gets 0.5 x 1.5 (not x 1.5 x 0.5).
  assert lr_ratios(params, 0.5, lr_mults=LR_MULTS)["encoder"]["layers"][2]["attn"]["kernel"] == 0.75
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7), got, want)


def test_a_mask_says_whether_and_wd_mults_how_much():
  params = _params()
  no_norms = lambda name: "LayerNorm" not in name
  tx = adamwdl(LR, weight_decay=WD, apply_decay_param_fun=no_norms,
               wd_mults=[(r"embeddings\..*", 3.0)])  # fmt: skip
  got, _ = _run(tx, params)
  wd = lambda n: WD * no_norms(n) * (3.0 if n.startswith("embeddings") else 1.0)
  want = _reference(params, lambda n: 1.0, wd)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7), got, want)
  placed = lr_placements(
    params, apply_decay_param_fun=no_norms, wd_mults=[(r"embeddings\..*", 3.0)]
  )
  assert placed["embeddings"]["LayerNorm"]["scale"].weight_decay == 0.0  # masked: off, whatever w
  assert placed["embeddings"]["word"][7:9] == (3.0, r"embeddings\..*")


def test_a_zero_multiplier_freezes_exactly_and_keeps_no_moments():
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), _grads(params, 0))
  grads["classifier"]["kernel"] = jnp.ones_like(params["classifier"]["kernel"])
  tx = adamwdl(LR, layerwise_decay=0.5, lr_mults=[(r"embeddings\..*", 0.0)])
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  assert np.all(np.asarray(updates["embeddings"]["word"]) == 0)  # NaN gradient, exact 0
  mu = state[0].inner_state.mu  # optax.masked(scale_by_adam): frozen leaves hold a MaskedNode
  assert isinstance(mu["embeddings"]["word"], optax.MaskedNode)
  assert mu["classifier"]["kernel"].shape == (4, 2)
  # With an injected decay: which leaves keep moments does not depend on it, so it is allowed.
  injected = optax.inject_hyperparams(adamwdl)(LR, layerwise_decay=0.5,
                                               lr_mults=[(r"embeddings\..*", 0.0)])  # fmt: skip
  got, _ = _run(injected, params)
  np.testing.assert_array_equal(got["embeddings"]["word"], params["embeddings"]["word"])


def test_multipliers_are_constants_under_inject_hyperparams_and_in_any_wrapper():
  params = _params()
  config = dict(weight_decay=WD, layerwise_decay=0.5, lr_mults=LR_MULTS, wd_mults=WD_MULTS)
  want, _ = _run(adamwdl(LR, **config), params)
  injected = optax.inject_hyperparams(adamwdl)(LR, **config)  # the lists: static, by their type
  got, state = _run(injected, params)
  assert set(state.hyperparams) == {
    "learning_rate",
    "b1",
    "b2",
    "eps",
    "eps_root",
    "weight_decay",
    "layerwise_decay",
    "head_ratio",
    "min_ratio",
  }
  # Injected hyperparameters are float32 arrays: the ratios are computed in float32.
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5), got, want)
  # optax.masked leaves the classifier out: it is another transformation's, so a rule for it
  # would do nothing here, and is refused; the other rules apply as before.
  hide = lambda p: (
    jax.tree.map(lambda _: True, p) | {"classifier": {"kernel": False, "bias": False}}
  )
  with pytest.raises(ValueError, match=r"lr_mults pattern .classifier.{5}. matches no parameter"):
    optax.masked(adamwdl(LR, **config), hide).init(params)
  rest = dict(config, lr_mults=LR_MULTS[1:])
  got, _ = _run(optax.masked(adamwdl(LR, **rest), hide), params)
  np.testing.assert_allclose(
    got["encoder"]["layers"][0]["attn"]["kernel"],
    want["encoder"]["layers"][0]["attn"]["kernel"],
    rtol=1e-6,
  )


def test_a_scanned_leaf_takes_the_multiplier_on_every_slice():
  params = {"embed": jnp.ones((3, 2)), "layers": {"attn": jnp.ones((4, 2, 2)),
                                                  "ffn": jnp.ones((4, 2, 2))}}  # fmt: skip
  tx = scale_by_layerwise_lr(0.5, scan_axes={"layers": 0}, lr_mults=[(r".*attn", 2.0)])
  updates, _ = tx.update(params, tx.init(params))
  np.testing.assert_allclose(updates["layers"]["attn"][:, 0, 0], 2 * 0.5 ** np.arange(4, 0, -1))
  np.testing.assert_allclose(updates["layers"]["ffn"][:, 0, 0], 0.5 ** np.arange(4, 0, -1))


@pytest.mark.parametrize(
  "kwargs, error, message",
  [
    (
      dict(lr_mults=[("classifier", 2.0)]),
      ValueError,
      r"lr_mults pattern 'classifier' matches no parameter",
    ),  # fullmatch: not a prefix
    (dict(wd_mults=[(r".*\.kernl", 0.0)]), ValueError, r"wd_mults pattern '\.\*\\\\\.kernl'"),
    (
      dict(lr_mults=[(r".*kernel", 2.0), (r"encoder\..*", 0.5)], strict_mults=True),
      ValueError,
      r"Parameter 'encoder.layers.0.attn.kernel' matches 2 lr_mults patterns",
    ),
    (dict(lr_mults=[("(", 2.0)]), ValueError, r"lr_mults pattern '\(' is not a regular expression"),
    (dict(lr_mults=[(".*", -1.0)]), ValueError, r"lr_mults\['\.\*'\] must be 0 or a float32"),
    (dict(wd_mults=[(".*", 1e40)]), ValueError, r"wd_mults\['\.\*'\] must be 0 or a float32"),
    (dict(wd_mults=[(".*", 1e-50)]), ValueError, r"must be 0 or a float32 normal number"),
    (dict(lr_mults=[(".*", 10**400)]), ValueError, r"must be 0 or a float32 normal number"),
    (
      dict(lr_mults=[(".*", 0.5), ("classifier.kernel", 10.0)]),
      ValueError,
      r"'classifier\.kernel' is never the first match",
    ),  # shadowed: it would do nothing
    (dict(lr_mults=[(re.compile("x"), 2.0)]), TypeError, r"must be a str.*pass its \.pattern"),
    (dict(lr_mults=[(".*", jnp.float32(2.0))]), TypeError, r"must be a Python number"),
    (dict(lr_mults=[(".*", True)]), TypeError, r"must be a Python number"),
    (dict(wd_mults=".*"), TypeError, r"wd_mults must be a sequence of \(pattern, multiplier\)"),
    (dict(lr_mults=[(".*",)]), TypeError, r"each rule is a \(pattern, multiplier\) pair"),
  ],
)
def test_bad_rules_are_refused_by_name(kwargs, error, message):
  params = _params()
  with pytest.raises(error, match=message):
    tx = adamwdl(LR, layerwise_decay=0.5, **kwargs)
    tx.init(params)
  with pytest.raises(error, match=message):  # a traced init refuses the same, at trace time
    jax.jit(adamwdl(LR, layerwise_decay=0.5, **kwargs).init)(params)


def test_the_table_shows_each_rows_ratio_pattern_and_decay_from_adamwdls_own_config():
  params = _params()
  config = dict(learning_rate=LR, b1=0.9, weight_decay=WD, layerwise_decay=0.5,
                lr_mults=LR_MULTS, wd_mults=WD_MULTS)  # fmt: skip
  adamwdl(**config)  # the same dict configures both
  table = lr_table(params, **config)
  rows = {(r.layer, r.rule, r.lr_pattern, r.weight_decay): r for r in table.rows}
  assert rows["2", "layer", r".*\.attn\..*", 2.0].ratio == 0.75  # 0.5 x 1.5
  assert rows["2", "layer", r"encoder\..*", 2.0].ratio == 0.25  # ffn.kernel: 0.5 x 0.5
  assert rows["2", "layer", r"encoder\..*", 0.0].n_params == 4  # ffn.bias: not decayed
  assert rows["top", "head", r"classifier\..*", 2.0].ratio == 10.0
  text = str(table).splitlines()
  assert text[0].split() == ["layer", "rule", "lr", "ratio", "lr_mults", "weight", "decay",
                             "wd_mults", "params", "tensors"]  # fmt: skip
  kernel = next(line for line in text if line.startswith("top") and "0.1" in line)
  assert r"classifier\..*" in kernel  # lambda 0.05 x 2.0
  with pytest.raises(TypeError, match=r"Unknown argument\(s\) \['learning_rat'\]"):
    lr_table(params, learning_rat=0.1)


def test_the_paddle_guides_rule_is_visible_on_hugging_face_names():
  """Paddle names its norms norm1/norm2; Hugging Face spells LayerNorm. The table shows both."""
  params = _params()
  paddle_rule = lambda name: not any(k in name for k in ("bias", "norm"))
  table = lr_table(params, 0.5, apply_decay_param_fun=paddle_rule, weight_decay=WD)
  bottom = [r for r in table.rows if r.layer == "bottom"]
  assert {r.weight_decay for r in bottom} == {1.0}  # LayerNorm.scale decays: the rule missed it
  table = lr_table(params, 0.5, weight_decay=WD,
                   apply_decay_param_fun=lambda n: not re.search(r"bias|norm", n, re.I))  # fmt: skip
  assert {r.n_params: r.weight_decay for r in table.rows if r.layer == "bottom"} == {
    20: 1.0,
    4: 0.0,
  }


def test_a_preset_under_inject_hyperparams_names_its_functions_static():
  """A preset's mask is a function: inject_hyperparams takes it for a schedule unless static."""
  params = {"cls_token": jnp.ones((1, 1, 4)), "blocks": [{"mlp": {"weight": jnp.ones((4, 4))}}] * 2,
            "head": {"weight": jnp.ones((2, 4)), "bias": jnp.ones(2)}}  # fmt: skip
  config = recipes.timm(layer_decay=0.5, weight_decay=0.05, final_norm=None)
  with pytest.raises(TypeError, match=r"mask was called with a step count.*static_args"):
    optax.inject_hyperparams(adamwdl)(LR, **config).init(params)
  static = [k for k, v in config.items() if callable(v)]
  injected = optax.inject_hyperparams(adamwdl, static_args=static)(LR, **config)
  want, _ = _run(adamwdl(LR, **config), params)
  got, _ = _run(injected, params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6), got, want)


def test_frozen_parameters_take_no_part_in_the_clipping_norm():
  params = _params()
  grads = _grads(params, 0)
  grads["embeddings"]["word"] = jnp.full_like(grads["embeddings"]["word"], jnp.nan)
  clip = optax.clip_by_global_norm(1.0)
  tx = adamwdl(LR, lr_mults=[(r"embeddings\.word", 0.0)], grad_clip=clip, weight_decay=0.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(updates["embeddings"]["word"]) == 0)
  # The others are clipped by their own norm: as if the frozen leaf were not there.
  rest = jax.tree.map(lambda x: x, grads)
  del rest["embeddings"]["word"]
  trimmed = jax.tree.map(lambda x: x, params)
  del trimmed["embeddings"]["word"]
  plain = adamwdl(LR, grad_clip=clip, weight_decay=0.0)
  want, _ = plain.update(rest, plain.init(trimmed), trimmed)
  np.testing.assert_allclose(
    updates["classifier"]["kernel"], want["classifier"]["kernel"], rtol=1e-6
  )
