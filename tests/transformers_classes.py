"""Every Flax model class of transformers 4.x, enumerated from its auto mappings.

The classes come from ``transformers.models.auto.modeling_flax_auto``: every
``(model_type, class name)`` pair of every ``FLAX_*_MAPPING_NAMES`` mapping, and
the other public model classes of the modules that define them (CLIP's text and
vision towers, T5's encoder, wav2vec2's CTC head, ...). Nothing is listed by
hand except the small config of each model type (``CONFIGS``) and a few config
VARIANTS that change which parameters exist (OPT with ``word_embed_proj_dim !=
hidden_size``, as opt-350m; encoder-decoders whose hidden sizes differ; BEiT's
position biases; ...).

Each class is built from its small config with ``_do_init=False``: Hugging
Face then computes only the parameter shapes (``jax.eval_shape`` of
``init_weights``), so nothing is initialised, compiled or downloaded.

- ``CASES``: one :class:`Case` per (class, variant), with a readable id such
  as ``FlaxOPTForCausalLM[opt-proj]``;
- ``params(case)``: the trainable parameters' shapes (``jax.ShapeDtypeStruct``
  leaves; the "params" collection for ResNet and RegNet, whose batch_stats are
  not trained);
- ``forward(case)``: ``(params_shapes, forward, example_inputs)`` where
  ``forward(params, *example_inputs)`` runs the model's forward pass with
  ``params`` (``model(**inputs, params=params)``) and returns its outputs as
  a plain tree of arrays; ``jax.eval_shape(forward, params_shapes,
  *example_inputs)`` traces it.

transformers is imported lazily (``USE_TORCH=0``: the Flax classes need no
torch); the functions skip the calling test when it is missing or has no Flax
classes (5.x).
"""

import contextlib
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest

from tests.model_families import _JnpWithClipBounds, transformers

# --- the enumeration -------------------------------------------------------------------------


def mapping_names() -> list[str]:
  """The names of the FLAX_*_MAPPING_NAMES mappings of transformers' auto module."""
  transformers()
  from transformers.models.auto import modeling_flax_auto as auto

  return sorted(n for n in dir(auto) if n.startswith("FLAX_") and n.endswith("_MAPPING_NAMES"))


def mapped_classes() -> dict[tuple[str, str], list[str]]:
  """{(model_type, class name): [mappings naming it]}, from every Flax auto mapping."""
  transformers()
  from transformers.models.auto import modeling_flax_auto as auto

  pairs: dict[tuple[str, str], list[str]] = {}
  for mapping in mapping_names():
    for model_type, name in getattr(auto, mapping).items():
      pairs.setdefault((model_type, name), []).append(mapping)
  return pairs


def module_classes() -> dict[tuple[str, str], str]:
  """{(model_type, class name): module} for the public model classes that no mapping names,
  found in the modules of the mapped classes (``__all__``, less the PreTrainedModel bases)."""
  hf = transformers()
  pairs = mapped_classes()
  named = {name for _, name in pairs}
  found: dict[tuple[str, str], str] = {}
  for model_type, name in sorted(pairs):
    module = importlib.import_module(getattr(hf, name).__module__)
    for other in getattr(module, "__all__", ()):
      if other in named or other.endswith("PreTrainedModel") or not other.startswith("Flax"):
        continue
      if other not in {n for _, n in found}:
        found[model_type, other] = module.__name__
  return found


def all_classes() -> list[tuple[str, str]]:
  """Every (model_type, class name): the auto mappings' pairs, then the modules' others."""
  return sorted(mapped_classes()) + sorted(module_classes())


# --- small configs ---------------------------------------------------------------------------

TEXT = dict(
  hidden_size=32,
  num_hidden_layers=3,
  num_attention_heads=2,
  intermediate_size=37,
  vocab_size=99,
  max_position_embeddings=64,
)
SEQ2SEQ = dict(
  d_model=32,
  encoder_layers=3,
  decoder_layers=2,
  encoder_attention_heads=2,
  decoder_attention_heads=2,
  encoder_ffn_dim=37,
  decoder_ffn_dim=37,
  vocab_size=99,
  max_position_embeddings=64,
)
DECODER = dict(
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  num_key_value_heads=2,
  intermediate_size=37,
  vocab_size=99,
  max_position_embeddings=64,
)
T5 = dict(
  d_model=32, d_kv=8, d_ff=37, num_layers=3, num_decoder_layers=2, num_heads=2, vocab_size=99
)
VISION = dict(
  hidden_size=32,
  num_hidden_layers=3,
  num_attention_heads=2,
  intermediate_size=37,
  image_size=32,
  patch_size=8,
  num_labels=5,
)
GPT2 = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=64)
WAV2VEC2 = dict(
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
  codevector_dim=16,
  proj_codevector_dim=16,
  num_codevectors_per_group=8,
  num_codevector_groups=2,
)
WHISPER = dict(
  **{k: v for k, v in SEQ2SEQ.items() if k != "max_position_embeddings"},
  num_mel_bins=8,
  max_source_positions=16,
  max_target_positions=16,
  classifier_proj_size=16,
)
CONVNET = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 1], num_labels=5)

# model_type -> {variant: kwargs of AutoConfig.for_model}; the first variant is named after the
# model type, the others after what they change. Composite configs are built in _composite.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
  "albert": {"albert": dict(TEXT, embedding_size=16)},
  "bart": {"bart": SEQ2SEQ},
  "beit": {
    "beit": dict(VISION, use_relative_position_bias=True, use_mean_pooling=True),
    "beit-shared-relpos": dict(
      VISION, use_shared_relative_position_bias=True, use_mean_pooling=True
    ),
    "beit-abspos": dict(VISION, use_absolute_position_embeddings=True, use_mean_pooling=False),
  },
  "bert": {"bert": TEXT},
  "big_bird": {"big_bird": dict(TEXT, block_size=2, num_random_blocks=1)},
  "blenderbot": {"blenderbot": SEQ2SEQ},
  "blenderbot-small": {"blenderbot-small": SEQ2SEQ},
  "bloom": {"bloom": dict(hidden_size=32, n_layer=2, n_head=2, vocab_size=99)},
  "dinov2": {
    "dinov2": dict({k: v for k, v in VISION.items() if k != "intermediate_size"}, mlp_ratio=2)
  },
  "distilbert": {"distilbert": dict(dim=32, n_layers=3, n_heads=2, hidden_dim=37, vocab_size=99)},
  # ELECTRA's embeddings are smaller than its hidden size (embeddings_project maps them up).
  "electra": {"electra": dict(TEXT, embedding_size=16)},
  "gemma": {"gemma": dict(DECODER, head_dim=16)},
  "gpt-sw3": {"gpt-sw3": GPT2},
  "gpt2": {"gpt2": GPT2},
  "gpt_neo": {
    "gpt_neo": dict(
      hidden_size=32,
      num_layers=2,
      num_heads=2,
      attention_types=[[["global", "local"], 1]],
      window_size=4,
      vocab_size=99,
      max_position_embeddings=64,
    )
  },
  "gptj": {"gptj": dict(GPT2, rotary_dim=8)},
  "llama": {"llama": DECODER},
  "longt5": {
    "longt5": dict(T5, encoder_attention_type="local", local_radius=4),
    "longt5-tglobal": dict(
      T5, encoder_attention_type="transient-global", local_radius=4, global_block_size=2
    ),
  },
  "marian": {"marian": dict(SEQ2SEQ, decoder_vocab_size=99)},
  "mbart": {"mbart": SEQ2SEQ},
  "mistral": {"mistral": dict(DECODER, sliding_window=8)},
  "mt5": {"mt5": T5},
  "opt": {
    "opt": dict(
      hidden_size=32,
      num_hidden_layers=2,
      ffn_dim=37,
      num_attention_heads=2,
      vocab_size=99,
      max_position_embeddings=64,
    ),
    # opt-350m: 512-wide embeddings projected in to a hidden size of 1024 (project_in) and back
    # out (project_out), with the norms after each sub-layer (no final_layer_norm).
    "opt-proj": dict(
      hidden_size=32,
      word_embed_proj_dim=16,
      do_layer_norm_before=False,
      num_hidden_layers=2,
      ffn_dim=37,
      num_attention_heads=2,
      vocab_size=99,
      max_position_embeddings=64,
    ),
  },
  "pegasus": {"pegasus": SEQ2SEQ},
  "regnet": {"regnet": dict(CONVNET, depths=[1, 2], groups_width=8)},
  "resnet": {
    "resnet": dict(CONVNET, layer_type="bottleneck"),
    "resnet-basic": dict(CONVNET, layer_type="basic"),
  },
  "roberta": {"roberta": TEXT},
  "roberta-prelayernorm": {"roberta-prelayernorm": TEXT},
  "roformer": {"roformer": TEXT},
  # T5 v1.1 unties the LM head (lm_head, outside both towers).
  "t5": {"t5": T5, "t5-untied": dict(T5, tie_word_embeddings=False)},
  "vit": {"vit": VISION},
  "wav2vec2": {
    "wav2vec2": WAV2VEC2,
    # wav2vec2's adapter (as in speech encoder-decoders): strided convolutions after the encoder.
    "wav2vec2-adapter": dict(
      WAV2VEC2, add_adapter=True, num_adapter_layers=2, adapter_kernel_size=3, adapter_stride=2
    ),
  },
  # (FlaxWhisperForAudioClassification's use_weighted_layer_sum fails in transformers 4.57 and
  # adds no parameter: its layer_weights is a constant.)
  "whisper": {"whisper": WHISPER},
  "xglm": {
    "xglm": dict(d_model=32, num_layers=2, attention_heads=2, ffn_dim=37, vocab_size=99),
  },
  "xlm-roberta": {"xlm-roberta": TEXT},
}
# Variants that only matter to some classes (their config is read by those alone).
ONLY = {
  "t5-untied": ("FlaxT5ForConditionalGeneration",),
  "wav2vec2-adapter": ("FlaxWav2Vec2Model",),
}


def _config(hf, model_type: str, **kwargs) -> Any:
  """AutoConfig.for_model, refusing a keyword that the config does not know."""
  default = hf.AutoConfig.for_model(model_type)
  unknown = [k for k in kwargs if not hasattr(default, k)]
  assert not unknown, f"{model_type}: {type(default).__name__} has no {unknown}"
  return hf.AutoConfig.for_model(model_type, **kwargs)


def _decoder(hf, model_type: str, **kwargs) -> Any:
  """A causal-LM config that can attend to an encoder (for the encoder-decoders)."""
  return _config(hf, model_type, is_decoder=True, add_cross_attention=True, **kwargs)


# Composite model types: {variant: builder(hf) -> config}. The encoder-decoders get a variant
# whose encoder is wider than the decoder, so that enc_to_dec_proj exists.
COMPOSITE: dict[str, dict[str, Callable[[Any], Any]]] = {
  "encoder-decoder": {
    "encoder-decoder": lambda hf: hf.EncoderDecoderConfig.from_encoder_decoder_configs(
      _config(hf, "bert", **TEXT), _decoder(hf, "bert", **dict(TEXT, num_hidden_layers=2))
    ),
    "encoder-decoder-proj": lambda hf: hf.EncoderDecoderConfig.from_encoder_decoder_configs(
      _config(hf, "bert", **dict(TEXT, hidden_size=48)), _decoder(hf, "gpt2", **GPT2)
    ),
  },
  "vision-encoder-decoder": {
    "vision-encoder-decoder": lambda hf: hf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
      _config(hf, "vit", **VISION), _decoder(hf, "gpt2", **GPT2)
    ),
    "vision-encoder-decoder-proj": (
      lambda hf: hf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        _config(hf, "vit", **dict(VISION, hidden_size=48)), _decoder(hf, "gpt2", **GPT2)
      )
    ),
  },
  "speech-encoder-decoder": {
    "speech-encoder-decoder": lambda hf: hf.SpeechEncoderDecoderConfig.from_encoder_decoder_configs(
      _config(hf, "wav2vec2", **WAV2VEC2), _decoder(hf, "gpt2", **dict(GPT2, n_positions=128))
    ),
    # As wav2vec2-bert checkpoints: a wider encoder with an adapter, a BERT decoder.
    "speech-encoder-decoder-proj": (
      lambda hf: hf.SpeechEncoderDecoderConfig.from_encoder_decoder_configs(
        _config(
          hf,
          "wav2vec2",
          **dict(WAV2VEC2, hidden_size=48, add_adapter=True, num_adapter_layers=2),
        ),
        _decoder(hf, "bert", **dict(TEXT, num_hidden_layers=2)),
      )
    ),
  },
  "vision-text-dual-encoder": {
    "vision-text-dual-encoder": (
      lambda hf: hf.VisionTextDualEncoderConfig.from_vision_text_configs(
        _config(hf, "vit", **VISION), _config(hf, "bert", **TEXT), projection_dim=16
      )
    ),
    "vision-text-dual-encoder-clip": (
      lambda hf: hf.VisionTextDualEncoderConfig.from_vision_text_configs(
        hf.CLIPVisionConfig(**{k: v for k, v in VISION.items() if k != "num_labels"}),
        _config(hf, "roberta", **TEXT),
        projection_dim=16,
      )
    ),
  },
  "clip": {
    "clip": lambda hf: hf.CLIPConfig(
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
  },
}


def variants(model_type: str) -> dict[str, Callable[[Any], Any]]:
  """{variant: builder(hf) -> small config} of a model type."""
  if model_type in COMPOSITE:
    return COMPOSITE[model_type]
  return {
    name: functools.partial(lambda hf, kw: _config(hf, model_type, **kw), kw=kwargs)
    for name, kwargs in CONFIGS[model_type].items()
  }


# Classes that cannot be built here: {class name: reason}. None with transformers 4.57; a class
# listed here is left out of CASES.
UNBUILDABLE: dict[str, str] = {}


class Case(NamedTuple):
  """One class built from one config variant."""

  model_type: str
  cls: str
  variant: str

  @property
  def id(self) -> str:
    return f"{self.cls}[{self.variant}]"


def cases() -> list[Case]:
  """Every (class, variant) to build, in the order of all_classes()."""
  found = []
  for model_type, cls in all_classes():
    if cls in UNBUILDABLE:
      continue
    for variant in variants(model_type):
      if cls in ONLY.get(variant, (cls,)):
        found.append(Case(model_type, cls, variant))
  return found


def _transformers_or_none():
  try:
    return transformers()
  except pytest.skip.Exception:
    return None


CASES: list[Case] = cases() if _transformers_or_none() is not None else []
IDS = [c.id for c in CASES]
BY_ID = {c.id: c for c in CASES}


# --- building and running --------------------------------------------------------------------

# Modules that call jnp.clip(a_min=..., a_max=...), which jax 0.10 no longer accepts.
_CLIPPING_MODULES = ("t5", "longt5")


@contextlib.contextmanager
def _clip_bounds():
  """Gives the T5-family modules a jax.numpy whose clip takes a_min/a_max, while tracing."""
  modules = [
    importlib.import_module(f"transformers.models.{m}.modeling_flax_{m}") for m in _CLIPPING_MODULES
  ]
  saved = [m.jnp for m in modules]
  for m in modules:
    m.jnp = _JnpWithClipBounds("jax.numpy")
  try:
    yield
  finally:
    for m, jnp in zip(modules, saved):
      m.jnp = jnp


def _own_config(cls: Any, config: Any) -> Any:
  """The config, or its sub-config that ``cls`` takes (CLIP's text and vision towers)."""
  if isinstance(config, cls.config_class):
    return config
  subs = [getattr(config, a, None) for a in ("text_config", "vision_config")]
  (sub,) = [s for s in subs if isinstance(s, cls.config_class)]
  return sub


def _shapes_only(cls: Any) -> Any:
  """``cls`` whose init_weights computes shapes only, for the composite models (encoder-decoders,
  dual encoders) that refuse ``_do_init=False``: their "initialised" params are then
  jax.ShapeDtypeStructs, which is all the tests read (the forward pass takes params=)."""
  import jax

  class ShapesOnly(cls):
    def init_weights(self, rng, input_shape, params=None):
      init = super().init_weights
      return jax.eval_shape(lambda key: init(key, input_shape, params), rng)

  ShapesOnly.__name__ = ShapesOnly.__qualname__ = cls.__name__
  return ShapesOnly


@functools.cache
def model(case: Case) -> Any:
  """The Hugging Face Flax model of ``case``, its parameters' shapes computed, none initialised."""
  hf = transformers()
  cls = getattr(hf, case.cls)
  config = _own_config(cls, variants(case.model_type)[case.variant](hf))
  with _clip_bounds():
    try:
      return cls(config, _do_init=False)
    except ValueError as refused:  # "cannot be created without initializing"
      if "_do_init" not in str(refused):
        raise
      return _shapes_only(cls)(config)


def _has_batch_stats(tree: Any) -> bool:
  return set(tree) == {"params", "batch_stats"}


def params(case: Case) -> Any:
  """The trainable parameters' shapes (jax.ShapeDtypeStruct leaves)."""
  tree = model(case).params_shape_tree
  return tree["params"] if _has_batch_stats(tree) else tree


SEQUENCE = 16  # tokens: BigBird's block-sparse attention needs more than (5 + 2 * 1) blocks of 2
CHOICES = 2  # multiple choice
IMAGE = 32  # pixels, for the convolutional networks (ResNet, RegNet) that take any size
SAMPLES = 160  # audio samples: 15 frames after wav2vec2's small feature encoder


def _sub_config(config: Any, attribute: str) -> Any:
  """The (sub-)config that has ``attribute``: the config, its encoder or its vision config."""
  for sub in (config, getattr(config, "encoder", None), getattr(config, "vision_config", None)):
    if sub is not None and hasattr(sub, attribute):
      return sub
  raise AttributeError(f"{type(config).__name__} has no {attribute}")


def example_inputs(case: Case) -> dict[str, np.ndarray]:
  """Small inputs for the class's forward pass, by the names its __call__ takes."""
  m = model(case)
  config = m.config
  takes = inspect.signature(type(m).__call__).parameters
  inputs = {}
  if "input_ids" in takes:
    shape = (1, CHOICES, SEQUENCE) if "MultipleChoice" in case.cls else (1, SEQUENCE)
    inputs["input_ids"] = np.ones(shape, np.int32)
  if "pixel_values" in takes:
    vision = _sub_config(config, "num_channels")
    size = getattr(vision, "image_size", IMAGE)
    inputs["pixel_values"] = np.zeros((1, vision.num_channels, size, size), np.float32)
  for audio in ("input_values", "inputs"):  # the speech encoder-decoder's are "inputs"
    if audio in takes:
      inputs[audio] = np.zeros((1, SAMPLES), np.float32)
  if "input_features" in takes:
    audio = _sub_config(config, "num_mel_bins")
    inputs["input_features"] = np.zeros(
      (1, audio.num_mel_bins, 2 * audio.max_source_positions), np.float32
    )
  if "decoder_input_ids" in takes:
    inputs["decoder_input_ids"] = np.ones((1, SEQUENCE), np.int32)
  assert inputs, f"{case.id}: no input recognised in {list(takes)}"
  return inputs


def _plain(tree: Any) -> Any:
  """A model output (nested ModelOutputs, tuples) as dicts, tuples and arrays."""
  if isinstance(tree, dict):  # ModelOutput is an OrderedDict
    return {k: _plain(v) for k, v in tree.items() if v is not None}
  if isinstance(tree, tuple | list):
    return tuple(_plain(v) for v in tree if v is not None)
  return tree


def forward(case: Case) -> tuple[Any, Callable[..., Any], tuple[np.ndarray, ...]]:
  """(params_shapes, forward, example_inputs) with forward(params, *example_inputs) -> outputs.

  ``params`` is what :func:`params` returns; for a model with batch_stats (ResNet, RegNet),
  forward adds zero batch_stats of the right shapes (inference reads them, does not train them).
  """
  import jax
  import jax.numpy as jnp

  m = model(case)
  inputs = example_inputs(case)
  names = tuple(inputs)
  tree = m.params_shape_tree
  stats = tree["batch_stats"] if _has_batch_stats(tree) else None

  def run(variables: Any, *values: Any) -> Any:
    if stats is not None:
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats)
      variables = {"params": variables, "batch_stats": zeros}
    with _clip_bounds():
      return _plain(m(**dict(zip(names, values)), params=variables))

  return params(case), run, tuple(inputs[n] for n in names)
