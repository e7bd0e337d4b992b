"""Where a parameter sits in the network, read from its dotted name.

This is the naming half of the default ladder; :mod:`optax_adamwdl._ladder`
turns sites into ratios. Every name is read on its own here; what needs the
whole tree (stacks, depths, nested stages) is done there.

The depth contract that the rules below serve, on every family they claim:
what the network applies before its first layer (embeddings, class/mask
tokens, stems, feature encoders, pre-norms) sits at the bottom; layers are
ordered by their index (nested ``stages.S.layers.B`` stage-major); what comes
after the last layer (final norms, poolers, classifiers, LM heads) sits at the
top. A name no rule recognises is put at the top, and reported.
"""

import re
from typing import NamedTuple

# A component naming a list of layers, followed by the layer's index:
# "encoder.layers.3" (Paddle, Llama, BART, CLIP, nnx), "encoder.layer.3" (HF BERT, ViT),
# "h.3" (GPT-2), "block.3" (T5), "blocks.3" (timm), "resblocks.3" (OpenAI CLIP),
# "stages.2" (ResNet, RegNet, ConvNeXt), "albert_layer_groups.0" (ALBERT's shared layer).
LAYER_LISTS = frozenset(
  {"layers", "layer", "h", "block", "blocks", "resblocks", "stages", "stage", "albert_layer_groups"}
)
# Lists nested in a stage: "stages.1.layers.0" (HF ResNet, RegNet), "stages.1.blocks.0"
# (timm ConvNeXt), "layers.1.blocks.0" (Swin). T5's "block.3.layer.1" is not a pair: there the
# inner index is a sub-layer (attention, feed-forward), not depth.
NESTED_LISTS = frozenset(
  {
    ("stages", "layers"),
    ("stages", "blocks"),
    ("stage", "layers"),
    ("stage", "blocks"),
    ("layers", "blocks"),
  }
)
# A component carrying its own index: "layers_3" (linen lists in setup), "encoderblock_3"
# (big_vision), "Block_3" / "EncoderLayer_3" (linen compact modules), and the same under any
# "_"-joined prefix: "dense_layers_0" / "moe_layers_3" (MaxText, unscanned), "text_layers_1".
# "MlpBlock_0" is not one (a glued prefix other than encoder/decoder/transformer): big_vision's
# MAP head holds one.
INDEXED_LAYER = re.compile(
  r"((?:[a-z0-9]+_)*(?:encoder|decoder|transformer)?_?(?:block|layer)s?)_(\d+)"
)
# Embeddings whose names do not contain "embed"; "cls" only as a leaf (big_vision's class
# token): Hugging Face's "cls" is the module of BERT's pre-training heads.
EMBEDDINGS = frozenset(
  {
    "wte",
    "wpe",
    "shared",
    "cls_token",
    "dist_token",
    "reg_token",
    "register_tokens",
    "mask_token",
    "relative_position_bias",
    "rel_pos_bias",
    # Multi-modal projectors: they map the vision tower's output into the text stack's input
    # tokens, so they sit at the bottom of the text stack, as its token embedding does
    # (EasyDeL's and LLaVA's multi_modal_projector; gemma keeps its own in the embedder).
    "multi_modal_projector",
    "mm_projector",
    "mm_input_projection",
  }
)
EMBEDDING_LEAVES = frozenset({"cls"})
NOT_EMBEDDINGS = ("unembed", "embed_out")  # output projections: heads
# What runs before the first layer without being an embedding: convolutional stems and
# feature encoders (wav2vec2, Whisper's conv1/conv2, torchvision's conv1/bn1), pre-norms, and
# OPT's project_in (opt-350m: its narrower token embeddings projected up to the hidden size).
STEMS = frozenset(
  {
    "stem",
    "stems",
    "conv_stem",
    "feature_extractor",
    "feature_encoder",
    "feature_projection",
    "pre_layrnorm",
    "pre_layernorm",
    "ln_pre",
    "norm_pre",
    "layernorm_pre",
    "project_in",
  }
)
STEM_PATTERN = re.compile(r"(conv|bn)\d*")
# What runs after the last layer.
HEADS = frozenset(
  {
    "head",
    "heads",
    "lm_head",
    "cls",
    "classifier",
    "pooler",
    "predictions",
    "seq_relationship",
    "qa_outputs",
    "score",
    "norm",
    "ln_f",
    "fc_norm",
    "final_norm",
    "final_layer_norm",
    "final_layernorm",
    "layer_norm",
    "layernorm",
    "post_layernorm",
    "encoder_norm",
    "decoder_norm",
    "logit_scale",
    "logit_bias",
    "text_projection",
    "visual_projection",
    "final_logits_bias",
    "proj_out",
    "pre_logits",
    # OPT's project_out (back down to the embedding width, after the last layer).
    "project_out",
    # DistilBERT's MLM head.
    "vocab_transform",
    "vocab_layer_norm",
    "vocab_projector",
    # ELECTRA's multiple-choice pooling (sequence_summary.summary).
    "sequence_summary",
    # wav2vec2 pre-training: project_hid maps the last layer's output, quantizer and project_q
    # make the contrastive targets from the feature encoder's output; none feeds a layer.
    "project_hid",
    "quantizer",
    "project_q",
    # Whisper's (and wav2vec2-style) audio classification: projects the encoder's output.
    "projector",
    # Encoder-decoders whose widths differ: projects the encoder's output (after its last layer
    # and final norm) to the decoder's width for cross-attention; freshly initialised when a
    # pre-trained encoder and decoder are joined, as a head is.
    "enc_to_dec_proj",
    # MaxText's output projection (when the embedding is not tied).
    "logits_dense",
    # wav2vec2's adapter: strided convolutions on the encoder's output (for a decoder), after the
    # last layer. Inside a layer (a LoRA adapter) the layer decides first.
    "adapter",
    # A module called "mlp" outside every layer: the classification head of ViTs written as
    # Equinox's docs write them (an eqx.nn.Sequential of LayerNorm and Linear). Inside a layer
    # the layer decides first, so a layer's own "mlp" is that layer's.
    "mlp",
  }
)
HEAD_SUFFIXES = ("_head", "_heads", "_predictions", "_classifier", "_pooler")


class Site(NamedTuple):
  """What one name says about its parameter's place.

  ``kind`` is "layer", "embedding", "stem", "head" or "unrecognised". For a
  layer, ``index`` is its index, or (stage, block) for a block nested in a
  stage (``(stage,)`` for a stage's own parameters), and ``prefix`` the name
  of its list of layers (e.g. ``"bert.encoder.layer"``), which identifies its
  stack.
  """

  kind: str
  index: tuple[int, ...] = ()
  prefix: str = ""


def _index(part: str) -> int | None:
  return int(part) if part.isascii() and part.isdigit() else None


def _layer_at(parts: list[str], i: int, lists: frozenset[str] = frozenset()) -> Site | None:
  """The layer that component ``i`` of ``parts`` names, if it names one."""
  part, lower = parts[i], parts[i].lower()
  following = _index(parts[i + 1]) if i + 1 < len(parts) else None
  if following is not None and lists and ".".join(parts[: i + 1]) in lists:
    return Site("layer", (following,), ".".join(parts[: i + 1]))
  if lower in LAYER_LISTS and following is not None:
    index = (following,)
    if i + 3 < len(parts) and (lower, parts[i + 2].lower()) in NESTED_LISTS:
      block = _index(parts[i + 3])
      index = index if block is None else (following, block)
    return Site("layer", index, ".".join(parts[: i + 1]))
  match = INDEXED_LAYER.fullmatch(lower)
  if match and match.group(2).isascii():
    return Site(
      "layer", (int(match.group(2)),), ".".join([*parts[:i], part[: len(match.group(1))]])
    )
  return None


def _kind(part: str, is_leaf: bool) -> str | None:
  lower = part.lower()
  if lower in EMBEDDINGS or (is_leaf and lower in EMBEDDING_LEAVES):
    return "embedding"
  if "embed" in lower and not lower.startswith(NOT_EMBEDDINGS):
    return "embedding"
  if lower in STEMS or STEM_PATTERN.fullmatch(lower):
    return "stem"
  if lower in HEADS or lower.endswith(HEAD_SUFFIXES):
    return "head"
  return None


def site(
  name: str, not_stacks: frozenset[str] = frozenset(), lists: frozenset[str] = frozenset()
) -> Site:
  """Returns where the parameter called ``name`` sits.

  Components are read from the outermost: the first that names a layer (a
  list of layers followed by an index, or an indexed layer) or an embedding,
  a stem or a head decides. So ``"encoderblock_2.MlpBlock_0.kernel"`` is
  layer 2, and a list inside a head (``"head.layers.0.kernel"``, an
  ``nnx.Sequential`` head) is the head. Lists whose prefix is in
  ``not_stacks`` are read as plain components; lists whose prefix is in
  ``lists`` are lists of layers whatever their name (the whole tree's
  structure says so: :func:`optax_adamwdl._stacks.sites`).

  Examples:
    >>> site("encoder.layers.3.self_attn.q_proj.weight")
    Site(kind='layer', index=(3,), prefix='encoder.layers')
    >>> site("resnet.encoder.stages.1.layers.0.shortcut.kernel").index
    (1, 0)
    >>> site("cls.predictions.bias").kind, site("cls").kind
    ('head', 'embedding')
    >>> site("vision_model.pre_layrnorm.scale").kind
    'stem'
    >>> site("patch_embed.layers.0.kernel").kind, site("seq.layers.1.kernel", {"seq.layers"}).kind
    ('embedding', 'unrecognised')
    >>> site("attention_blocks.1.linear1.weight", lists={"attention_blocks"})
    Site(kind='layer', index=(1,), prefix='attention_blocks')
    >>> site("decoder.moe_layers_3.mlp.wi.kernel")
    Site(kind='layer', index=(3,), prefix='decoder.moe_layers')
  """
  parts = name.split(".")
  for i, part in enumerate(parts):
    layer = _layer_at(parts, i, lists)
    if layer is not None and layer.prefix not in not_stacks:
      return layer
    kind = _kind(part, is_leaf=i == len(parts) - 1)
    # Inside a list that is not a stack (torchvision's layer2.0.conv1), a conv is no stem.
    if kind == "stem" and any(_index(p) is not None for p in parts[:i]):
      continue
    if kind is not None:
      return Site(kind)
  return Site("unrecognised")


def unnamed_list(name: str) -> tuple[str, int, str] | None:
  """The outermost list under a name no rule knows that decides ``name``'s site, if any.

  Returns (the list's prefix, the index, the rest of the name) when reading
  ``name`` from the outermost meets a component followed by an index before
  anything that decides its site (``"attention_blocks.3.attention.query_proj.weight"``:
  ``("attention_blocks", 3, "attention.query_proj.weight")``). Whether such a
  list is a stack of layers is for the whole tree's structure to say.

  Examples:
    >>> unnamed_list("attention_blocks.3.linear1.weight")
    ('attention_blocks', 3, 'linear1.weight')
    >>> unnamed_list("encoder.layers.3.weight"), unnamed_list("head.blocks.0.weight")
    (None, None)
  """
  parts = name.split(".")
  for i, part in enumerate(parts[:-1]):
    if _layer_at(parts, i) is not None or _kind(part, is_leaf=False) is not None:
      return None
    index = _index(parts[i + 1])
    if index is not None and _index(part) is None:
      return ".".join(parts[: i + 1]), index, ".".join(parts[i + 2 :])
  return None


def layerwise_lr_decay(decay_rate, n_layers: int, name: str):
  r"""Paddle's default ``set_param_lr_fun``, read from one name.

  .. math::

    r(\text{name}) = \alpha^{L - i} \text{ in layer } i, \quad
    \alpha^{L + 1} \text{ below the first layer}, \quad 1 \text{ otherwise}

  with :math:`\alpha` = ``decay_rate`` and :math:`L` = ``n_layers``. This is
  the default ladder of a model with one stack and no nested stages, as a
  rule you can wrap or port (Paddle's ``layerwise_lr_decay``); the default
  ladder itself also gives each stack its own depth and counts nested blocks.

  Examples:
    >>> layerwise_lr_decay(0.5, 12, "encoder.layers.10.ffn.weight")
    0.25
    >>> layerwise_lr_decay(0.5, 2, "embeddings.word_embeddings.weight")
    0.125
    >>> layerwise_lr_decay(0.5, 12, "classifier.weight")
    1.0
  """
  where = site(name)
  if where.kind in ("embedding", "stem"):
    return decay_rate ** (n_layers + 1)
  if where.kind == "layer":
    return decay_rate ** (n_layers - where.index[0])
  return 1.0
