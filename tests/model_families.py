"""Parameter trees of real Hugging Face Flax model families, with their depth order.

Every family is built by its Hugging Face Flax class (transformers 4.x; the
Flax classes are gone in 5.x) from a small config with ``_do_init=False``, so
that only the shapes are computed (``jax.eval_shape``): nothing is downloaded
and nothing is initialised. The trees have NumPy zeros as leaves.

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
import os
import re
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

Annotation = tuple[str | None, str, int | tuple[int, int] | None]

FAMILIES: dict[str, Callable[[], Any]] = {}
EXPECTED: dict[str, Callable[[str], Annotation]] = {}
# Families whose blocks are nested in stages: index is (stage, block).
NESTED_STAGES = ("resnet", "regnet")


def transformers():
  """The transformers module, or a skip when it (or its Flax classes) is missing."""
  if "transformers" not in sys.modules:
    # The Flax classes do not need torch; transformers would import it (and scikit-learn)
    # when installed, which costs seconds. USE_TORCH is read once, at import.
    saved = os.environ.get("USE_TORCH")
    os.environ["USE_TORCH"] = "0"
    try:
      pytest.importorskip("transformers")
    finally:
      if saved is None:
        del os.environ["USE_TORCH"]
      else:
        os.environ["USE_TORCH"] = saved
  hf = pytest.importorskip("transformers")
  if not hasattr(hf, "FlaxBertForMaskedLM"):
    pytest.skip(
      f"transformers {hf.__version__} has no Flax models (gone in 5.x)", allow_module_level=True
    )
  return hf


def _zeros(model: Any) -> Any:
  import jax

  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), model.params_shape_tree)


def _family(name: str, expected: Callable[[str], Annotation]):
  def register(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
    FAMILIES[name] = functools.cache(lambda: _zeros(build(transformers())))
    EXPECTED[name] = expected
    return build

  return register


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

TEXT = dict(
  hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37, vocab_size=99
)


def _bert_like(model: str, *heads: str, bottoms: tuple[str, ...] = ()):
  return _rules(
    (rf"{model}\.embeddings\..*", "", B),
    *((rf"{re.escape(b)}\..*", "", B) for b in bottoms),
    (rf"{model}\.encoder\.layer\.(\d+)\..*", "", LAYER),
    (rf"({model}\.pooler|{'|'.join(heads)})\..*", "", T),
  )


@_family("bert_seqcls", _bert_like("bert", "classifier"))
def _(hf):
  return hf.FlaxBertForSequenceClassification(hf.BertConfig(**TEXT), _do_init=False)


@_family("bert_mlm", _bert_like("bert", "cls"))
def _(hf):
  return hf.FlaxBertForMaskedLM(hf.BertConfig(**TEXT), _do_init=False)


@_family("bert_pretraining", _bert_like("bert", "cls"))
def _(hf):
  return hf.FlaxBertForPreTraining(hf.BertConfig(**TEXT), _do_init=False)


@_family("roberta_mlm", _bert_like("roberta", "lm_head"))
def _(hf):
  return hf.FlaxRobertaForMaskedLM(hf.RobertaConfig(**TEXT), _do_init=False)


@_family("roberta_seqcls", _bert_like("roberta", "classifier"))
def _(hf):
  return hf.FlaxRobertaForSequenceClassification(hf.RobertaConfig(**TEXT), _do_init=False)


# ELECTRA's embeddings are smaller than its hidden size: embeddings_project maps them up.
@_family(
  "electra_pretraining",
  _bert_like("electra", "discriminator_predictions", bottoms=("electra.embeddings_project",)),
)
def _(hf):
  return hf.FlaxElectraForPreTraining(hf.ElectraConfig(embedding_size=16, **TEXT), _do_init=False)


@_family(
  "electra_seqcls", _bert_like("electra", "classifier", bottoms=("electra.embeddings_project",))
)
def _(hf):
  config = hf.ElectraConfig(embedding_size=16, **TEXT)
  return hf.FlaxElectraForSequenceClassification(config, _do_init=False)


# ALBERT runs its 3 hidden layers through ONE shared layer group (albert_layers.0 is the
# group's only layer): a 1-layer stack. embedding_hidden_mapping_in projects the embeddings.
@_family(
  "albert_mlm",
  _rules(
    (r"albert\.embeddings\..*", "", B),
    (r"albert\.encoder\.embedding_hidden_mapping_in\..*", "", B),
    (r"albert\.encoder\.albert_layer_groups\.(\d+)\.albert_layers\.0\..*", "", LAYER),
    (r"predictions\..*", "", T),
  ),
)
def _(hf):
  return hf.FlaxAlbertForMaskedLM(hf.AlbertConfig(embedding_size=16, **TEXT), _do_init=False)


# --- decoders --------------------------------------------------------------------------------


# GPT-2's LM head is tied to wte: no lm_head parameter.
@_family(
  "gpt2",
  _rules(
    (r"transformer\.(wte|wpe)\..*", "", B),
    (r"transformer\.h\.(\d+)\..*", "", LAYER),
    (r"transformer\.ln_f\..*", "", T),
  ),
)
def _(hf):
  config = hf.GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=99, n_positions=64)
  return hf.FlaxGPT2LMHeadModel(config, _do_init=False)


@_family(
  "llama",
  _rules(
    (r"model\.embed_tokens\..*", "", B),
    (r"model\.layers\.(\d+)\..*", "", LAYER),
    (r"(model\.norm|lm_head)\..*", "", T),
  ),
)
def _(hf):
  config = hf.LlamaConfig(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=37,
    vocab_size=99,
  )
  return hf.FlaxLlamaForCausalLM(config, _do_init=False)


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


SEQ2SEQ = dict(
  d_model=32,
  encoder_layers=3,
  decoder_layers=2,
  encoder_attention_heads=2,
  decoder_attention_heads=2,
  encoder_ffn_dim=37,
  decoder_ffn_dim=37,
  vocab_size=99,
)
# BART's LM head is tied to model.shared; final_logits_bias is a head outside both towers.
# Inside a layer, final_layer_norm is the layer's own norm (a layer parameter).
BART = _seq2seq(
  shared=r"model\.shared\..*",
  stems="embed_positions|layernorm_embedding",
  heads=r"final_logits_bias",
)


@_family("bart", BART)
def _(hf):
  config = hf.BartConfig(max_position_embeddings=64, **SEQ2SEQ)
  return hf.FlaxBartForConditionalGeneration(config, _do_init=False)


# mBART adds a final layer_norm to each tower.
@_family("mbart", BART)
def _(hf):
  config = hf.MBartConfig(max_position_embeddings=64, **SEQ2SEQ)
  return hf.FlaxMBartForConditionalGeneration(config, _do_init=False)


# Whisper: the encoder's stem is two convolutions over the mel features; the decoder's token
# embedding is its own (tied to the LM head: no proj_out parameter).
@_family(
  "whisper",
  _seq2seq(stems="conv1|conv2|embed_positions|embed_tokens"),
)
def _(hf):
  config = hf.WhisperConfig(
    **{**SEQ2SEQ, "decoder_layers": 1},
    num_mel_bins=8,
    max_source_positions=16,
    max_target_positions=16,
  )
  return hf.FlaxWhisperForConditionalGeneration(config, _do_init=False)


class _JnpWithClipBounds(types.ModuleType):
  """jax.numpy, with the clip(a_min=, a_max=) keywords that jax 0.10 removed."""

  def __getattr__(self, name):
    import jax.numpy as jnp

    return getattr(jnp, name)

  @staticmethod
  def clip(a, a_min=None, a_max=None, **kwargs):
    import jax.numpy as jnp

    return jnp.clip(a, min=a_min, max=a_max, **kwargs)


# T5: block.N.layer.M, where M is the sublayer (self-attention, cross-attention, feed-forward),
# not a depth. The relative attention bias lives in block 0 but every block uses it: a bottom.
# tie_word_embeddings=False (as T5 v1.1) gives an untied lm_head outside both towers.
@_family(
  "t5",
  _rules(
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
  ),
)
def _(hf):
  from transformers.models.t5 import modeling_flax_t5

  config = hf.T5Config(
    d_model=32,
    d_kv=8,
    d_ff=37,
    num_layers=3,
    num_decoder_layers=2,
    num_heads=2,
    vocab_size=99,
    tie_word_embeddings=False,
  )
  # HF's T5 calls jnp.clip(a_max=...), which this jax no longer accepts.
  jnp = modeling_flax_t5.jnp
  modeling_flax_t5.jnp = _JnpWithClipBounds("jax.numpy")
  try:
    return hf.FlaxT5ForConditionalGeneration(config, _do_init=False)
  finally:
    modeling_flax_t5.jnp = jnp


# --- vision and audio ------------------------------------------------------------------------


# CLIP: two towers; the projections and logit_scale come after both.
# (pre_layrnorm is Hugging Face's spelling: the norm before the vision tower's first layer.)
@_family(
  "clip",
  _rules(
    (r"(logit_scale|text_projection\..*|visual_projection\..*)", None, T),
    (r"text_model\.embeddings\..*", "text", B),
    (r"text_model\.encoder\.layers\.(\d+)\..*", "text", LAYER),
    (r"text_model\.final_layer_norm\..*", "text", T),
    (r"vision_model\.(embeddings|pre_layrnorm)\..*", "vision", B),
    (r"vision_model\.encoder\.layers\.(\d+)\..*", "vision", LAYER),
    (r"vision_model\.post_layernorm\..*", "vision", T),
  ),
)
def _(hf):
  config = hf.CLIPConfig(
    text_config=dict(
      hidden_size=32,
      num_hidden_layers=3,
      num_attention_heads=2,
      intermediate_size=37,
      vocab_size=99,
      max_position_embeddings=16,
    ),
    vision_config=dict(
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=2,
      intermediate_size=37,
      image_size=32,
      patch_size=8,
    ),
    projection_dim=16,
  )
  return hf.FlaxCLIPModel(config, _do_init=False)


VISION = dict(
  hidden_size=32,
  num_hidden_layers=3,
  num_attention_heads=2,
  intermediate_size=37,
  image_size=32,
  patch_size=8,
  num_labels=5,
)


@_family(
  "vit",
  _rules(
    (r"vit\.embeddings\..*", "", B),
    (r"vit\.encoder\.layer\.(\d+)\..*", "", LAYER),
    (r"(vit\.layernorm|vit\.pooler|classifier)\..*", "", T),
  ),
)
def _(hf):
  return hf.FlaxViTForImageClassification(hf.ViTConfig(**VISION), _do_init=False)


# BEiT: a per-layer relative position bias is in its layer; a shared one
# (beit.encoder.relative_position_bias) serves every layer: a bottom. lambda_1/2 are the
# layers' layer-scale. The head is beit.pooler.layernorm (mean pooling) or beit.layernorm.
BEIT = _rules(
  (r"beit\.embeddings\..*", "", B),
  (r"beit\.encoder\.relative_position_bias\..*", "", B),
  (r"beit\.encoder\.layer\.(\d+)\..*", "", LAYER),
  (r"(beit\.pooler|beit\.layernorm|classifier)\..*", "", T),
)


@_family("beit_relpos", BEIT)
def _(hf):
  config = hf.BeitConfig(use_relative_position_bias=True, use_mean_pooling=True, **VISION)
  return hf.FlaxBeitForImageClassification(config, _do_init=False)


@_family("beit_shared_relpos", BEIT)
def _(hf):
  config = hf.BeitConfig(
    use_shared_relative_position_bias=True,
    use_relative_position_bias=False,
    use_mean_pooling=True,
    **VISION,
  )
  return hf.FlaxBeitForImageClassification(config, _do_init=False)


@_family("beit_abspos", BEIT)
def _(hf):
  config = hf.BeitConfig(use_absolute_position_embeddings=True, use_mean_pooling=False, **VISION)
  return hf.FlaxBeitForImageClassification(config, _do_init=False)


# wav2vec2 (Flax supports only do_stable_layer_norm=True, where encoder.layer_norm comes AFTER
# the layers): the conv feature encoder, its projection, the convolutional position embedding
# and the mask embedding are the bottom.
@_family(
  "wav2vec2_ctc",
  _rules(
    (r"wav2vec2\.(feature_extractor|feature_projection|encoder\.pos_conv_embed)\..*", "", B),
    (r"wav2vec2\.masked_spec_embed", "", B),
    (r"wav2vec2\.encoder\.layers\.(\d+)\..*", "", LAYER),
    (r"(wav2vec2\.encoder\.layer_norm|lm_head)\..*", "", T),
  ),
)
def _(hf):
  config = hf.Wav2Vec2Config(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=37,
    vocab_size=99,
    conv_dim=(8, 8),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    do_stable_layer_norm=True,
    feat_extract_norm="layer",
  )
  return hf.FlaxWav2Vec2ForCTC(config, _do_init=False)


class _Params:
  """The "params" collection of a model whose variables also hold batch_stats."""

  def __init__(self, model):
    self.params_shape_tree = model.params_shape_tree["params"]


# ResNet/RegNet: stages.S.layers.B is a block; its layer.K are the block's convolutions (not a
# depth). Only the "params" collection is optimised ("batch_stats" is not a parameter).
def _convnet(model: str):
  return _rules(
    (rf"{model}\.embedder\..*", "", B),
    (rf"{model}\.encoder\.stages\.(\d+)\.layers\.(\d+)\..*", "", LAYER),
    (r"classifier\..*", "", T),
  )


@_family("resnet", _convnet("resnet"))
def _(hf):
  config = hf.ResNetConfig(
    embedding_size=8, hidden_sizes=[8, 16], depths=[2, 1], layer_type="bottleneck", num_labels=5
  )
  return _Params(hf.FlaxResNetForImageClassification(config, _do_init=False))


@_family("regnet", _convnet("regnet"))
def _(hf):
  config = hf.RegNetConfig(
    embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], groups_width=8, num_labels=5
  )
  return _Params(hf.FlaxRegNetForImageClassification(config, _do_init=False))
