"""Real Hugging Face Flax model families, built from small configs: the trees that the
recognised-names page (docs/names_table.py) describes and that tests/model_families.py annotates.

Every family is built by its Hugging Face Flax class (transformers 4.x; the Flax classes are gone in
5.x) from a small config with ``_do_init=False``, so that only the shapes are computed
(``jax.eval_shape``): nothing is downloaded and nothing is initialised. :func:`tree` gives a family's
parameters with NumPy zeros as leaves. Nothing here imports the tests or pytest.
"""

import os
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np

# name -> a function of the transformers module that builds the model (its order is the page's).
BUILDERS: dict[str, Callable[[Any], Any]] = {}


def load_transformers() -> types.ModuleType:
  """The transformers module, imported without torch; ImportError without its Flax classes."""
  if "transformers" not in sys.modules:
    # The Flax classes do not need torch; transformers would import it (and scikit-learn)
    # when installed, which costs seconds. USE_TORCH is read once, at import.
    saved = os.environ.get("USE_TORCH")
    os.environ["USE_TORCH"] = "0"
    try:
      import transformers  # noqa: F401
    finally:
      if saved is None:
        del os.environ["USE_TORCH"]
      else:
        os.environ["USE_TORCH"] = saved
  import transformers as hf

  if not hasattr(hf, "FlaxBertForMaskedLM"):
    raise ImportError(f"transformers {hf.__version__} has no Flax models (gone in 5.x)")
  return hf


def tree(name: str, hf: types.ModuleType | None = None) -> Any:
  """The parameters of family ``name``, NumPy zeros of their shapes and dtypes."""
  import jax

  model = BUILDERS[name](hf or load_transformers())
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), model.params_shape_tree)


def _family(name: str):
  def register(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
    BUILDERS[name] = build
    return build

  return register


# --- encoders of the BERT kind -------------------------------------------------------------

TEXT = dict(
  hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37, vocab_size=99
)


@_family("bert_seqcls")
def _(hf):
  return hf.FlaxBertForSequenceClassification(hf.BertConfig(**TEXT), _do_init=False)


@_family("bert_mlm")
def _(hf):
  return hf.FlaxBertForMaskedLM(hf.BertConfig(**TEXT), _do_init=False)


@_family("bert_pretraining")
def _(hf):
  return hf.FlaxBertForPreTraining(hf.BertConfig(**TEXT), _do_init=False)


@_family("roberta_mlm")
def _(hf):
  return hf.FlaxRobertaForMaskedLM(hf.RobertaConfig(**TEXT), _do_init=False)


@_family("roberta_seqcls")
def _(hf):
  return hf.FlaxRobertaForSequenceClassification(hf.RobertaConfig(**TEXT), _do_init=False)


# ELECTRA's embeddings are smaller than its hidden size: embeddings_project maps them up.
@_family("electra_pretraining")
def _(hf):
  return hf.FlaxElectraForPreTraining(hf.ElectraConfig(embedding_size=16, **TEXT), _do_init=False)


@_family("electra_seqcls")
def _(hf):
  config = hf.ElectraConfig(embedding_size=16, **TEXT)
  return hf.FlaxElectraForSequenceClassification(config, _do_init=False)


# ALBERT runs its 3 hidden layers through ONE shared layer group.
@_family("albert_mlm")
def _(hf):
  return hf.FlaxAlbertForMaskedLM(hf.AlbertConfig(embedding_size=16, **TEXT), _do_init=False)


# --- decoders --------------------------------------------------------------------------------


@_family("gpt2")
def _(hf):
  config = hf.GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=99, n_positions=64)
  return hf.FlaxGPT2LMHeadModel(config, _do_init=False)


@_family("llama")
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


@_family("bart")
def _(hf):
  config = hf.BartConfig(max_position_embeddings=64, **SEQ2SEQ)
  return hf.FlaxBartForConditionalGeneration(config, _do_init=False)


@_family("mbart")
def _(hf):
  config = hf.MBartConfig(max_position_embeddings=64, **SEQ2SEQ)
  return hf.FlaxMBartForConditionalGeneration(config, _do_init=False)


@_family("whisper")
def _(hf):
  config = hf.WhisperConfig(
    **{**SEQ2SEQ, "decoder_layers": 1},
    num_mel_bins=8,
    max_source_positions=16,
    max_target_positions=16,
  )
  return hf.FlaxWhisperForConditionalGeneration(config, _do_init=False)


class JnpWithClipBounds(types.ModuleType):
  """jax.numpy, with the clip(a_min=, a_max=) keywords that jax 0.10 removed."""

  def __getattr__(self, name):
    import jax.numpy as jnp

    return getattr(jnp, name)

  @staticmethod
  def clip(a, a_min=None, a_max=None, **kwargs):
    import jax.numpy as jnp

    return jnp.clip(a, min=a_min, max=a_max, **kwargs)


# tie_word_embeddings=False (as T5 v1.1) gives an untied lm_head outside both towers.
@_family("t5")
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
  modeling_flax_t5.jnp = JnpWithClipBounds("jax.numpy")
  try:
    return hf.FlaxT5ForConditionalGeneration(config, _do_init=False)
  finally:
    modeling_flax_t5.jnp = jnp


# --- vision and audio ------------------------------------------------------------------------


@_family("clip")
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


@_family("vit")
def _(hf):
  return hf.FlaxViTForImageClassification(hf.ViTConfig(**VISION), _do_init=False)


@_family("beit_relpos")
def _(hf):
  config = hf.BeitConfig(use_relative_position_bias=True, use_mean_pooling=True, **VISION)
  return hf.FlaxBeitForImageClassification(config, _do_init=False)


@_family("beit_shared_relpos")
def _(hf):
  config = hf.BeitConfig(
    use_shared_relative_position_bias=True,
    use_relative_position_bias=False,
    use_mean_pooling=True,
    **VISION,
  )
  return hf.FlaxBeitForImageClassification(config, _do_init=False)


@_family("beit_abspos")
def _(hf):
  config = hf.BeitConfig(use_absolute_position_embeddings=True, use_mean_pooling=False, **VISION)
  return hf.FlaxBeitForImageClassification(config, _do_init=False)


# wav2vec2: Flax supports only do_stable_layer_norm=True.
@_family("wav2vec2_ctc")
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


# ResNet/RegNet: only the "params" collection is optimised ("batch_stats" is not a parameter).
@_family("resnet")
def _(hf):
  config = hf.ResNetConfig(
    embedding_size=8, hidden_sizes=[8, 16], depths=[2, 1], layer_type="bottleneck", num_labels=5
  )
  return _Params(hf.FlaxResNetForImageClassification(config, _do_init=False))


@_family("regnet")
def _(hf):
  config = hf.RegNetConfig(
    embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], groups_width=8, num_labels=5
  )
  return _Params(hf.FlaxRegNetForImageClassification(config, _do_init=False))
