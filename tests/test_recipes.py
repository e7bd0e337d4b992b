"""The presets of ``optax_adamwdl.recipes`` against the originals they restate.

Each original gives every parameter a learning-rate scale and a weight decay (its parameter
groups). timm's is checked against timm itself: live where timm imports, and always against
the numbers it gave, recorded in ``tests/fixtures/recipes/timm_vit.json`` by
``scripts/record_timm_groups.py``. BEiT's, MAE's and ELECTRA's need their whole repositories
(and TensorFlow 1 for ELECTRA), so their grouping functions are restated below, line for line,
with the source cited, and run on the original models' parameter names. Paddle's is checked
against real Paddle, training.
"""

import collections
import importlib.util
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl, lr_placements, param_names, recipes

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "recipes" / "timm_vit.json"
SCRIPT = ROOT / "scripts" / "record_timm_groups.py"


def _tree(shapes):
  """A nested dict of ShapeDtypeStructs whose dotted names are the keys of ``shapes``."""
  tree = {}
  for name, shape in shapes.items():
    *parents, leaf = name.split(".")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  return tree


def _ours(shapes, config):
  """{name: (learning-rate ratio, weight decay)} that ``adamwdl(**config)`` gives."""
  tree = _tree(shapes)
  placements = jax.tree.leaves(lr_placements(tree, **config), is_leaf=lambda x: hasattr(x, "ratio"))
  return {p.name: (p.ratio, config["weight_decay"] * p.weight_decay) for p in placements}


def _max_error(ours, theirs, frozen=()):
  """The largest |ours - theirs| over ratios and weight decays (decay of frozen ones ignored)."""
  assert ours.keys() == theirs.keys()
  errors = [abs(ours[n][0] - theirs[n][0]) for n in theirs]
  errors += [abs(ours[n][1] - theirs[n][1]) for n in theirs if n not in frozen]
  return max(errors)


def _assert_same(ours, theirs, frozen=()):
  wrong = [
    (n, ours[n], theirs[n])
    for n in theirs
    if not np.isclose(ours[n][0], theirs[n][0], rtol=1e-12, atol=0)
    or (n not in frozen and not np.isclose(ours[n][1], theirs[n][1], rtol=1e-12, atol=0))
  ]
  assert not wrong, f"{len(wrong)} parameters differ (name, ours, original): {wrong[:5]}"
  assert _max_error(ours, theirs, frozen) <= 1e-15


# --- timm: the real function ----------------------------------------------------------------

# Models whose final norm timm groups with the last block (recipes.timm's final_norm).
_FINAL_NORM = dict.fromkeys(
  ["vit_token_head", "vit_no_opt_scale", "vit_min_scale_above_decay", "vit_all_frozen_but_head",
   "deit_distilled", "swin"],
  "norm",
)  # fmt: skip


def _timm_case(model):
  """(shapes, ours, theirs, frozen) of one recorded model."""
  kwargs = dict(model["param_groups_layer_decay"])
  config = recipes.timm(
    kwargs.pop("layer_decay"),
    weight_decay=kwargs.pop("weight_decay"),
    no_weight_decay_list=kwargs.pop("no_weight_decay_list"),
    min_scale=kwargs.pop("min_scale", 0.0),
    no_opt_scale=kwargs.pop("no_opt_scale", None),
    final_norm=model["final_norm"],
  )
  assert not kwargs
  shapes = {p["name"]: p["shape"] for p in model["params"]}
  theirs = {p["name"]: (p["lr_scale"], p["weight_decay"]) for p in model["params"]}
  frozen = {p["name"] for p in model["params"] if p["frozen"]}
  return shapes, _ours(shapes, config), theirs, frozen


def _recorded():
  data = json.loads(FIXTURE.read_text())
  for key, model in data["models"].items():
    model["final_norm"] = _FINAL_NORM.get(key)
  return data


@pytest.mark.parametrize(
  "key", [k for k in json.loads(FIXTURE.read_text())["models"] if k != "vit_no_head"]
)
def test_timm_matches_the_groups_that_timm_gave(key):
  """Per parameter, the scale and decay that timm 1.0.31's param_groups_layer_decay gave."""
  shapes, ours, theirs, frozen = _timm_case(_recorded()["models"][key])
  _assert_same(ours, theirs, frozen)


def test_timm_fixture_covers_what_the_preset_claims():
  models = _recorded()["models"]
  assert any(p["frozen"] for p in models["vit_no_opt_scale"]["params"])  # no_opt_scale
  assert any(p["name"] == "reg_token" for p in models["vit_avg_fc_norm_reg4"]["params"])
  assert any(".downsample." in p["name"] for p in models["convnext"]["params"])  # stages
  lrs = {p["lr_scale"] for p in models["vit_avg_fc_norm_reg4"]["params"]}
  assert min(lrs) == 0.3  # min_scale raised the stem and block 0
  trained = {p["name"] for p in models["vit_all_frozen_but_head"]["params"] if not p["frozen"]}
  assert trained == {"head.weight", "head.bias"}  # no_opt_scale froze the final norm too


def test_timm_headless_model_is_the_one_departure():
  """Without a head (num_classes=0) timm's ladder is one rung shorter: every scale / alpha.

  (The final norm, then timm's top group, gets 1 in both with final_norm=None.)
  """
  shapes, ours, theirs, _ = _timm_case(_recorded()["models"]["vit_no_head"])
  alpha = 0.75
  for name in theirs:
    scale = 1.0 if name.startswith("norm.") else 1 / alpha
    assert np.isclose(theirs[name][0], ours[name][0] * scale, rtol=1e-12), name
    assert theirs[name][1] == ours[name][1]


def test_timm_final_norm_that_matches_nothing_is_an_error():
  shapes = {p["name"]: p["shape"] for p in _recorded()["models"]["convnext"]["params"]}
  with pytest.raises(ValueError, match="norm"):
    _ours(shapes, recipes.timm(0.8))


def test_timm_live_matches_the_original_function():
  """The same comparison, against timm run here (skipped where torch or timm is absent)."""
  for needed in ("torch", "timm"):  # found, not imported: timm's import needs the stand-in
    if importlib.util.find_spec(needed) is None:
      pytest.skip(f"{needed} is not installed")
  spec = importlib.util.spec_from_file_location("record_timm_groups", SCRIPT)
  record_timm_groups = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(record_timm_groups)
  data = record_timm_groups.record()
  for key, model in data["models"].items():
    if key == "vit_no_head":
      continue
    model["final_norm"] = _FINAL_NORM.get(key)
    _, ours, theirs, frozen = _timm_case(model)
    _assert_same(ours, theirs, frozen)


def test_timm_preset_trains_with_those_groups():
  """adamwdl(**recipes.timm(...)) takes the recorded groups' steps (first step, unit gradients)."""
  model = _recorded()["models"]["vit_no_opt_scale"]
  small = {p["name"]: [min(d, 3) for d in p["shape"]] for p in model["params"]}
  kwargs = model["param_groups_layer_decay"]
  config = recipes.timm(kwargs["layer_decay"], weight_decay=kwargs["weight_decay"],
                        no_weight_decay_list=kwargs["no_weight_decay_list"],
                        no_opt_scale=kwargs["no_opt_scale"])  # fmt: skip
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), _tree(small))
  lr = 1e-2
  tx = adamwdl(lr, **config)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  names = param_names(params)
  expected = {p["name"]: p for p in model["params"]}

  def check(update, p, name):
    group = expected[name]
    adam = 1.0 / (1.0 + 1e-8)  # first step, unit gradient
    want = -lr * group["lr_scale"] * (adam + group["weight_decay"] * np.asarray(p))
    # float32: 1 - 0.999 in the bias corrections costs about 1e-5 relative.
    np.testing.assert_allclose(np.asarray(update), want, rtol=2e-5, atol=1e-9, err_msg=name)

  jax.tree.map(check, updates, params, names)


# --- BEiT: beit/optim_factory.py, restated -------------------------------------------------
# microsoft/unilm, beit/optim_factory.py at commit 2312c6fb384689d4ffdbc65360bcce7148cfbeed
# (https://github.com/microsoft/unilm/blob/master/beit/optim_factory.py), as
# beit/run_class_finetuning.py calls it: num_layers = model.get_num_layers();
# values = [layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)];
# skip_weight_decay_list = model.no_weight_decay() = {"pos_embed", "cls_token"}.


def _beit_get_num_layer_for_vit(var_name, num_max_layer):
  if var_name in ("cls_token", "mask_token", "pos_embed"):
    return 0
  elif var_name.startswith("patch_embed"):
    return 0
  elif var_name.startswith("rel_pos_bias"):
    return num_max_layer - 1
  elif var_name.startswith("blocks"):
    layer_id = int(var_name.split(".")[1])
    return layer_id + 1
  else:
    return num_max_layer - 1


def _beit_groups(shapes, layer_decay, weight_decay, skip_list=("pos_embed", "cls_token")):
  """get_parameter_groups(model, weight_decay, skip_list, get_num_layer, get_layer_scale)."""
  num_layers = len({n.split(".")[1] for n in shapes if n.startswith("blocks.")})
  values = [layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)]
  out = {}
  for name, shape in shapes.items():
    if len(shape) == 1 or name.endswith(".bias") or name in skip_list:
      this_weight_decay = 0.0
    else:
      this_weight_decay = weight_decay
    layer_id = _beit_get_num_layer_for_vit(name, len(values))
    out[name] = (values[layer_id], this_weight_decay)
  return out


def beit_names(depth=12, dim=768, heads=12, shared_rel_pos_bias=True, abs_pos=False,
               mean_pooling=True, pretrain=False):  # fmt: skip
  """BEiT's parameter names and shapes (beit/modeling_finetune.py, modeling_pretrain.py)."""
  table = ((2 * 14 - 1) ** 2 + 3, heads)  # 224 / 16 = 14 patches a side, + 3 cls entries
  shapes = {"cls_token": (1, 1, dim)}
  if pretrain:
    shapes["mask_token"] = (1, 1, dim)
  if abs_pos:
    shapes["pos_embed"] = (1, 197, dim)
  shapes["patch_embed.proj.weight"] = (dim, 3, 16, 16)
  shapes["patch_embed.proj.bias"] = (dim,)
  if shared_rel_pos_bias:
    shapes["rel_pos_bias.relative_position_bias_table"] = table
  for i in range(depth):
    b = f"blocks.{i}."
    shapes.update({b + "gamma_1": (dim,), b + "gamma_2": (dim,)})
    shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,)})
    shapes.update({b + "attn.q_bias": (dim,), b + "attn.v_bias": (dim,)})
    shapes[b + "attn.qkv.weight"] = (3 * dim, dim)
    if not shared_rel_pos_bias:
      shapes[b + "attn.relative_position_bias_table"] = table
    shapes.update({b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,)})
    shapes.update({b + "norm2.weight": (dim,), b + "norm2.bias": (dim,)})
    shapes.update({b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,)})
    shapes.update({b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
  if pretrain:
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    shapes.update({"lm_head.weight": (8192, dim), "lm_head.bias": (8192,)})
    return shapes
  norm = "fc_norm" if mean_pooling else "norm"
  shapes.update({f"{norm}.weight": (dim,), f"{norm}.bias": (dim,)})
  shapes.update({"head.weight": (1000, dim), "head.bias": (1000,)})
  return shapes


BEIT_VARIANTS = {
  "base_shared_rel_pos_bias": dict(),
  "base_per_block_rel_pos_bias_abs_pos_cls_norm": dict(
    shared_rel_pos_bias=False, abs_pos=True, mean_pooling=False
  ),
  "large": dict(depth=24, dim=1024, heads=16),
  "pretrain_mask_token": dict(depth=4, pretrain=True),
}


@pytest.mark.parametrize("variant", BEIT_VARIANTS)
@pytest.mark.parametrize("layer_decay, weight_decay", [(0.9, 0.05), (0.65, 0.1)])
def test_beit_matches_its_parameter_groups(variant, layer_decay, weight_decay):
  shapes = beit_names(**BEIT_VARIANTS[variant])
  theirs = _beit_groups(shapes, layer_decay, weight_decay)
  _assert_same(_ours(shapes, recipes.beit(layer_decay, weight_decay)), theirs)


def test_beit_puts_the_shared_rel_pos_bias_at_the_top_where_the_default_ladder_does_not():
  shapes = beit_names(depth=2)
  ours = _ours(shapes, recipes.beit(0.5))
  default = _ours(shapes, dict(layerwise_decay=0.5, weight_decay=0.05))
  name = "rel_pos_bias.relative_position_bias_table"
  assert ours[name][0] == 1.0 and default[name][0] == 0.5**3


# --- MAE: util/lr_decay.py, restated -------------------------------------------------------
# facebookresearch/mae, util/lr_decay.py at commit be47fef7a727943547afb0c670cf1b26034c3c89
# (https://github.com/facebookresearch/mae/blob/main/util/lr_decay.py), as main_finetune.py
# calls it: no_weight_decay_list=model.no_weight_decay() ({"pos_embed", "cls_token"}).


def _mae_get_layer_id_for_vit(name, num_layers):
  if name in ["cls_token", "pos_embed"]:
    return 0
  elif name.startswith("patch_embed"):
    return 0
  elif name.startswith("blocks"):
    return int(name.split(".")[1]) + 1
  else:
    return num_layers


def _mae_param_groups_lrd(shapes, weight_decay, no_weight_decay_list, layer_decay):
  num_layers = len({n.split(".")[1] for n in shapes if n.startswith("blocks.")}) + 1
  layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))
  out = {}
  for n, shape in shapes.items():
    if len(shape) == 1 or n in no_weight_decay_list:
      this_decay = 0.0
    else:
      this_decay = weight_decay
    layer_id = _mae_get_layer_id_for_vit(n, num_layers)
    out[n] = (layer_scales[layer_id], this_decay)
  return out


def mae_vit_names(depth=12, dim=768, global_pool=True, extra_tokens=()):
  """MAE's fine-tuning ViT (models_vit.py: timm 0.3.2's VisionTransformer) names and shapes."""
  shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 197, dim)}
  shapes.update({t: (1, 1, dim) for t in extra_tokens})
  shapes.update({"patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,)})
  for i in range(depth):
    b = f"blocks.{i}."
    shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,)})
    shapes.update({b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,)})
    shapes.update({b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,)})
    shapes.update({b + "norm2.weight": (dim,), b + "norm2.bias": (dim,)})
    shapes.update({b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,)})
    shapes.update({b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
  norm = "fc_norm" if global_pool else "norm"
  shapes.update({f"{norm}.weight": (dim,), f"{norm}.bias": (dim,)})
  shapes.update({"head.weight": (1000, dim), "head.bias": (1000,)})
  return shapes


MAE_VARIANTS = {
  "base_global_pool": dict(),
  "large_cls_token": dict(depth=24, dim=1024, global_pool=False),
  "huge": dict(depth=32, dim=1280),
  "extra_tokens": dict(depth=3, extra_tokens=("mask_token", "dist_token")),
}


@pytest.mark.parametrize("variant", MAE_VARIANTS)
@pytest.mark.parametrize("layer_decay, weight_decay", [(0.75, 0.05), (0.65, 0.3)])
def test_mae_matches_param_groups_lrd(variant, layer_decay, weight_decay):
  shapes = mae_vit_names(**MAE_VARIANTS[variant])
  theirs = _mae_param_groups_lrd(shapes, weight_decay, ("pos_embed", "cls_token"), layer_decay)
  _assert_same(_ours(shapes, recipes.mae(layer_decay, weight_decay)), theirs)


def test_mae_puts_other_tokens_at_the_top_and_decays_0d_parameters():
  shapes = {**mae_vit_names(depth=2, extra_tokens=("mask_token",)), "logit_scale": ()}
  theirs = _mae_param_groups_lrd(shapes, 0.05, ("pos_embed", "cls_token"), 0.5)
  ours = _ours(shapes, recipes.mae(0.5))
  _assert_same(ours, theirs)
  assert ours["mask_token"] == (1.0, 0.05) and ours["logit_scale"] == (1.0, 0.05)


# --- ELECTRA: model/optimization.py, restated ----------------------------------------------
# google-research/electra, model/optimization.py at commit
# ac8d487dcfd98b690a828fc27d6841f270409b29
# (https://github.com/google-research/electra/blob/master/model/optimization.py):
# _get_layer_lrs and AdamWeightDecayOptimizer's apply_gradients / _do_use_weight_decay, on
# TensorFlow variable names (model/modeling.py; run_finetuning.py: "task_specific/" + task).


def _electra_get_layer_lrs(learning_rate, layer_decay, n_layers):
  key_to_depths = collections.OrderedDict(
    {"/embeddings/": 0, "/embeddings_project/": 0, "task_specific/": n_layers + 2}
  )
  for layer in range(n_layers):
    key_to_depths["encoder/layer_" + str(layer) + "/"] = layer + 1
  return {
    key: learning_rate * (layer_decay ** (n_layers + 2 - depth))
    for key, depth in key_to_depths.items()
  }


def _electra_groups(var_names, layer_decay, n_layers, weight_decay_rate):
  """{variable name: (learning rate / base, weight decay)} as apply_gradients assigns them."""
  learning_rate = _electra_get_layer_lrs(1.0, layer_decay, n_layers)
  exclude_from_weight_decay = ["LayerNorm", "layer_norm", "bias"]
  out = {}
  for var_name in var_names:
    keys = [key for key in learning_rate if key in var_name]
    if not keys:
      raise ValueError("No learning rate specified for variable", var_name)
    assert len(keys) == 1, (var_name, keys)  # several keys would update it several times
    param_name = re.match("^(.*):\\d+$", var_name).group(1)  # _get_variable_name
    use_decay = bool(weight_decay_rate) and not any(
      re.search(r, param_name) is not None for r in exclude_from_weight_decay
    )
    out[param_name] = (learning_rate[keys[0]], weight_decay_rate if use_decay else 0.0)
  return out


def electra_var_names(n_layers=12, hidden=768, embedding=768, vocab=30522, task="mnli"):
  """ELECTRA's fine-tuning variables (model/modeling.py), TensorFlow names and shapes."""
  shapes = {
    "electra/embeddings/word_embeddings:0": (vocab, embedding),
    "electra/embeddings/token_type_embeddings:0": (2, embedding),
    "electra/embeddings/position_embeddings:0": (512, embedding),
    "electra/embeddings/LayerNorm/beta:0": (embedding,),
    "electra/embeddings/LayerNorm/gamma:0": (embedding,),
  }
  if embedding != hidden:
    shapes["electra/embeddings_project/kernel:0"] = (embedding, hidden)
    shapes["electra/embeddings_project/bias:0"] = (hidden,)
  for i in range(n_layers):
    b = f"electra/encoder/layer_{i}/"
    for proj in ("query", "key", "value"):
      shapes[b + f"attention/self/{proj}/kernel:0"] = (hidden, hidden)
      shapes[b + f"attention/self/{proj}/bias:0"] = (hidden,)
    shapes[b + "attention/output/dense/kernel:0"] = (hidden, hidden)
    shapes[b + "attention/output/dense/bias:0"] = (hidden,)
    shapes[b + "attention/output/LayerNorm/beta:0"] = (hidden,)
    shapes[b + "attention/output/LayerNorm/gamma:0"] = (hidden,)
    shapes[b + "intermediate/dense/kernel:0"] = (hidden, 4 * hidden)
    shapes[b + "intermediate/dense/bias:0"] = (4 * hidden,)
    shapes[b + "output/dense/kernel:0"] = (4 * hidden, hidden)
    shapes[b + "output/dense/bias:0"] = (hidden,)
    shapes[b + "output/LayerNorm/beta:0"] = (hidden,)
    shapes[b + "output/LayerNorm/gamma:0"] = (hidden,)
  shapes[f"task_specific/{task}/dense/kernel:0"] = (hidden, 3)
  shapes[f"task_specific/{task}/dense/bias:0"] = (3,)
  return shapes


ELECTRA_VARIANTS = {
  "base": dict(),
  "small": dict(hidden=256, embedding=128),
  "large": dict(n_layers=24, hidden=1024, embedding=1024, task="squad"),
}


@pytest.mark.parametrize("variant", ELECTRA_VARIANTS)
@pytest.mark.parametrize("layer_decay, weight_decay", [(0.8, 0.01), (0.9, 0.0)])
def test_electra_matches_get_layer_lrs(variant, layer_decay, weight_decay):
  tf_shapes = electra_var_names(**ELECTRA_VARIANTS[variant])
  n_layers = ELECTRA_VARIANTS[variant].get("n_layers", 12)
  theirs = _electra_groups(tf_shapes, layer_decay, n_layers, weight_decay)
  theirs = {name.replace("/", "."): value for name, value in theirs.items()}
  shapes = {name[: -len(":0")].replace("/", "."): s for name, s in tf_shapes.items()}
  ours = _ours(shapes, recipes.electra(layer_decay, n_layers, weight_decay))
  _assert_same(ours, theirs)
  top = f"electra.encoder.layer_{n_layers - 1}.output.dense.kernel"
  assert ours[top][0] == pytest.approx(layer_decay**2)  # the empty pooler slot


def test_electra_on_hugging_face_names():
  """The same ladder on Hugging Face's ELECTRA names (encoder.layer.N, LayerNorm.scale)."""
  shapes = {"electra.embeddings.word_embeddings.embedding": (50, 8),
            "electra.embeddings.LayerNorm.scale": (8,),
            "electra.embeddings_project.kernel": (8, 16)}  # fmt: skip
  for i in range(3):
    shapes[f"electra.encoder.layer.{i}.attention.self.query.kernel"] = (16, 16)
    shapes[f"electra.encoder.layer.{i}.output.LayerNorm.bias"] = (16,)
  shapes["classifier.dense.kernel"] = (16, 2)
  ours = _ours(shapes, recipes.electra(0.5, 3))
  assert ours["electra.embeddings.word_embeddings.embedding"] == (0.5**5, 0.01)
  assert ours["electra.embeddings.LayerNorm.scale"] == (0.5**5, 0.0)
  assert ours["electra.embeddings_project.kernel"] == (0.5**5, 0.01)
  assert ours["electra.encoder.layer.2.attention.self.query.kernel"] == (0.25, 0.01)
  assert ours["electra.encoder.layer.0.output.LayerNorm.bias"] == (0.5**4, 0.0)
  assert ours["classifier.dense.kernel"] == (1.0, 0.01)


# --- Paddle: PaddleNLP's AdamWDL defaults ----------------------------------------------------


def test_paddle_matches_paddlenlp_layerwise_lr_decay_on_paddle_names():
  from tests import reference

  shapes = reference.bert_paddle_names(n_layers=12)
  theirs = {n: (reference.paddle_layerwise_lr_decay(0.8, 12, n), 0.01) for n in shapes}
  _assert_same(_ours(shapes, recipes.paddle(0.8)), theirs)
  theirs = {
    n: (reference.paddle_layerwise_lr_decay(0.9, 12, n), 0.05 * reference.paddle_no_decay(n))
    for n in shapes
  }
  config = recipes.paddle(0.9, 12, 0.05, apply_decay_param_fun=reference.paddle_no_decay)
  _assert_same(_ours(shapes, config), theirs)


def test_paddle_preset_matches_real_paddle_training():
  pytest.importorskip("paddle")
  from tests import reference
  from tests import test_paddle_parity as parity

  shapes = reference.bert_paddle_names(n_layers=3)
  init, a, b, noise = parity._problem(shapes)
  ratios = {k: reference.paddle_layerwise_lr_decay(0.75, 3, k) for k in shapes}
  hyper = parity.HYPER
  theirs = parity._run_paddle(
    init, a, b, noise, ratios, apply_decay_param_fun=reference.paddle_no_decay, **hyper
  )
  config = recipes.paddle(0.75, weight_decay=hyper["wd"],
                          apply_decay_param_fun=reference.paddle_no_decay)  # fmt: skip
  tx = adamwdl(hyper["lr"], hyper["b1"], hyper["b2"], hyper["eps"], **config)
  ours = parity._run_ours(init, a, b, noise, tx)
  parity._assert_close_to_float32_rounding(ours, theirs, init)


# --- every preset ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "config",
  [
    recipes.timm(0.75),
    recipes.beit(0.9),
    recipes.mae(0.75),
    recipes.electra(0.8, 2),
    recipes.paddle(0.8),
  ],  # fmt: skip
  ids=["timm", "beit", "mae", "electra", "paddle"],
)
def test_each_preset_is_adamwdl_keyword_arguments_and_trains(config):
  params = {"cls_token": jnp.zeros((1, 1, 4)), "pos_embed": jnp.zeros((1, 3, 4)),
            "patch_embed": {"proj": {"weight": jnp.ones((4, 3)), "bias": jnp.zeros(4)}},
            "blocks": [{"attn": {"weight": jnp.ones((4, 4))}} for _ in range(2)],
            "norm": {"weight": jnp.ones(4)}, "head": {"weight": jnp.ones((2, 4))}}  # fmt: skip
  tx = adamwdl(1e-2, **config)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  params = optax.apply_updates(params, updates)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


# --- the recipes guide's big_vision translation, against big_vision's chain ----------------
# google-research/big_vision, big_vision/optax.py (make) at commit
# 11eea5740d595c2104da948849e087a27e92926f: the chain it builds from a config, restated with
# optax; masks by the first pattern that fullmatches the "/"-joined name.


def _first_match_masks(names, patterns):
  """One mask per pattern: True where it is the first pattern that fullmatches the name."""
  first = {n: next((i for i, p in enumerate(patterns) if re.fullmatch(p, n)), None) for n in names}
  return [{n: first[n] == i for n in names} for i in range(len(patterns))]


def _big_vision_tx(names, lr, wd, schedule_fn, clip):
  """make(config) for: schedule [("embedding/.*", None), (".*", schedule)],
  lr_mults [("head/.*", 10.0)], wd_mults [(".*/kernel$", 1.0)], grad_clip_norm, scale_by_adam."""
  frozen, scheduled = _first_match_masks(names, ["embedding/.*", ".*"])
  not_frozen = {n: not f for n, f in frozen.items()}
  (head,) = _first_match_masks(names, ["head/.*"])
  (kernels,) = _first_match_masks(names, [".*/kernel$"])
  return optax.chain(
    optax.masked(optax.clip_by_global_norm(clip), not_frozen),
    optax.masked(optax.scale_by_adam(), not_frozen),
    optax.scale(lr),
    optax.masked(optax.scale(10.0), head),
    optax.add_decayed_weights(wd * 1.0, kernels),
    optax.masked(optax.scale_by_schedule(schedule_fn), scheduled),
    optax.masked(optax.set_to_zero(), frozen),
    optax.scale(-1.0),
  )


def test_big_vision_translation_in_the_recipes_guide_matches_big_vision():
  shapes = {"embedding/kernel": (4, 4, 3, 8), "embedding/bias": (8,), "cls": (1, 1, 8),
            "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel": (8, 32),
            "Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias": (32,),
            "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel": (8, 32),
            "Transformer/encoder_norm/scale": (8,), "head/kernel": (8, 10), "head/bias": (10,)}  # fmt: skip
  lr, wd, steps = 1e-3, 1e-4, 20
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 5, 50)  # big_vision's: peak 1
  theirs_tx = _big_vision_tx(list(shapes), lr, wd, schedule, clip=1.0)
  ours_tx = adamwdl(
    learning_rate=lambda t: lr * schedule(t),
    weight_decay=wd / lr,
    decay_follows_ratio=False,
    lr_mults=[(r"embedding\..*", 0.0), (r"head\..*", 10.0)],
    wd_mults=[(r".*\.kernel", 1.0), (r".*", 0.0)],
    grad_clip=optax.clip_by_global_norm(1.0),
  )
  rng = np.random.default_rng(0)
  init = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
  grads = [
    {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()} for _ in range(steps)
  ]
  for g in grads:  # the guide: frozen parameters' gradients stopped in the loss
    g["embedding/kernel"][...] = g["embedding/bias"][...] = 0.0

  def run(tx, dotted):
    key = (lambda n: n.replace("/", ".")) if dotted else (lambda n: n)
    params = {key(n): jnp.asarray(v) for n, v in init.items()}
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update({key(n): jnp.asarray(v) for n, v in g.items()}, state, params)
      params = optax.apply_updates(params, updates)
    return {n: np.asarray(params[key(n)]) for n in init}

  ours, theirs = run(ours_tx, dotted=True), run(theirs_tx, dotted=False)
  for n in shapes:
    moved = np.max(np.abs(theirs[n] - init[n]))
    if n.startswith("embedding/"):
      assert moved == 0 and np.array_equal(ours[n], init[n]), n  # frozen, and not decayed
      continue
    assert moved > 1e-4, n
    tol = 4 * steps * np.spacing(np.max(np.abs(theirs[n])))  # float32 rounding, per step
    assert np.max(np.abs(ours[n] - theirs[n])) <= tol, n
