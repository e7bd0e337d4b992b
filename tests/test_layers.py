"""The default layer rule (the private unit ``_layers.site``) on the real path shapes of each
model family, and the public ``layerwise_lr_decay``."""

import jax
import numpy as np
import pytest

from optax_adamwdl import _layers, layerwise_lr_decay, lr_ratios, lr_table
from tests import model_trees, reference
from tests.model_trees import leaf_names


def layer_of(name):
  """A name's layer as model_trees annotates it: its index, "embedding" (below the first layer)
  or None (above the last layer: heads, final norms, and names no rule recognises)."""
  site = _layers.site(name)
  if site.kind == "layer":
    return site.index[0]
  if site.kind in ("embedding", "stem"):
    return "embedding"
  assert site.kind in ("head", "unrecognised"), site
  return None


@pytest.mark.parametrize("family", sorted(model_trees.FAMILIES))
@pytest.mark.parametrize("depth", [1, 3, 12])
def test_layer_ids_and_depth_per_family(family, depth):
  params, expected = model_trees.FAMILIES[family](depth)
  assert {name: layer_of(name) for name in leaf_names(params)} == expected
  # The depth inferred from the names is the model's depth.
  assert lr_ratios(params, 0.5) == lr_ratios(params, 0.5, n_layers=depth)
  assert lr_ratios(params, 0.5) != lr_ratios(params, 0.5, n_layers=depth + 1)
  assert sum(v == "embedding" for v in expected.values()) >= 1
  assert sum(v is None for v in expected.values()) >= 1  # final norm or head


@pytest.mark.parametrize("family", sorted(model_trees.FAMILIES))
def test_ratio_ladder_per_family(family):
  depth, decay = 4, 0.5
  params, expected = model_trees.FAMILIES[family](depth)
  ratios = dict(zip(leaf_names(params), jax.tree.leaves(lr_ratios(params, decay))))
  for name, layer in expected.items():
    want = {"embedding": decay ** (depth + 1), None: 1.0}.get(layer)
    if isinstance(layer, int):
      want = decay ** (depth - layer)
    assert ratios[name] == want, name


@pytest.mark.parametrize("n_layers", [2, 6, 12])
@pytest.mark.parametrize("decay", [0.65, 0.75, 0.9, 1.3])
def test_exactly_paddles_ratios_on_paddle_names(n_layers, decay):
  for name in reference.bert_paddle_names(n_layers):
    assert layerwise_lr_decay(decay, n_layers, name) == reference.paddle_layerwise_lr_decay(
      decay, n_layers, name
    ), name


@pytest.mark.parametrize(
  "name, expected",
  [
    ("ernie.encoder.layers.11.self_attn.q_proj.weight", 11),
    ("roberta.encoder.layer.3.output.dense.kernel", 3),
    ("transformer.h.0.attn.c_attn.kernel", 0),
    ("model.layers.31.mlp.gate_proj.kernel", 31),
    ("encoder.block.2.layer.1.DenseReluDense.wi.kernel", 2),
    ("decoder.block.5.layer.0.SelfAttention.q.kernel", 5),
    ("blocks.7.attn.qkv.weight", 7),
    ("visual.transformer.resblocks.4.attn.in_proj_weight", 4),
    ("Transformer.encoderblock_9.MlpBlock_0.Dense_1.kernel", 9),
    ("decoder.decoderblock_1.MlpBlock_0.Dense_0.kernel", 1),
    ("layers_2.Dense_0.kernel", 2),
    ("TransformerBlock_6.attention.kernel", 6),
    ("EncoderLayer_10.ffn.kernel", 10),
    # Scanned layers carry no index; the stacked leaf is not one layer.
    ("Transformer.encoderblock.MlpBlock_0.Dense_0.kernel", None),
    ("Dense_0.kernel", None),
    ("LayerNorm_0.scale", None),
    ("final_layer_norm.weight", None),
    ("embeddings.word_embeddings.weight", "embedding"),
    ("model.embed_tokens.embedding", "embedding"),
    ("tok_embeddings.weight", "embedding"),
    ("transformer.wte.embedding", "embedding"),
    ("transformer.wpe.embedding", "embedding"),
    ("shared.embedding", "embedding"),
    ("pos_embed", "embedding"),
    ("patch_embed.proj.weight", "embedding"),
    ("cls_token", "embedding"),
    ("Transformer.pos_embedding", "embedding"),
    ("cls", "embedding"),
    ("Embed_0.embedding", "embedding"),
    ("unembed.W_U", None),
    ("gpt_neox.embed_out.kernel", None),
    ("lm_head.kernel", None),
    ("pooler.dense.weight", None),
  ],
)
def test_layer_id_patterns(name, expected):
  assert layer_of(name) == expected


def test_outermost_pattern_wins():
  # A block nested in a stage (Swin) is (stage, block), counted from the outer list.
  assert _layers.site("layers.2.blocks.5.mlp.kernel") == _layers.Site("layer", (2, 5), "layers")
  assert _layers.site("h.3.embed_proj.kernel") == _layers.Site("layer", (3,), "h")
  assert _layers.site("encoderblock_2.MlpBlock_0.kernel").index == (2,)


def test_layerwise_lr_decay_is_papers_ladder():
  # XLNet / ELECTRA / BEiT: the head keeps lr, layer i gets decay^(L - i).
  assert [layerwise_lr_decay(0.5, 3, f"layers.{i}.w") for i in range(3)] == [0.125, 0.25, 0.5]
  assert layerwise_lr_decay(0.5, 3, "embed.embedding") == 0.0625
  assert layerwise_lr_decay(0.5, 3, "head.kernel") == 1.0


def test_a_key_that_is_a_digit_but_not_an_integer():
  # "²".isdigit() is True but int("²") fails. A layer is a "layers" component followed by an
  # integer (docs/guides/ladder.md), so "layers.².w" is no layer: a name no rule recognises, which
  # gets head_ratio and is listed as unrecognised (never int()'s "invalid literal").
  params = {
    "embeddings": {"w": np.ones(2, np.float32)},
    "layers": {"0": {"w": np.ones(2, np.float32)}, "²": {"w": np.ones(2, np.float32)}},
    "head": {"w": np.ones(2, np.float32)},
  }
  ratios = lr_ratios(params, 0.5)
  assert ratios["layers"]["²"]["w"] == 1.0
  assert ratios["layers"]["0"]["w"] == 0.5
  assert "layers.².w" in lr_table(params, 0.5).unrecognised
