"""The default layer rule: which transformer layer a parameter name belongs to.

The rule reads a dotted parameter name (see :func:`optax_adamwdl.param_names`)
and recognises the layer stacks and embeddings of the common model families;
the README lists every pattern.
"""

import re
from collections.abc import Iterable
from typing import Literal

import jax

LayerId = int | Literal["embedding"] | None

# A component naming a list of layers, followed by the layer's index:
# "encoder.layers.3" (Paddle, Llama, flax nnx), "encoder.layer.3" (Hugging Face
# BERT), "h.3" (GPT-2), "block.3" (T5), "blocks.3" (timm), "resblocks.3" (CLIP).
_LAYER_LISTS = frozenset({"layers", "layer", "h", "block", "blocks", "resblocks"})

# A component carrying its own index: "layers_3" (flax linen lists in setup),
# "encoderblock_3" (big_vision), "Block_3" / "EncoderLayer_3" (linen compact).
_INDEXED_LAYER = re.compile(r"(?:encoder|decoder|transformer)?_?(?:block|layer)s?_(\d+)")

# Embedding components that do not contain "embed".
_EMBEDDING_NAMES = frozenset(
  {
    "wte",
    "wpe",
    "shared",
    "cls",
    "cls_token",
    "dist_token",
    "reg_token",
    "register_tokens",
    "mask_token",
  }
)
# Output projections whose names contain "embed" but which are heads.
_HEAD_PREFIXES = ("unembed", "embed_out")


def layer_id(name: str) -> LayerId:
  """Returns the layer a parameter belongs to: its index, "embedding" or None.

  The outermost layer pattern in the name wins, so
  ``"encoderblock_2.MlpBlock_0.Dense_0.kernel"`` is layer 2. Names in no layer
  are embeddings when a component contains "embed" (or is ``wte``, ``wpe``,
  ``shared``, ``cls``, ``cls_token``, ...), and None (pooler, final norm, head)
  otherwise.

  Args:
    name: a dotted parameter name, e.g. ``"encoder.layers.3.self_attn.q_proj.weight"``.

  Returns:
    The layer index, ``"embedding"``, or None.

  Examples:
    >>> layer_id("encoder.layers.3.self_attn.q_proj.weight")
    3
    >>> layer_id("transformer.h.11.mlp.c_fc.kernel")
    11
    >>> layer_id("embeddings.word_embeddings.weight")
    'embedding'
    >>> layer_id("pooler.dense.weight") is None
    True
  """
  parts = name.split(".")
  for i, part in enumerate(parts):
    lower = part.lower()
    if lower in _LAYER_LISTS and i + 1 < len(parts) and parts[i + 1].isdigit():
      return int(parts[i + 1])
    match = _INDEXED_LAYER.fullmatch(lower)
    if match:
      return int(match.group(1))
  for part in parts:
    lower = part.lower()
    if lower in _EMBEDDING_NAMES:
      return "embedding"
    if "embed" in lower and not lower.startswith(_HEAD_PREFIXES):
      return "embedding"
  return None


def layerwise_lr_decay(
  decay_rate: jax.typing.ArrayLike, n_layers: int, name: str
) -> jax.typing.ArrayLike:
  """The default ``set_param_lr_fun``: Paddle's layer-wise decay ladder.

  .. math::

    r(\\text{name}) = \\begin{cases}
      \\alpha^{L - i} & \\text{name in layer } i \\\\
      \\alpha^{L + 1} & \\text{embedding} \\\\
      1 & \\text{otherwise (pooler, head)}
    \\end{cases}

  where :math:`\\alpha` is ``decay_rate`` and :math:`L` is ``n_layers``.

  Args:
    decay_rate: the layer-wise decay :math:`\\alpha`; a float, or a traced
      scalar under ``optax.inject_hyperparams``.
    n_layers: the number of layers :math:`L`.
    name: the parameter's dotted name.

  Returns:
    The ratio by which the parameter's learning rate is multiplied.

  Examples:
    >>> layerwise_lr_decay(0.5, 12, "encoder.layers.10.ffn.weight")
    0.25
    >>> layerwise_lr_decay(0.5, 2, "embeddings.word_embeddings.weight")
    0.125
    >>> layerwise_lr_decay(0.5, 12, "classifier.weight")
    1.0
  """
  layer = layer_id(name)
  if layer == "embedding":
    return decay_rate ** (n_layers + 1)
  if layer is None:
    return 1.0
  return decay_rate ** (n_layers - layer)


def infer_n_layers(names: Iterable[str]) -> int | None:
  """Returns one more than the largest layer index in ``names``, or None.

  Examples:
    >>> infer_n_layers(["h.0.attn.kernel", "h.11.mlp.kernel", "wte.embedding"])
    12
  """
  layers = [i for i in map(layer_id, names) if isinstance(i, int)]
  return max(layers) + 1 if layers else None
