"""Small Flax linen models whose parameter paths are those of real model families.

Each builder returns (model, example_input, expected) where ``expected(name)``
gives the layer the README promises for that name: an int, "embedding" or None.
"""

import flax.linen as nn
import jax.numpy as jnp

H, VOCAB, LENGTH = 8, 11, 6


class Block(nn.Module):
  """A residual MLP block with a norm, as the unit repeated in every stack."""

  @nn.compact
  def __call__(self, x):
    return x + nn.Dense(H, name="mlp")(nn.gelu(nn.Dense(2 * H, name="fc")(nn.LayerNorm()(x))))


class Numbered(nn.Module):
  """Hugging Face Flax layer collections: children named "0", "1", ..."""

  n: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.n):
      x = Block(name=str(i))(x)
    return x


class BertEmbeddings(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(VOCAB, H, name="word_embeddings")(tokens)
    x = x + nn.Embed(LENGTH, H, name="position_embeddings")(jnp.arange(tokens.shape[1]))
    return nn.LayerNorm(name="LayerNorm")(x)


class BertEncoder(nn.Module):
  n: int

  @nn.compact
  def __call__(self, x):
    return Numbered(self.n, name="layer")(x)


class BertStyle(nn.Module):
  """bert.embeddings.*, bert.encoder.layer.N.*, bert.pooler.*, classifier.*"""

  n: int

  @nn.compact
  def __call__(self, tokens):
    x = BertEncoder(self.n, name="encoder")(BertEmbeddings(name="embeddings")(tokens))
    pooled = nn.tanh(nn.Dense(H, name="pooler")(x[:, 0]))
    return nn.Dense(2, name="classifier")(pooled)


class GPT2Transformer(nn.Module):
  n: int

  @nn.compact
  def __call__(self, tokens):
    wte = nn.Embed(VOCAB, H, name="wte")
    x = wte(tokens) + nn.Embed(LENGTH, H, name="wpe")(jnp.arange(tokens.shape[1]))
    x = nn.LayerNorm(name="ln_f")(Numbered(self.n, name="h")(x))
    return wte.attend(x)  # tied output embedding, as GPT-2 does


class GPT2Style(nn.Module):
  """transformer.wte, transformer.wpe, transformer.h.N.*, transformer.ln_f"""

  n: int

  @nn.compact
  def __call__(self, tokens):
    return GPT2Transformer(self.n, name="transformer")(tokens)


class T5Stack(nn.Module):
  n: int

  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm(name="final_layer_norm")(Numbered(self.n, name="block")(x))


class T5Style(nn.Module):
  """shared, encoder.block.N.*, decoder.block.N.*, lm_head"""

  n_encoder: int
  n_decoder: int

  @nn.compact
  def __call__(self, tokens):
    shared = nn.Embed(VOCAB, H, name="shared")
    memory = T5Stack(self.n_encoder, name="encoder")(shared(tokens))
    x = T5Stack(self.n_decoder, name="decoder")(shared(tokens) + memory.mean(1, keepdims=True))
    return nn.Dense(VOCAB, name="lm_head")(x)


class ViTEncoder(nn.Module):
  n: int

  @nn.compact
  def __call__(self, x):
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], H))
    for i in range(self.n):
      x = Block(name=f"encoderblock_{i}")(x)
    return nn.LayerNorm(name="encoder_norm")(x)


class ViTStyle(nn.Module):
  """big_vision: embedding (patch conv), cls, Transformer.pos_embedding, Transformer.encoderblock_N"""

  n: int

  @nn.compact
  def __call__(self, images):
    x = nn.Conv(H, (2, 2), strides=(2, 2), name="embedding")(images)
    x = x.reshape(x.shape[0], -1, H)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, H))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, H)), x], axis=1)
    return nn.Dense(3, name="head")(ViTEncoder(self.n, name="Transformer")(x)[:, 0])


def _index_after(name, marker):
  parts = name.split(".")
  return int(parts[parts.index(marker) + 1])


def bert_style(n):
  def expected(name):
    if name.startswith("embeddings."):
      return "embedding"
    return _index_after(name, "layer") if name.startswith("encoder.layer.") else None

  return BertStyle(n), jnp.ones((2, LENGTH), jnp.int32), expected


def gpt2_style(n):
  def expected(name):
    if name.startswith(("transformer.wte.", "transformer.wpe.")):
      return "embedding"
    return _index_after(name, "h") if name.startswith("transformer.h.") else None

  return GPT2Style(n), jnp.ones((2, LENGTH), jnp.int32), expected


def t5_style(n_encoder, n_decoder=None):
  def expected(name):
    if name.startswith("shared."):
      return "embedding"
    return _index_after(name, "block") if ".block." in name else None

  model = T5Style(n_encoder, n_encoder if n_decoder is None else n_decoder)
  return model, jnp.ones((2, LENGTH), jnp.int32), expected


def vit_style(n):
  def expected(name):
    if name.split(".")[0] in ("embedding", "cls") or name == "Transformer.pos_embedding":
      return "embedding"
    part = name.split(".")[1] if name.startswith("Transformer.encoderblock_") else None
    return int(part.split("_")[1]) if part else None

  return ViTStyle(n), jnp.ones((2, 4, 4, 3), jnp.float32), expected


MODELS = {"bert": bert_style, "gpt2": gpt2_style, "t5": t5_style, "vit": vit_style}
