"""Models written as the JAX model libraries' own docs write them, at tiny sizes.

- Equinox's BERT (the "BERT language model" example of Equinox's docs,
  ``examples/bert.ipynb``) and Vision Transformer (``examples/vision_transformer.ipynb``):
  the classes are those of the examples, with the same fields, names and forward passes
  (einops replaced by the reshape it spells, type annotations trimmed).
- Haiku's transformer example (dm-haiku ``examples/transformer/model.py``): a ``Transformer``
  whose layers are built in a Python loop of unnamed modules, inside a ``LanguageModel``.

Each ``*_model()`` builder returns what the tests need: the parameters, a forward function of
(params, inputs), example inputs, and the depth of the model.
"""

import dataclasses
from typing import Optional

import equinox as eqx
import haiku as hk
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

# ---------------------------------------------------------------------------------------------
# Equinox: BERT (examples/bert.ipynb)

BERT_CONFIG = {  # Tiny-BERT's config of the example, smaller still
  "vocab_size": 37,
  "hidden_size": 8,
  "num_hidden_layers": 3,
  "num_attention_heads": 2,
  "intermediate_size": 16,
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
  "max_position_embeddings": 12,
  "type_vocab_size": 2,
}


class EmbedderBlock(eqx.Module):
  token_embedder: eqx.nn.Embedding
  segment_embedder: eqx.nn.Embedding
  position_embedder: eqx.nn.Embedding
  layernorm: eqx.nn.LayerNorm
  dropout: eqx.nn.Dropout

  def __init__(
    self, vocab_size, max_length, type_vocab_size, embedding_size, hidden_size, dropout_rate, key
  ):
    token_key, segment_key, position_key = jax.random.split(key, 3)
    self.token_embedder = eqx.nn.Embedding(
      num_embeddings=vocab_size, embedding_size=embedding_size, key=token_key
    )
    self.segment_embedder = eqx.nn.Embedding(
      num_embeddings=type_vocab_size, embedding_size=embedding_size, key=segment_key
    )
    self.position_embedder = eqx.nn.Embedding(
      num_embeddings=max_length, embedding_size=embedding_size, key=position_key
    )
    self.layernorm = eqx.nn.LayerNorm(shape=hidden_size)
    self.dropout = eqx.nn.Dropout(dropout_rate)

  def __call__(self, token_ids, position_ids, segment_ids, enable_dropout=False, key=None):
    tokens = jax.vmap(self.token_embedder)(token_ids)
    segments = jax.vmap(self.segment_embedder)(segment_ids)
    positions = jax.vmap(self.position_embedder)(position_ids)
    embedded_inputs = tokens + segments + positions
    embedded_inputs = jax.vmap(self.layernorm)(embedded_inputs)
    return self.dropout(embedded_inputs, inference=not enable_dropout, key=key)


class FeedForwardBlock(eqx.Module):
  mlp: eqx.nn.Linear
  output: eqx.nn.Linear
  layernorm: eqx.nn.LayerNorm
  dropout: eqx.nn.Dropout

  def __init__(self, hidden_size, intermediate_size, dropout_rate, key):
    mlp_key, output_key = jax.random.split(key)
    self.mlp = eqx.nn.Linear(in_features=hidden_size, out_features=intermediate_size, key=mlp_key)
    self.output = eqx.nn.Linear(
      in_features=intermediate_size, out_features=hidden_size, key=output_key
    )
    self.layernorm = eqx.nn.LayerNorm(shape=hidden_size)
    self.dropout = eqx.nn.Dropout(dropout_rate)

  def __call__(self, inputs, enable_dropout=True, key=None):
    hidden = jax.nn.gelu(self.mlp(inputs))
    output = self.output(hidden)
    output = self.dropout(output, inference=not enable_dropout, key=key)
    output += inputs
    return self.layernorm(output)


class BertAttentionBlock(eqx.Module):  # the example's AttentionBlock
  attention: eqx.nn.MultiheadAttention
  layernorm: eqx.nn.LayerNorm
  dropout: eqx.nn.Dropout
  num_heads: int = eqx.field(static=True)

  def __init__(self, hidden_size, num_heads, dropout_rate, attention_dropout_rate, key):
    self.num_heads = num_heads
    self.attention = eqx.nn.MultiheadAttention(
      num_heads=num_heads,
      query_size=hidden_size,
      use_query_bias=True,
      use_key_bias=True,
      use_value_bias=True,
      use_output_bias=True,
      dropout_p=attention_dropout_rate,
      key=key,
    )
    self.layernorm = eqx.nn.LayerNorm(shape=hidden_size)
    self.dropout = eqx.nn.Dropout(dropout_rate)

  def __call__(self, inputs, mask, enable_dropout=False, key=None):
    if mask is not None:
      mask = self.make_self_attention_mask(mask)
    attention_key, dropout_key = (None, None) if key is None else jax.random.split(key)
    result = self.attention(
      query=inputs,
      key_=inputs,
      value=inputs,
      mask=mask,
      inference=not enable_dropout,
      key=attention_key,
    )
    result = self.dropout(result, inference=not enable_dropout, key=dropout_key)
    result = result + inputs
    return jax.vmap(self.layernorm)(result)

  def make_self_attention_mask(self, mask):
    mask = jnp.multiply(jnp.expand_dims(mask, axis=-1), jnp.expand_dims(mask, axis=-2))
    mask = jnp.expand_dims(mask, axis=-3)
    mask = jnp.repeat(mask, repeats=self.num_heads, axis=-3)
    return mask.astype(jnp.float32)


class TransformerLayer(eqx.Module):
  attention_block: BertAttentionBlock
  ff_block: FeedForwardBlock

  def __init__(
    self, hidden_size, intermediate_size, num_heads, dropout_rate, attention_dropout_rate, key
  ):
    attention_key, ff_key = jax.random.split(key)
    self.attention_block = BertAttentionBlock(
      hidden_size=hidden_size,
      num_heads=num_heads,
      dropout_rate=dropout_rate,
      attention_dropout_rate=attention_dropout_rate,
      key=attention_key,
    )
    self.ff_block = FeedForwardBlock(
      hidden_size=hidden_size,
      intermediate_size=intermediate_size,
      dropout_rate=dropout_rate,
      key=ff_key,
    )

  def __call__(self, inputs, mask=None, *, enable_dropout=False, key=None):
    attn_key, ff_key = (None, None) if key is None else jax.random.split(key)
    attention_output = self.attention_block(
      inputs, mask, enable_dropout=enable_dropout, key=attn_key
    )
    seq_len = inputs.shape[0]
    ff_keys = None if ff_key is None else jax.random.split(ff_key, num=seq_len)
    return jax.vmap(self.ff_block, in_axes=(0, None, 0))(attention_output, enable_dropout, ff_keys)


class Encoder(eqx.Module):
  embedder_block: EmbedderBlock
  layers: list
  pooler: eqx.nn.Linear

  def __init__(
    self,
    vocab_size,
    max_length,
    type_vocab_size,
    embedding_size,
    hidden_size,
    intermediate_size,
    num_layers,
    num_heads,
    dropout_rate,
    attention_dropout_rate,
    key,
  ):
    embedder_key, layer_key, pooler_key = jax.random.split(key, num=3)
    self.embedder_block = EmbedderBlock(
      vocab_size=vocab_size,
      max_length=max_length,
      type_vocab_size=type_vocab_size,
      embedding_size=embedding_size,
      hidden_size=hidden_size,
      dropout_rate=dropout_rate,
      key=embedder_key,
    )
    layer_keys = jax.random.split(layer_key, num=num_layers)
    self.layers = []
    for layer_key in layer_keys:
      self.layers.append(
        TransformerLayer(
          hidden_size=hidden_size,
          intermediate_size=intermediate_size,
          num_heads=num_heads,
          dropout_rate=dropout_rate,
          attention_dropout_rate=attention_dropout_rate,
          key=layer_key,
        )
      )
    self.pooler = eqx.nn.Linear(in_features=hidden_size, out_features=hidden_size, key=pooler_key)

  def __call__(self, token_ids, position_ids, segment_ids, *, enable_dropout=False, key=None):
    emb_key, l_key = (None, None) if key is None else jax.random.split(key)
    embeddings = self.embedder_block(
      token_ids=token_ids,
      position_ids=position_ids,
      segment_ids=segment_ids,
      enable_dropout=enable_dropout,
      key=emb_key,
    )
    mask = jnp.asarray(token_ids != 0, dtype=jnp.int32)
    x = embeddings
    layer_outputs = []
    for layer in self.layers:
      cl_key, l_key = (None, None) if l_key is None else jax.random.split(l_key)
      x = layer(x, mask, enable_dropout=enable_dropout, key=cl_key)
      layer_outputs.append(x)
    first_token_last_layer = x[..., 0, :]
    pooled = jnp.tanh(self.pooler(first_token_last_layer))
    return {"embeddings": embeddings, "layers": layer_outputs, "pooled": pooled}


class BertClassifier(eqx.Module):
  encoder: Encoder
  classifier_head: eqx.nn.Linear
  dropout: eqx.nn.Dropout

  def __init__(self, config, num_classes, key):
    encoder_key, head_key = jax.random.split(key)
    self.encoder = Encoder(
      vocab_size=config["vocab_size"],
      max_length=config["max_position_embeddings"],
      type_vocab_size=config["type_vocab_size"],
      embedding_size=config["hidden_size"],
      hidden_size=config["hidden_size"],
      intermediate_size=config["intermediate_size"],
      num_layers=config["num_hidden_layers"],
      num_heads=config["num_attention_heads"],
      dropout_rate=config["hidden_dropout_prob"],
      attention_dropout_rate=config["attention_probs_dropout_prob"],
      key=encoder_key,
    )
    self.classifier_head = eqx.nn.Linear(
      in_features=config["hidden_size"], out_features=num_classes, key=head_key
    )
    self.dropout = eqx.nn.Dropout(config["hidden_dropout_prob"])

  def __call__(self, inputs, enable_dropout=True, key=None):
    seq_len = inputs["token_ids"].shape[-1]
    position_ids = jnp.arange(seq_len)
    e_key, d_key = (None, None) if key is None else jax.random.split(key)
    pooled_output = self.encoder(
      token_ids=inputs["token_ids"],
      segment_ids=inputs["segment_ids"],
      position_ids=position_ids,
      enable_dropout=enable_dropout,
      key=e_key,
    )["pooled"]
    pooled_output = self.dropout(pooled_output, inference=not enable_dropout, key=d_key)
    return self.classifier_head(pooled_output)


def bert_inputs(batch=2, length=5):
  ids = (jnp.arange(batch * length).reshape(batch, length) % (BERT_CONFIG["vocab_size"] - 1)) + 1
  return {
    "token_ids": ids,
    "segment_ids": jnp.zeros_like(ids),
    "label": jnp.arange(batch) % 2,
  }


def bert_model():
  """Equinox's BERT classifier: (model, forward(params, inputs), inputs, depth)."""
  model = BertClassifier(config=BERT_CONFIG, num_classes=2, key=jr.PRNGKey(5678))
  params, static = eqx.partition(model, eqx.is_array)

  def forward(params, inputs):
    classifier = eqx.combine(params, static)
    return jax.vmap(lambda x: classifier(x, enable_dropout=False))(inputs)

  return model, forward, bert_inputs(), BERT_CONFIG["num_hidden_layers"]


# ---------------------------------------------------------------------------------------------
# Equinox: Vision Transformer (examples/vision_transformer.ipynb)

CHANNELS, HEIGHT, WIDTH = 3, 8, 8
PATCH_SIZE = 4
NUM_PATCHES = (HEIGHT // PATCH_SIZE) * (WIDTH // PATCH_SIZE)


class PatchEmbedding(eqx.Module):
  linear: eqx.nn.Embedding
  patch_size: int

  def __init__(self, input_channels, output_shape, patch_size, key):
    self.patch_size = patch_size
    self.linear = eqx.nn.Linear(self.patch_size**2 * input_channels, output_shape, key=key)

  def __call__(self, x):
    # einops.rearrange(x, "c (h ph) (w pw) -> (h w) (c ph pw)", ph=..., pw=...)
    c, height, width = x.shape
    p = self.patch_size
    x = x.reshape(c, height // p, p, width // p, p).transpose(1, 3, 0, 2, 4)
    x = x.reshape((height // p) * (width // p), c * p * p)
    return jax.vmap(self.linear)(x)


class AttentionBlock(eqx.Module):
  layer_norm: eqx.nn.LayerNorm
  attention: eqx.nn.MultiheadAttention
  linear1: eqx.nn.Linear
  linear2: eqx.nn.Linear
  dropout: eqx.nn.Dropout

  def __init__(self, input_shape, hidden_dim, num_heads, dropout_rate, key):
    key1, key2, key3 = jr.split(key, 3)
    self.layer_norm = eqx.nn.LayerNorm(input_shape)
    self.attention = eqx.nn.MultiheadAttention(num_heads, input_shape, key=key1)
    self.linear1 = eqx.nn.Linear(input_shape, hidden_dim, key=key2)
    self.dropout = eqx.nn.Dropout(dropout_rate)
    self.linear2 = eqx.nn.Linear(hidden_dim, input_shape, key=key3)

  def __call__(self, x, enable_dropout, key):
    input_x = jax.vmap(self.layer_norm)(x)
    x = x + self.attention(input_x, input_x, input_x)
    input_x = jax.vmap(self.layer_norm)(x)
    input_x = jax.vmap(self.linear1)(input_x)
    input_x = jax.nn.gelu(input_x)
    key1, key2 = jr.split(key, num=2)
    input_x = self.dropout(input_x, inference=not enable_dropout, key=key1)
    input_x = jax.vmap(self.linear2)(input_x)
    input_x = self.dropout(input_x, inference=not enable_dropout, key=key2)
    return x + input_x


class VisionTransformer(eqx.Module):
  patch_embedding: PatchEmbedding
  positional_embedding: jnp.ndarray
  cls_token: jnp.ndarray
  attention_blocks: list
  dropout: eqx.nn.Dropout
  mlp: eqx.nn.Sequential
  num_layers: int

  def __init__(
    self,
    embedding_dim,
    hidden_dim,
    num_heads,
    num_layers,
    dropout_rate,
    patch_size,
    num_patches,
    num_classes,
    key,
  ):
    key1, key2, key3, key4, key5 = jr.split(key, 5)
    self.patch_embedding = PatchEmbedding(CHANNELS, embedding_dim, patch_size, key1)
    self.positional_embedding = jr.normal(key2, (num_patches + 1, embedding_dim))
    self.cls_token = jr.normal(key3, (1, embedding_dim))
    self.num_layers = num_layers
    self.attention_blocks = [
      AttentionBlock(embedding_dim, hidden_dim, num_heads, dropout_rate, key4)
      for _ in range(self.num_layers)
    ]
    self.dropout = eqx.nn.Dropout(dropout_rate)
    self.mlp = eqx.nn.Sequential(
      [eqx.nn.LayerNorm(embedding_dim), eqx.nn.Linear(embedding_dim, num_classes, key=key5)]
    )

  def __call__(self, x, enable_dropout, key):
    x = self.patch_embedding(x)
    x = jnp.concatenate((self.cls_token, x), axis=0)
    x += self.positional_embedding[: x.shape[0]]
    dropout_key, *attention_keys = jr.split(key, num=self.num_layers + 1)
    x = self.dropout(x, inference=not enable_dropout, key=dropout_key)
    for block, attention_key in zip(self.attention_blocks, attention_keys):
      x = block(x, enable_dropout, key=attention_key)
    x = x[0]  # the CLS token
    return self.mlp(x)


def vit_inputs(batch=2):
  images = jnp.linspace(-1.0, 1.0, batch * CHANNELS * HEIGHT * WIDTH)
  return images.reshape(batch, CHANNELS, HEIGHT, WIDTH), jnp.arange(batch) % 10


def vit_model(num_layers=3):
  """Equinox's ViT: (model, forward(params, images), (images, labels), depth)."""
  model = VisionTransformer(
    embedding_dim=8,
    hidden_dim=16,
    num_heads=2,
    num_layers=num_layers,
    dropout_rate=0.1,
    patch_size=PATCH_SIZE,
    num_patches=NUM_PATCHES,
    num_classes=10,
    key=jr.PRNGKey(2003),
  )
  params, static = eqx.partition(model, eqx.is_array)

  def forward(params, images):
    vit = eqx.combine(params, static)
    keys = jr.split(jr.PRNGKey(0), images.shape[0])
    return jax.vmap(vit, in_axes=(0, None, 0))(images, False, keys)

  return model, forward, vit_inputs(), num_layers


# ---------------------------------------------------------------------------------------------
# Haiku: the transformer example (dm-haiku examples/transformer/model.py)

HK_VOCAB, HK_LENGTH, HK_LAYERS = 13, 6, 3


def _layer_norm(x):
  """Applies a unique LayerNorm to ``x`` with default settings."""
  ln = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True)
  return ln(x)


@dataclasses.dataclass
class Transformer(hk.Module):
  """A transformer stack."""

  num_heads: int
  num_layers: int
  attn_size: int
  dropout_rate: float
  widening_factor: int = 4
  name: Optional[str] = None  # noqa: UP045 (as the example writes it)

  def __call__(self, embeddings, mask):
    initializer = hk.initializers.VarianceScaling(2 / self.num_layers)
    _, seq_len, model_size = embeddings.shape
    mask = mask[:, None, None, :]
    causal_mask = np.tril(np.ones((1, 1, seq_len, seq_len)))
    mask = mask * causal_mask
    h = embeddings
    for _ in range(self.num_layers):
      attn_block = hk.MultiHeadAttention(
        num_heads=self.num_heads, key_size=self.attn_size, model_size=model_size, w_init=initializer
      )
      h_norm = _layer_norm(h)
      h_attn = attn_block(h_norm, h_norm, h_norm, mask=mask)
      h_attn = hk.dropout(hk.next_rng_key(), self.dropout_rate, h_attn)
      h = h + h_attn
      dense_block = hk.Sequential(
        [
          hk.Linear(self.widening_factor * model_size, w_init=initializer),
          jax.nn.gelu,
          hk.Linear(model_size, w_init=initializer),
        ]
      )
      h_norm = _layer_norm(h)
      h_dense = dense_block(h_norm)
      h_dense = hk.dropout(hk.next_rng_key(), self.dropout_rate, h_dense)
      h = h + h_dense
    return _layer_norm(h)


@dataclasses.dataclass
class LanguageModel(hk.Module):
  """An autoregressive transformer-based language model."""

  transformer: Transformer
  model_size: int
  vocab_size: int
  pad_token: int
  name: Optional[str] = None  # noqa: UP045

  def __call__(self, tokens):
    input_mask = jnp.greater(tokens, self.pad_token)
    _, seq_len = tokens.shape
    embed_init = hk.initializers.TruncatedNormal(stddev=0.02)
    token_embedding_map = hk.Embed(self.vocab_size, embed_dim=self.model_size, w_init=embed_init)
    token_embeddings = token_embedding_map(tokens)
    positional_embeddings = hk.get_parameter(
      "positional_embeddings", [seq_len, self.model_size], init=embed_init
    )
    input_embeddings = token_embeddings + positional_embeddings
    embeddings = self.transformer(input_embeddings, input_mask)
    return hk.Linear(self.vocab_size)(embeddings)


def haiku_forward(tokens, dropout_rate=0.0):
  """The example's train.py builds the model inside the transformed function."""
  model = LanguageModel(
    transformer=Transformer(
      num_heads=2, num_layers=HK_LAYERS, attn_size=4, dropout_rate=dropout_rate
    ),
    model_size=8,
    vocab_size=HK_VOCAB,
    pad_token=0,
  )
  return model(tokens)


def haiku_tokens(batch=2):
  return (jnp.arange(batch * HK_LENGTH).reshape(batch, HK_LENGTH) % (HK_VOCAB - 1)) + 1


def haiku_model():
  """Haiku's transformer example: (transformed, params, forward(params, tokens), tokens, depth)."""
  transformed = hk.transform(haiku_forward)
  tokens = haiku_tokens()
  params = transformed.init(jax.random.PRNGKey(428), tokens)
  forward = lambda params, tokens: transformed.apply(params, jax.random.PRNGKey(0), tokens)
  return transformed, params, forward, tokens, HK_LAYERS
