"""The depth order of real Hugging Face Flax model families: an annotation of each family's tree.

The trees are built in docs/hf_families.py (each family's Flax class from a small config, shapes
only: transformers 4.x; nothing is downloaded and nothing is initialised), which the
recognised-names page reads too. ``FAMILIES[family]()`` is the tree, with NumPy zeros as leaves.

``EXPECTED[family](name) -> (tower, kind, index)`` is an annotation of the
architecture, written from what each model computes and NOT from the rules of
optax_adamwdl:

- tower: the stack the parameter belongs to ("" for a single-stack model,
  "encoder"/"decoder", "text"/"vision"), or None for a parameter outside every
  stack (CLIP's logit_scale and projections, BART's and T5's shared embedding,
  BART's final_logits_bias, T5's untied lm_head);
- kind: "bottom" (embeddings, position embeddings, class/mask tokens, patch
  embeddings, conv stems and feature encoders, norms and projections applied
  before the first layer, a relative position bias shared by all layers),
  "layer", or "top" (final norms, poolers, classifiers, LM/MLM heads);
- index: the block's depth order in its tower (an int, or (stage, block) for
  the nested ResNet/RegNet stages); None for "bottom" and "top".

transformers is imported lazily: the builders skip the calling test when it is
not installed (or has no Flax classes).
"""

import functools
import re
from collections.abc import Callable
from typing import Any

import pytest

from docs import hf_families
from docs.hf_families import JnpWithClipBounds as _JnpWithClipBounds  # noqa: F401 (re-exported)

Annotation = tuple[str | None, str, int | tuple[int, int] | None]

EXPECTED: dict[str, Callable[[str], Annotation]] = {}
# Families whose blocks are nested in stages: index is (stage, block).
NESTED_STAGES = ("resnet", "regnet")


def transformers():
  """The transformers module, or a skip when it (or its Flax classes) is missing."""
  try:
    return hf_families.load_transformers()
  except ImportError as error:
    pytest.skip(str(error), allow_module_level=True)


def _rules(*rules: tuple[str, str | None, str]) -> Callable[[str], Annotation]:
  """An annotation from (regex, tower, kind) rules; a layer regex captures its index(es)."""
  compiled = [(re.compile(pattern), tower, kind) for pattern, tower, kind in rules]

  def expected(name: str) -> Annotation:
    for pattern, tower, kind in compiled:
      match = pattern.fullmatch(name)
      if match:
        if kind != LAYER:
          return tower, kind, None
        index = tuple(int(g) for g in match.groups())
        return tower, kind, index[0] if len(index) == 1 else index
    raise KeyError(f"{name!r} is not annotated")

  return expected


B, LAYER, T = "bottom", "layer", "top"

# --- encoders of the BERT kind -------------------------------------------------------------


def _bert_like(model: str, *heads: str, bottoms: tuple[str, ...] = ()):
  return _rules(
    (rf"{model}\.embeddings\..*", "", B),
    *((rf"{re.escape(b)}\..*", "", B) for b in bottoms),
    (rf"{model}\.encoder\.layer\.(\d+)\..*", "", LAYER),
    (rf"({model}\.pooler|{'|'.join(heads)})\..*", "", T),
  )


EXPECTED["bert_seqcls"] = _bert_like("bert", "classifier")
EXPECTED["bert_mlm"] = _bert_like("bert", "cls")
EXPECTED["bert_pretraining"] = _bert_like("bert", "cls")
EXPECTED["roberta_mlm"] = _bert_like("roberta", "lm_head")
EXPECTED["roberta_seqcls"] = _bert_like("roberta", "classifier")
# ELECTRA's embeddings are smaller than its hidden size: embeddings_project maps them up.
EXPECTED["electra_pretraining"] = _bert_like(
  "electra", "discriminator_predictions", bottoms=("electra.embeddings_project",)
)
EXPECTED["electra_seqcls"] = _bert_like(
  "electra", "classifier", bottoms=("electra.embeddings_project",)
)
# ALBERT runs its 3 hidden layers through ONE shared layer group (albert_layers.0 is the
# group's only layer): a 1-layer stack. embedding_hidden_mapping_in projects the embeddings.
EXPECTED["albert_mlm"] = _rules(
  (r"albert\.embeddings\..*", "", B),
  (r"albert\.encoder\.embedding_hidden_mapping_in\..*", "", B),
  (r"albert\.encoder\.albert_layer_groups\.(\d+)\.albert_layers\.0\..*", "", LAYER),
  (r"predictions\..*", "", T),
)

# --- decoders --------------------------------------------------------------------------------

# GPT-2's LM head is tied to wte: no lm_head parameter.
EXPECTED["gpt2"] = _rules(
  (r"transformer\.(wte|wpe)\..*", "", B),
  (r"transformer\.h\.(\d+)\..*", "", LAYER),
  (r"transformer\.ln_f\..*", "", T),
)
EXPECTED["llama"] = _rules(
  (r"model\.embed_tokens\..*", "", B),
  (r"model\.layers\.(\d+)\..*", "", LAYER),
  (r"(model\.norm|lm_head)\..*", "", T),
)

# --- encoder-decoders ------------------------------------------------------------------------


def _seq2seq(stems: str, shared: str | None = None, heads: str | None = None):
  """Encoder and decoder towers under model.; ``shared`` (the tied token embedding) and
  ``heads`` are outside both."""
  rules = [(shared, None, B)] if shared else []
  rules += [(heads, None, T)] if heads else []
  for tower in ("encoder", "decoder"):
    rules += [
      (rf"model\.{tower}\.({stems})\..*", tower, B),
      (rf"model\.{tower}\.layers\.(\d+)\..*", tower, LAYER),
      (rf"model\.{tower}\.layer_norm\..*", tower, T),
    ]
  return _rules(*rules)


# BART's LM head is tied to model.shared; final_logits_bias is a head outside both towers.
# Inside a layer, final_layer_norm is the layer's own norm (a layer parameter).
BART = _seq2seq(
  shared=r"model\.shared\..*",
  stems="embed_positions|layernorm_embedding",
  heads=r"final_logits_bias",
)
EXPECTED["bart"] = BART
# mBART adds a final layer_norm to each tower.
EXPECTED["mbart"] = BART
# Whisper: the encoder's stem is two convolutions over the mel features; the decoder's token
# embedding is its own (tied to the LM head: no proj_out parameter).
EXPECTED["whisper"] = _seq2seq(stems="conv1|conv2|embed_positions|embed_tokens")
# T5: block.N.layer.M, where M is the sublayer (self-attention, cross-attention, feed-forward),
# not a depth. The relative attention bias lives in block 0 but every block uses it: a bottom.
# tie_word_embeddings=False (as T5 v1.1) gives an untied lm_head outside both towers.
EXPECTED["t5"] = _rules(
  (r"shared\..*", None, B),
  (r"lm_head\..*", None, T),
  *(
    rule
    for tower in ("encoder", "decoder")
    for rule in (
      (rf"{tower}\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\..*", tower, B),
      (rf"{tower}\.block\.(\d+)\.layer\.\d+\..*", tower, LAYER),
      (rf"{tower}\.final_layer_norm\..*", tower, T),
    )
  ),
)

# --- vision and audio ------------------------------------------------------------------------

# CLIP: two towers; the projections and logit_scale come after both.
# (pre_layrnorm is Hugging Face's spelling: the norm before the vision tower's first layer.)
EXPECTED["clip"] = _rules(
  (r"(logit_scale|text_projection\..*|visual_projection\..*)", None, T),
  (r"text_model\.embeddings\..*", "text", B),
  (r"text_model\.encoder\.layers\.(\d+)\..*", "text", LAYER),
  (r"text_model\.final_layer_norm\..*", "text", T),
  (r"vision_model\.(embeddings|pre_layrnorm)\..*", "vision", B),
  (r"vision_model\.encoder\.layers\.(\d+)\..*", "vision", LAYER),
  (r"vision_model\.post_layernorm\..*", "vision", T),
)
EXPECTED["vit"] = _rules(
  (r"vit\.embeddings\..*", "", B),
  (r"vit\.encoder\.layer\.(\d+)\..*", "", LAYER),
  (r"(vit\.layernorm|vit\.pooler|classifier)\..*", "", T),
)
# BEiT: a per-layer relative position bias is in its layer; a shared one
# (beit.encoder.relative_position_bias) serves every layer: a bottom. lambda_1/2 are the
# layers' layer-scale. The head is beit.pooler.layernorm (mean pooling) or beit.layernorm.
BEIT = _rules(
  (r"beit\.embeddings\..*", "", B),
  (r"beit\.encoder\.relative_position_bias\..*", "", B),
  (r"beit\.encoder\.layer\.(\d+)\..*", "", LAYER),
  (r"(beit\.pooler|beit\.layernorm|classifier)\..*", "", T),
)
EXPECTED["beit_relpos"] = BEIT
EXPECTED["beit_shared_relpos"] = BEIT
EXPECTED["beit_abspos"] = BEIT
# wav2vec2 (Flax supports only do_stable_layer_norm=True, where encoder.layer_norm comes AFTER
# the layers): the conv feature encoder, its projection, the convolutional position embedding
# and the mask embedding are the bottom.
EXPECTED["wav2vec2_ctc"] = _rules(
  (r"wav2vec2\.(feature_extractor|feature_projection|encoder\.pos_conv_embed)\..*", "", B),
  (r"wav2vec2\.masked_spec_embed", "", B),
  (r"wav2vec2\.encoder\.layers\.(\d+)\..*", "", LAYER),
  (r"(wav2vec2\.encoder\.layer_norm|lm_head)\..*", "", T),
)


# ResNet/RegNet: stages.S.layers.B is a block; its layer.K are the block's convolutions (not a
# depth). Only the "params" collection is optimised ("batch_stats" is not a parameter).
def _convnet(model: str):
  return _rules(
    (rf"{model}\.embedder\..*", "", B),
    (rf"{model}\.encoder\.stages\.(\d+)\.layers\.(\d+)\..*", "", LAYER),
    (r"classifier\..*", "", T),
  )


EXPECTED["resnet"] = _convnet("resnet")
EXPECTED["regnet"] = _convnet("regnet")


def _tree(name: str) -> Any:
  return hf_families.tree(name, transformers())


# The trees, in docs/hf_families.py's order; every one annotated.
FAMILIES: dict[str, Callable[[], Any]] = {
  name: functools.cache(functools.partial(_tree, name)) for name in hf_families.BUILDERS
}
assert FAMILIES.keys() == EXPECTED.keys(), set(FAMILIES) ^ set(EXPECTED)
