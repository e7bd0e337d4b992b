"""Small parameter trees with the real path shapes of common model families.

Trees that Flax builds (linen auto names, big_vision's explicit names, nnx
lists) are built by Flax here; Hugging Face Flax checkpoints are nested dicts
whose layer keys are the strings "0", "1", ...; timm and Paddle checkpoints are
flat dicts of dotted names. Each builder returns (params, expected) where
``expected`` maps a dotted name to its layer: an int, "embedding" or None.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optax_adamwdl import param_names  # the names are the API under test elsewhere
from optax_adamwdl.demo import TransformerEncoder

H = 4


def _w(*shape):
  return np.zeros(shape or (H,), np.float32)


def leaf_names(params):
  """The dotted names of ``params``' leaves, in ``jax.tree.leaves`` order."""
  return jax.tree.leaves(param_names(params))


def _expected_from(params, classify):
  return {name: classify(name) for name in leaf_names(params)}


def hf_bert(n):
  layer = lambda: {
    "attention": {
      "self": {"query": {"kernel": _w(H, H)}, "key": {"kernel": _w(H, H)}},
      "output": {"dense": {"kernel": _w(H, H)}, "LayerNorm": {"scale": _w()}},
    },
    "intermediate": {"dense": {"kernel": _w(H, 2 * H), "bias": _w(2 * H)}},
    "output": {"dense": {"kernel": _w(2 * H, H)}, "LayerNorm": {"scale": _w(), "bias": _w()}},
  }
  params = {
    "bert": {
      "embeddings": {
        "word_embeddings": {"embedding": _w(10, H)},
        "position_embeddings": {"embedding": _w(8, H)},
        "token_type_embeddings": {"embedding": _w(2, H)},
        "LayerNorm": {"scale": _w(), "bias": _w()},
      },
      "encoder": {"layer": {str(i): layer() for i in range(n)}},
      "pooler": {"dense": {"kernel": _w(H, H), "bias": _w()}},
    },
    "classifier": {"kernel": _w(H, 2), "bias": _w(2)},
  }

  def classify(name):
    if name.startswith("bert.embeddings."):
      return "embedding"
    if name.startswith("bert.encoder.layer."):
      return int(name.split(".")[3])
    return None

  return params, _expected_from(params, classify)


def gpt2(n):
  block = lambda: {
    "ln_1": {"scale": _w(), "bias": _w()},
    "attn": {"c_attn": {"kernel": _w(H, 3 * H)}, "c_proj": {"kernel": _w(H, H)}},
    "ln_2": {"scale": _w()},
    "mlp": {"c_fc": {"kernel": _w(H, 4 * H)}, "c_proj": {"kernel": _w(4 * H, H)}},
  }
  params = {
    "transformer": {
      "wte": {"embedding": _w(10, H)},
      "wpe": {"embedding": _w(8, H)},
      "h": {str(i): block() for i in range(n)},
      "ln_f": {"scale": _w(), "bias": _w()},
    }
  }

  def classify(name):
    part = name.split(".")[1]
    if part in ("wte", "wpe"):
      return "embedding"
    return int(name.split(".")[2]) if part == "h" else None

  return params, _expected_from(params, classify)


def llama(n):
  layer = lambda: {
    "self_attn": {p: {"kernel": _w(H, H)} for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    "mlp": {p: {"kernel": _w(H, H)} for p in ("gate_proj", "up_proj", "down_proj")},
    "input_layernorm": {"weight": _w()},
    "post_attention_layernorm": {"weight": _w()},
  }
  params = {
    "model": {
      "embed_tokens": {"embedding": _w(10, H)},
      "layers": {str(i): layer() for i in range(n)},
      "norm": {"weight": _w()},
    },
    "lm_head": {"kernel": _w(H, 10)},
  }

  def classify(name):
    parts = name.split(".")
    if parts[1] == "embed_tokens":
      return "embedding"
    return int(parts[2]) if parts[1] == "layers" else None

  return params, _expected_from(params, classify)


def t5(n):
  block = lambda: {
    "layer": {
      "0": {
        "SelfAttention": {p: {"kernel": _w(H, H)} for p in "qkvo"},
        "layer_norm": {"weight": _w()},
      },
      "1": {
        "DenseReluDense": {"wi": {"kernel": _w(H, 2 * H)}, "wo": {"kernel": _w(2 * H, H)}},
        "layer_norm": {"weight": _w()},
      },
    }
  }
  stack = lambda: {
    "block": {str(i): block() for i in range(n)},
    "final_layer_norm": {"weight": _w()},
  }
  params = {
    "shared": {"embedding": _w(10, H)},
    "encoder": stack(),
    "decoder": stack(),
    "lm_head": {"kernel": _w(H, 10)},
  }
  params["encoder"]["block"]["0"]["layer"]["0"]["SelfAttention"]["relative_attention_bias"] = {
    "embedding": _w(8, 2)
  }

  def classify(name):
    parts = name.split(".")
    if parts[0] == "shared":
      return "embedding"
    return int(parts[2]) if len(parts) > 2 and parts[1] == "block" else None

  return params, _expected_from(params, classify)


def timm_vit(n):
  names = {
    "cls_token": (1, 1, H),
    "pos_embed": (1, 5, H),
    "patch_embed.proj.weight": (H, 3, 2, 2),
    "patch_embed.proj.bias": (H,),
  }
  for i in range(n):
    for p in (
      "norm1.weight",
      "attn.qkv.weight",
      "attn.proj.weight",
      "norm2.weight",
      "mlp.fc1.weight",
      "mlp.fc2.weight",
    ):
      names[f"blocks.{i}.{p}"] = (H, H)
  names.update({"norm.weight": (H,), "norm.bias": (H,), "head.weight": (2, H), "head.bias": (2,)})
  params = {k: np.zeros(s, np.float32) for k, s in names.items()}

  def classify(name):
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
      return "embedding"
    return int(name.split(".")[1]) if name.startswith("blocks.") else None

  return params, _expected_from(params, classify)


class _BigVisionMlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(H)(nn.gelu(nn.Dense(2 * H)(x)))


class _BigVisionBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2)(y, y)
    return x + _BigVisionMlp(name="MlpBlock_0")(nn.LayerNorm()(x))


class _BigVisionViT(nn.Module):
  """big_vision's vit.py naming: embedding, cls, Transformer/{pos_embedding, encoderblock_N}."""

  depth: int

  @nn.compact
  def __call__(self, image):
    x = nn.Conv(H, (2, 2), strides=(2, 2), name="embedding")(image)
    x = x.reshape(x.shape[0], -1, H)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, H))
    x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)), x], axis=1)
    return _BigVisionEncoder(self.depth, name="Transformer")(x)[:, 0] @ self.param(
      "head", nn.initializers.zeros, (H, 2)
    )


class _BigVisionEncoder(nn.Module):
  depth: int

  @nn.compact
  def __call__(self, x):
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], H))
    for i in range(self.depth):
      x = _BigVisionBlock(name=f"encoderblock_{i}")(x)
    return nn.LayerNorm(name="encoder_norm")(x)


def big_vision_vit(n):
  params = jax.eval_shape(_BigVisionViT(n).init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))[
    "params"
  ]

  def classify(name):
    if name in ("embedding.kernel", "embedding.bias", "cls", "Transformer.pos_embedding"):
      return "embedding"
    part = name.split(".")[1] if name.startswith("Transformer.") else ""
    return int(part.split("_")[1]) if part.startswith("encoderblock_") else None

  return params, _expected_from(params, classify)


class _LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x + nn.Dense(H)(nn.LayerNorm()(x))


class _LinenSetupList(nn.Module):
  """Blocks kept in a list in setup: linen names them layers_0, layers_1, ..."""

  depth: int

  def setup(self):
    self.embed = nn.Embed(10, H)
    self.layers = [_LinenBlock() for _ in range(self.depth)]
    self.head = nn.Dense(2)

  def __call__(self, tokens):
    x = self.embed(tokens)
    for layer in self.layers:
      x = layer(x)
    return self.head(x)


class _LinenCompact(nn.Module):
  """Modules created inline: linen names them Embed_0, _LinenBlock_0, ..., Dense_0."""

  depth: int

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(10, H)(tokens)
    for _ in range(self.depth):
      x = Block()(x)
    return nn.Dense(2)(x)


class Block(_LinenBlock):
  """Named Block so that linen's compact names are Block_0, Block_1, ..."""


def linen_setup_list(n):
  params = jax.eval_shape(_LinenSetupList(n).init, jax.random.key(0), jnp.zeros((1, 3), int))
  params = params["params"]

  def classify(name):
    if name.startswith("embed."):
      return "embedding"
    return int(name.split(".")[0].split("_")[1]) if name.startswith("layers_") else None

  return params, _expected_from(params, classify)


def linen_compact(n):
  params = jax.eval_shape(_LinenCompact(n).init, jax.random.key(0), jnp.zeros((1, 3), int))
  params = params["params"]

  def classify(name):
    if name.startswith("Embed_0."):
      return "embedding"
    return int(name.split(".")[0].split("_")[1]) if name.startswith("Block_") else None

  return params, _expected_from(params, classify)


def nnx_list(n):
  model = nnx.eval_shape(
    lambda: TransformerEncoder(10, 8, 2, dim=H, heads=2, n_layers=n, rngs=nnx.Rngs(0))
  )
  params = nnx.state(model, nnx.Param)

  def classify(name):
    if name.startswith(("embeddings.", "position_embeddings")):
      return "embedding"
    return int(name.split(".")[1]) if name.startswith("layers.") else None

  return params, _expected_from(params, classify)


def paddle_bert(n):
  from tests.reference import bert_paddle_names

  params = {k: np.zeros(s, np.float32) for k, s in bert_paddle_names(n).items()}

  def classify(name):
    if name.startswith("embeddings."):
      return "embedding"
    return int(name.split(".")[2]) if name.startswith("encoder.layers.") else None

  return params, _expected_from(params, classify)


FAMILIES = {
  "paddle_bert": paddle_bert,
  "hf_bert": hf_bert,
  "gpt2": gpt2,
  "llama": llama,
  "t5": t5,
  "timm_vit": timm_vit,
  "big_vision_vit": big_vision_vit,
  "linen_setup_list": linen_setup_list,
  "linen_compact": linen_compact,
  "nnx_list": nnx_list,
}
