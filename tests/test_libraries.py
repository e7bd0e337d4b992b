"""The default ladder on the JAX model libraries' own model code (issue 22).

- Equinox's BERT and ViT, written as Equinox's docs write them (tests/library_models.py), and
  Haiku's transformer example: placed with the options the libraries guide
  (docs/guides/libraries.md) tells their users to pass, held to the depth contract, checked against
  their real forward pass (``check_ladder``), and trained one step in the library's own style
  against optax.adamw scaled by each parameter's ratio.
- The trees recorded from gemma, MaxText and EasyDeL (tests/fixtures/libraries/*.json, with the
  order in which the forward pass first reads each parameter): rebuilt as jax.ShapeDtypeStruct,
  placed with the fixture's options, held to the contract and to the forward order.

The depth contract, per stack: nothing at the bottom above its stack's lowest layer, a deeper layer
never below a shallower one, the top at ``head_ratio``, and no parameter unrecognised.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_adamwdl
from optax_adamwdl import Placement, adamwdl, check_ladder, lr_placements, lr_ratios, param_names

eqx = pytest.importorskip("equinox")
hk = pytest.importorskip("haiku")

from tests import library_models  # noqa: E402

DECAY = 0.8
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "libraries"


def _placements(params, **options) -> list[Placement]:
  placed = lr_placements(params, DECAY, **options)
  return jax.tree.leaves(placed, is_leaf=lambda x: isinstance(x, Placement))


def _bounds(p: Placement) -> tuple[float, float]:
  r = np.ravel(np.asarray(p.ratio, np.float64))
  return float(r.min()), float(r.max())


def assert_contract(placed: list[Placement], head_ratio: float = 1.0) -> None:
  """The depth contract, stack by stack; every parameter recognised."""
  unrecognised = [p.name for p in placed if p.rule == "unrecognised"]
  assert not unrecognised, f"unrecognised: {unrecognised[:5]}"
  stacks = {p.stack for p in placed}
  for stack in stacks:
    own = [p for p in placed if p.stack == stack]
    layers = [p for p in own if p.position not in ("bottom", "top")]
    scalar = sorted((p for p in layers if isinstance(p.position, int)), key=lambda p: p.position)
    for a, b in zip(scalar, scalar[1:]):
      assert a.ratio <= b.ratio, f"{b.name} (layer {b.position}) is below {a.name}"
    for p in layers:
      if p.position == "layers":  # a scanned leaf: rising along its layer axis
        assert np.all(np.diff(np.ravel(p.ratio)) >= 0), p.name
    lowest = min((_bounds(p)[0] for p in layers), default=None)
    for p in own:
      if p.position == "bottom" and lowest is not None:
        assert _bounds(p)[1] <= lowest, f"{p.name} at the bottom is above layer 0 of {stack!r}"
      if p.position == "top":
        assert p.ratio == head_ratio, f"{p.name} at the top has ratio {p.ratio}"
  assert any(p.position not in ("bottom", "top") for p in placed), "no layer found"


# Towers with inputs of their own, by the module that holds them: each is its own ladder.
TOWERS = ("vision_encoder", "vision_tower", "vision_model", "text_model")


def _tower(name: str) -> str:
  return next((part for part in name.split(".") if part in TOWERS), "")


def assert_forward_order(placed: list[Placement], order: list[str]) -> None:
  """A parameter first read later never has a smaller ratio than one read earlier, per ladder.

  The ladders are stated here, not taken from the placements: each tower named in ``TOWERS``
  (gemma's ``vision_encoder``, EasyDeL's ``vision_tower``, CLIP's ``text_model`` and
  ``vision_model``) is one; everything else is one series ladder, so that two lists of layers that
  run one after the other (MaxText's dense then MoE layers, a scanned block then its remainder) are
  compared with each other. A scanned leaf's layers are read from its first layer to its last, and
  the leaves of one scanned list run side by side (compared element by element).
  """
  by_name = {p.name: p for p in placed}
  missing = [n for n in order if n not in by_name]
  assert not missing, f"order names parameters the tree lacks: {missing[:3]}"
  for tower in {_tower(n) for n in order}:
    top = None  # the parameter read so far that ends with the highest ratio
    for p in (by_name[n] for n in order if _tower(n) == tower):
      low, high = _bounds(p)
      if top is not None and not (top.position == "layers" == p.position and _same_list(top, p)):
        assert low >= _bounds(top)[1] - 1e-12, (
          f"{p.name} (ratio {low:.4g}) is read after {top.name} (ratio {_bounds(top)[1]:.4g})"
        )
      if top is None or high >= _bounds(top)[1]:
        top = p


def _same_list(a: Placement, b: Placement) -> bool:
  ra, rb = np.ravel(a.ratio), np.ravel(b.ratio)
  return a.stack == b.stack and ra.shape == rb.shape and np.array_equal(ra, rb)


def _reference_updates(grads, params, ratios, lr, wd):
  """optax.adamw's first update, scaled leaf by leaf by the ladder's ratio."""
  adamw = optax.adamw(lr, weight_decay=wd)
  updates, _ = adamw.update(grads, adamw.init(params), params)
  return jax.tree.map(lambda u, r: np.asarray(u, np.float64) * np.asarray(r), updates, ratios)


# ---------------------------------------------------------------------------------------------
# Equinox


@pytest.mark.parametrize("build", [library_models.bert_model, library_models.vit_model])
def test_equinox_models_of_the_docs_hold_the_contract(build):
  model, forward, inputs, depth = build()
  params = eqx.filter(model, eqx.is_array)
  placed = _placements(params)
  assert_contract(placed)
  assert max(p.position for p in placed if isinstance(p.position, int)) == depth - 1
  example = inputs if isinstance(inputs, dict) else inputs[0]
  check = check_ladder(forward, params, example, layerwise_decay=DECAY)
  assert not check.problems, str(check)


def test_equinox_vit_sequential_head_is_the_head_and_its_blocks_the_stack():
  model, *_ = library_models.vit_model()
  placed = {p.name: p for p in _placements(eqx.filter(model, eqx.is_array))}
  assert placed["mlp.layers.0.weight"].position == "top"  # eqx.nn.Sequential([LayerNorm, Linear])
  assert placed["mlp.layers.1.weight"].position == "top"
  assert placed["attention_blocks.0.layer_norm.weight"].position == 0  # an unknown list's name
  assert placed["attention_blocks.2.linear2.bias"].position == 2
  assert placed["cls_token"].position == "bottom"


@pytest.mark.parametrize("build", [library_models.bert_model, library_models.vit_model])
def test_equinox_train_step_matches_adamw_per_layer_ratio(build):
  model, _, inputs, _ = build()
  lr, wd = 1e-2, 0.05
  tx = adamwdl(lr, weight_decay=wd, layerwise_decay=DECAY)
  params = eqx.filter(model, eqx.is_array)
  opt_state = tx.init(params)

  if isinstance(inputs, dict):  # BERT, as the example's compute_loss

    def loss_fn(model, batch):
      logits = jax.vmap(lambda x: model(x, enable_dropout=False))(batch)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    batch = inputs
  else:  # ViT, as the example's compute_grads

    def loss_fn(model, batch):
      images, labels = batch
      keys = jax.random.split(jax.random.PRNGKey(1), images.shape[0])
      logits = jax.vmap(model, in_axes=(0, None, 0))(images, False, keys)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    batch = inputs

  @eqx.filter_jit
  def step(model, opt_state, batch):
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, batch)
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss, grads

  new_model, _, loss, grads = step(model, opt_state, batch)
  assert np.isfinite(loss)
  ratios = lr_ratios(params, DECAY)
  expected = _reference_updates(grads, params, ratios, lr, wd)
  got = jax.tree.map(
    lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
    eqx.filter(new_model, eqx.is_array),
    params,
  )
  names = jax.tree.leaves(param_names(params))
  for name, g, e in zip(names, jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g, e, rtol=2e-4, atol=1e-7, err_msg=name)
  assert len(set(jax.tree.leaves(ratios))) > 2  # a ladder, not a constant


# ---------------------------------------------------------------------------------------------
# Haiku


def haiku_rule(decay_rate, n_layers, name):
  """The ladder guide's rule for Haiku's transformer example, whose layers are unnamed.

  Its ``Transformer`` builds each layer's modules in a loop, and Haiku numbers them in the order
  they are made: layer ``i`` holds ``multi_head_attention_i``, ``layer_norm_{2i}``,
  ``layer_norm_{2i+1}``, ``linear_{2i}`` and ``linear_{2i+1}``; ``layer_norm_{2L}`` is the final
  norm. The same rule as docs/guides/libraries.md.
  """
  parts = name.split(".")
  if parts[0] == "transformer":
    module, _, number = parts[1].rpartition("_")
    if not number.isdigit():
      module, number = parts[1], "0"
    i = int(number)
    layer = i if module == "multi_head_attention" else i // 2
    if layer < n_layers:
      return decay_rate ** (n_layers - layer)
    return 1.0  # the final norm
  if parts[1] in ("embed", "positional_embeddings"):
    return decay_rate ** (n_layers + 1)
  return 1.0  # the output projection


def test_haiku_transformer_example_is_refused_by_the_default_ladder():
  # Its layers are unnamed modules made in a loop: no name says which layer a parameter is in.
  _, params, *_ = library_models.haiku_model()
  with pytest.raises(ValueError, match="no parameter name is recognised as a layer"):
    lr_placements(params, DECAY)


def test_haiku_names_split_their_module_paths():
  _, params, *_ = library_models.haiku_model()
  names = jax.tree.leaves(param_names(params))
  assert "transformer.multi_head_attention_2.query.w" in names
  assert "language_model.embed.embeddings" in names
  layered = {"lm/~/transformer/layer_1/layer_norm": {"scale": jnp.ones(2)}}
  assert jax.tree.leaves(param_names(layered)) == ["lm.transformer.layer_1.layer_norm.scale"]


def test_haiku_modules_named_by_layer_hold_the_contract_by_default():
  def forward(tokens):
    x = hk.Embed(11, 8, name="embed")(tokens)
    for i in range(3):
      with hk.name_scope(f"layer_{i}"):
        x = x + hk.Linear(8, name="mlp")(hk.LayerNorm(-1, True, True, name="layer_norm")(x))
    return hk.Linear(11, name="lm_head")(hk.LayerNorm(-1, True, True, name="final_norm")(x))

  transformed = hk.without_apply_rng(hk.transform(forward))
  tokens = library_models.haiku_tokens()
  params = transformed.init(jax.random.PRNGKey(0), tokens)
  assert any("/" in k for k in params)
  placed = _placements(params)
  assert_contract(placed)
  assert {p.position for p in placed} == {"bottom", 0, 1, 2, "top"}
  assert check_ladder(transformed.apply, params, tokens, layerwise_decay=DECAY).ok


def test_haiku_transformer_example_with_the_guide_rule():
  transformed, params, forward, tokens, depth = library_models.haiku_model()
  placed = _placements(params, n_layers=depth, set_param_lr_fun=haiku_rule)
  ratios = {p.name: p.ratio for p in placed}
  assert ratios["transformer.multi_head_attention.query.w"] == DECAY**depth
  assert ratios["transformer.linear_5.w"] == DECAY
  assert ratios["transformer.layer_norm_6.scale"] == 1.0
  assert ratios["language_model.embed.embeddings"] == DECAY ** (depth + 1)
  check = check_ladder(
    forward, params, tokens, layerwise_decay=DECAY, n_layers=depth, set_param_lr_fun=haiku_rule
  )
  assert check.ok, str(check)


def test_haiku_train_step_matches_adamw_per_layer_ratio():
  transformed, params, _, tokens, depth = library_models.haiku_model()
  lr, wd = 1e-2, 0.05
  tx = adamwdl(
    lr, weight_decay=wd, layerwise_decay=DECAY, n_layers=depth, set_param_lr_fun=haiku_rule
  )
  opt_state = tx.init(params)

  def loss_fn(params, rng, tokens):  # the example's lm_loss_fn
    logits = transformed.apply(params, rng, tokens)
    targets = jax.nn.one_hot(tokens, library_models.HK_VOCAB)
    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1).mean()

  @jax.jit
  def update(params, opt_state, rng, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng, tokens)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  new_params, _, loss, grads = update(params, opt_state, jax.random.PRNGKey(3), tokens)
  assert np.isfinite(loss)
  ratios = lr_ratios(params, DECAY, n_layers=depth, set_param_lr_fun=haiku_rule)
  expected = _reference_updates(grads, params, ratios, lr, wd)
  got = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), new_params, params)
  for name, g, e in zip(
    jax.tree.leaves(param_names(params)), jax.tree.leaves(got), jax.tree.leaves(expected)
  ):
    np.testing.assert_allclose(g, e, rtol=2e-4, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Recorded trees: gemma, MaxText, EasyDeL


def _tree(node):
  if isinstance(node, dict) and set(node) == {"shape", "dtype"}:
    return jax.ShapeDtypeStruct(tuple(node["shape"]), jnp.dtype(node["dtype"]))
  if isinstance(node, dict):
    return {k: _tree(v) for k, v in node.items()}
  if isinstance(node, list):
    return [_tree(v) for v in node]
  raise TypeError(f"not a fixture tree node: {node!r}")


def _name(path) -> str:
  """A recorded key path as the dotted name param_names gives it."""
  name = ".".join(str(k) for k in path) if isinstance(path, list | tuple) else str(path)
  return ".".join(p for p in name.replace("/", ".").split(".") if p != "~")


def load_fixture(path: pathlib.Path):
  fixture = json.loads(path.read_text())
  options = dict(fixture.get("options") or {})
  return fixture, _tree(fixture["tree"]), options


FIXTURE_FILES = sorted(FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.stem for p in FIXTURE_FILES])
def test_recorded_library_tree_holds_the_contract_and_the_forward_order(path):
  fixture, tree, options = load_fixture(path)
  options.pop("layerwise_decay", None)
  placed = _placements(tree, **options)
  assert_contract(placed, options.get("head_ratio", 1.0))
  order = [_name(p) for p in fixture["order"]]
  assert_forward_order(placed, order)


SCANNED_FILES = [p for p in FIXTURE_FILES if "scan_axes" in (load_fixture(p)[2])]


@pytest.mark.parametrize("path", SCANNED_FILES, ids=[p.stem for p in SCANNED_FILES])
def test_recorded_scanned_tree_without_scan_axes_is_refused(path):
  _, tree, options = load_fixture(path)
  options.pop("scan_axes")
  options.pop("layerwise_decay", None)
  with pytest.raises(ValueError, match="scan_axes"):
    _placements(tree, **options)


# ---------------------------------------------------------------------------------------------
# The three rules on hand-made trees of the libraries' names


def _block(width=4, extra=()):
  return {
    "mlp": {"kernel": jnp.zeros((width,) + tuple(extra) + (width,))},
    "pre_norm": {"scale": jnp.ones((width,) + tuple(extra))},
  }


def test_gemma3_text_layers_beside_a_siglip_tower_are_the_main_stack():
  # Issue 22's crash: 'NoneType' object has no attribute 'depth'.
  vision_block = {"MlpBlock_0": {"Dense_0": {"kernel": jnp.zeros((4, 4))}}}
  tree = {
    "embedder": {
      "input_embedding": jnp.zeros((10, 4)),
      "mm_input_projection": {"w": jnp.zeros((4, 4))},
    },
    **{f"layer_{i}": _block() for i in range(3)},
    "final_norm": {"scale": jnp.ones(4)},
    "vision_encoder": {
      "siglip_encoder": {
        "embedding": {"kernel": jnp.zeros((2, 2, 3, 4))},
        "Transformer": {
          **{f"encoderblock_{i}": vision_block for i in range(2)},
          "encoder_norm": {"scale": jnp.ones(4)},
        },
      }
    },
  }
  placed = {p.name: p for p in _placements(tree)}
  assert_contract(list(placed.values()))
  assert placed["embedder.input_embedding"].stack == placed["layer_0.mlp.kernel"].stack == ""
  assert placed["embedder.input_embedding"].ratio == DECAY**4
  assert placed["final_norm.scale"].position == "top"
  assert placed["vision_encoder.siglip_encoder.embedding.kernel"].stack == "vision_encoder"
  assert placed["vision_encoder.siglip_encoder.embedding.kernel"].ratio == DECAY**3


def test_lists_side_by_side_in_one_module_run_in_series_in_the_order_their_names_say():
  tree = {  # MaxText's Gemma 3 decoder, scanned: a block of 2 repeats, then a remainder of 2
    "token_embedder": {"embedding": jnp.zeros((10, 4))},
    "decoder": {
      "layers": {"layers_0": _block(extra=(2,)), "layers_1": _block(extra=(2,))},
      "layers_remainder": {"layers_0": _block(), "layers_1": _block()},
      "decoder_norm": {"scale": jnp.ones(4)},
    },
  }
  placed = {p.name: p for p in _placements(tree, scan_axes={"layers": 1})}
  np.testing.assert_allclose(
    placed["decoder.layers.layers_1.mlp.kernel"].ratio.ravel(), [DECAY**4, DECAY**3]
  )
  assert placed["decoder.layers_remainder.layers_0.mlp.kernel"].ratio == DECAY**2
  assert placed["decoder.layers_remainder.layers_1.mlp.kernel"].position == 3
  assert placed["token_embedder.embedding"].ratio == DECAY**5
  with pytest.raises(ValueError, match=r"scan_axes=\{'layers': 1\}"):
    _placements(tree)  # scanned, and not said so


def test_moe_layers_run_after_dense_layers_in_one_ladder():
  tree = {
    "decoder": {
      **{f"moe_layers_{i}": _block() for i in range(3)},
      "dense_layers_0": _block(),
      "logits_dense": {"kernel": jnp.zeros((4, 10))},
    }
  }
  placed = {p.name: p for p in _placements(tree)}
  assert placed["decoder.dense_layers_0.mlp.kernel"].position == 0
  assert placed["decoder.moe_layers_0.mlp.kernel"].position == 1
  assert placed["decoder.moe_layers_2.mlp.kernel"].ratio == DECAY
  assert placed["decoder.logits_dense.kernel"].rule == "head"
  # Given a ladder each, they are parallel.
  apart = {
    p.name: p for p in _placements(tree, stacks=["decoder.dense_layers_0", "decoder.moe_layers_0"])
  }
  assert apart["decoder.moe_layers_0.mlp.kernel"].stack == "decoder.moe_layers_0"


def test_lists_whose_names_do_not_say_series_or_parallel_are_refused():
  tree = {"a_blocks": [_block(), _block()], "b_blocks": [_block(), _block()]}
  with pytest.raises(ValueError, match=r"stacks=\['a_blocks', 'b_blocks'\]"):
    _placements(tree)
  placed = _placements(tree, stacks=["a_blocks", "b_blocks"])
  assert {p.stack for p in placed} == {"a_blocks", "b_blocks"}
  towers = {"text_layers": [_block(), _block()], "vision_layers": [_block(), _block(), _block()]}
  assert {p.stack for p in _placements(towers)} == {"text_layers", "vision_layers"}


def test_a_sequential_beside_the_stack_is_a_head_or_refused_never_a_ladder_of_its_own():
  norm_then_linear = [  # eqx.nn.Sequential([LayerNorm, Linear]): its modules sit in "layers"
    {"weight": jnp.ones(4), "bias": jnp.zeros(4)},
    {"weight": jnp.zeros((2, 4)), "bias": jnp.zeros(2)},
  ]
  tree = {"blocks": [_block(), _block()], "head": {"layers": norm_then_linear}}
  placed = {p.name: p for p in _placements(tree)}
  assert placed["blocks.1.mlp.kernel"].position == 1
  assert placed["head.layers.1.weight"].position == "top"
  # A field called "layers" beside the stack: two lists side by side, whose names do not say.
  with pytest.raises(ValueError, match=r"stacks=\['blocks', 'layers'\]"):
    _placements({"blocks": [_block(), _block()], "layers": norm_then_linear})
  # Different modules under a name no rule knows are no stack; identical ones are.
  mixed = {"stuff": [_block(), {"other": {"kernel": jnp.zeros((4, 4))}}], "units": [_block()] * 2}
  placed = {p.name: p for p in _placements(mixed)}
  assert placed["units.1.mlp.kernel"].position == 1
  assert placed["stuff.1.other.kernel"].position == "top"  # not a layer


# Found by review: trees the rules first got wrong in silence.


def test_haiku_names_a_loops_first_module_without_its_index():
  """Modules a loop makes without name= are block, block_1, block_2: block is layer 0."""

  class Block(hk.Module):
    def __call__(self, x):
      return x + hk.nets.MLP([16, 8])(hk.LayerNorm(-1, True, True)(x))

  def forward(ids):
    x = hk.Embed(10, 8)(ids)
    for _ in range(3):
      x = Block()(x)
    return hk.Linear(2, name="head")(hk.LayerNorm(-1, True, True, name="final_norm")(x))

  model = hk.without_apply_rng(hk.transform(forward))
  ids = jnp.zeros((2, 5), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), ids)
  table = optax_adamwdl.lr_table(params, 0.8)
  assert [(r.layer, r.rule) for r in table.rows] == [
    ("bottom", "embedding"), ("0", "layer"), ("1", "layer"), ("2", "layer"), ("top", "head")
  ]  # fmt: skip
  assert optax_adamwdl.check_ladder(model.apply, params, ids, layerwise_decay=0.8).ok


def test_lists_under_modules_that_are_not_towers_are_refused():
  """blocks, then an eqx.nn.MLP (its field is called layers) on their output: not two towers."""
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  params = {
    "embedding": eqx.nn.Embedding(10, 8, key=keys[0]),
    "blocks": tuple(eqx.nn.Linear(8, 8, key=k) for k in keys[1:4]),
    "proj": eqx.nn.MLP(8, 8, 8, depth=2, key=keys[4]),
    "out": eqx.nn.Linear(8, 2, key=keys[5]),
  }
  params = eqx.filter(params, eqx.is_array)
  with pytest.raises(ValueError, match=r"say neither that they are towers.*stacks=\['proj'\]"):
    optax_adamwdl.lr_table(params, 0.8)
  table = optax_adamwdl.lr_table(params, 0.8, stacks=["proj"])  # as the message says
  assert {r.stack for r in table.rows} == {"", "proj"}


def test_a_conv_inside_a_list_that_is_not_a_stack_is_not_a_stem():
  """torchvision ResNet names: layer2's blocks differ (a downsample), so layer2 is no stack; its
  conv1 is then unrecognised (and reported), not a stem below every layer."""
  shapes = {"conv1.weight": (8, 3, 7, 7), "layer2.0.conv1.weight": (16, 8, 3, 3),
            "layer2.0.downsample.0.weight": (16, 8, 1, 1), "layer2.1.conv1.weight": (16, 16, 3, 3),
            "fc.weight": (10, 16)}  # fmt: skip
  placed = optax_adamwdl.lr_placements({k: jnp.zeros(s) for k, s in shapes.items()}, 1.0)
  assert placed["conv1.weight"].rule == "stem"
  assert placed["layer2.0.conv1.weight"].rule == "unrecognised"


def test_a_sequential_with_parameter_free_layers_between_counts_its_parameterised_layers():
  """Equinox's CNN tutorial: Conv2d, MaxPool, relu, ..., Linear, Linear at indices 0, 4, 6, 8."""
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  model = eqx.nn.Sequential([
    eqx.nn.Conv2d(1, 3, kernel_size=4, key=keys[0]), eqx.nn.MaxPool2d(kernel_size=2),
    eqx.nn.Lambda(jax.nn.relu), eqx.nn.Lambda(jnp.ravel),
    eqx.nn.Linear(12, 8, key=keys[1]), eqx.nn.Lambda(jax.nn.sigmoid),
    eqx.nn.Linear(8, 8, key=keys[2]), eqx.nn.Lambda(jax.nn.relu),
    eqx.nn.Linear(8, 2, key=keys[3]),
  ])  # fmt: skip
  table = optax_adamwdl.lr_table(eqx.filter(model, eqx.is_array), 0.8)
  assert [(r.layer, r.ratio) for r in table.rows] == [
    ("0", 0.8**4), ("1", 0.8**3), ("2", 0.8**2), ("3", 0.8)
  ]  # fmt: skip
