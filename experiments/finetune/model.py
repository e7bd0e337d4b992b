"""A small transformer encoder named like BERT: ``embeddings``, ``layers.N``, ``head``.

The blocks are ``optax_adamwdl.demo``'s pre-norm ``EncoderBlock``. The same class serves both phases:
pre-training puts a ``head`` of vocabulary-size outputs on the masked positions (masked-token
prediction) and a ``projection`` on the mean of the positions (a contrastive objective), fine-tuning replaces it by a new ``head`` of ``classes`` outputs on the mean of the
positions. The position embeddings are learned, initialised from sinusoids (a small model finds its
neighbours sooner) scaled below the token embeddings.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from optax_adamwdl.demo import EncoderBlock


def sinusoids(length: int, dim: int) -> jax.Array:
  position = jnp.arange(length)[:, None]
  frequency = jnp.exp(-jnp.log(10_000.0) * jnp.arange(0, dim, 2) / dim)
  angles = position * frequency
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)[:, :dim]


class TokenEncoder(nnx.Module):
  def __init__(
    self,
    vocab: int,
    length: int,
    outputs: int,
    *,
    dim: int,
    heads: int,
    n_layers: int,
    projection: int | None = None,
    rngs: nnx.Rngs,
  ):
    self.embeddings = nnx.Embed(vocab, dim, rngs=rngs)
    # Sinusoids scaled to half the norm of a token embedding (about 1), so tokens dominate at first.
    self.position_embeddings = nnx.Param(0.5 * sinusoids(length, dim) / jnp.sqrt(dim / 2))
    self.layers = nnx.List([EncoderBlock(dim, heads, rngs=rngs) for _ in range(n_layers)])
    self.final_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = nnx.Linear(dim, outputs, rngs=rngs)
    # Pre-training only: the contrastive objective's projection of the pooled features.
    self.projection = nnx.Linear(dim, projection, rngs=rngs) if projection else None

  def features(self, tokens: jax.Array) -> jax.Array:
    x = self.embeddings(tokens) + self.position_embeddings[...]
    for layer in self.layers:
      x = layer(x)
    return self.final_norm(x)

  def pretraining_outputs(self, tokens: jax.Array, positions: jax.Array):
    """The masked-token logits at ``positions`` (batch, k) and the projected, pooled features."""
    features = self.features(tokens)
    masked = jnp.take_along_axis(features, positions[..., None], axis=1)
    return self.head(masked), self.projection(features.mean(axis=1))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Sequence logits from the mean of the positions: the downstream classifier."""
    return self.head(self.features(tokens).mean(axis=1))


def param_count(params) -> int:
  return sum(int(jnp.size(x)) for x in jax.tree.leaves(params))
