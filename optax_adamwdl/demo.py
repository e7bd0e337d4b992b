"""The demo behind ``python -m optax_adamwdl``: a small Flax encoder trained with adamwdl.

It prints the per-layer learning-rate table of a small transformer encoder,
then trains it on a task it generates (name the most frequent token of a
sequence), printing the loss as it falls. The train step is the fast one: the
model split once with ``nnx.split``, then a pure ``jax.jit`` step over its
arrays that donates the parameters and the optimizer state. Needs the ``demo``
extra (flax, tqdm).
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optax_adamwdl import adamwdl, lr_table


class EncoderBlock(nnx.Module):
  """A pre-norm transformer block: self-attention and an MLP."""

  def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
    self.attention_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.mlp_in = nnx.Linear(dim, 2 * dim, rngs=rngs)
    self.mlp_out = nnx.Linear(2 * dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(self.attention_norm(x))
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


class TransformerEncoder(nnx.Module):
  """Token and position embeddings, a list of blocks, and a classifier head.

  Its parameters are named like a BERT encoder's: ``embeddings.*``,
  ``layers.N.*``, ``head.*``.
  """

  def __init__(
    self,
    vocab: int,
    length: int,
    classes: int,
    *,
    dim: int = 64,
    heads: int = 4,
    n_layers: int = 4,
    rngs: nnx.Rngs,
  ):
    self.embeddings = nnx.Embed(vocab, dim, rngs=rngs)
    self.position_embeddings = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, dim)))
    self.layers = nnx.List([EncoderBlock(dim, heads, rngs=rngs) for _ in range(n_layers)])
    self.final_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = nnx.Linear(dim, classes, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embeddings(tokens) + self.position_embeddings[...]
    for layer in self.layers:
      x = layer(x)
    return self.head(self.final_norm(x).mean(axis=1))


def most_frequent_token_task(
  rng: np.random.Generator, batch: int, *, vocab: int = 8, length: int = 16
) -> tuple[np.ndarray, np.ndarray]:
  """Sequences in which one token is planted often; the label is the most frequent token."""
  planted = rng.integers(vocab, size=batch)
  others = (planted[:, None] + rng.integers(1, vocab, size=(batch, length))) % vocab
  tokens = np.where(rng.random((batch, length)) < 0.35, planted[:, None], others)
  counts = np.stack([(tokens == v).sum(axis=1) for v in range(vocab)], axis=1)
  return tokens.astype(np.int32), counts.argmax(axis=1).astype(np.int32)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
  """The train step as Flax's performance guidance writes it: a pure, jitted function of arrays.

  ``params`` and ``opt_state`` are donated, so XLA updates them in place; the model is rebuilt from
  ``graphdef`` inside the traced function, which costs nothing at run time.
  """

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, rest, tokens, labels):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params, rest)(tokens)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def make_accuracy(graphdef: nnx.GraphDef):
  """The fraction of correct predictions, as a jitted function of the split model's arrays."""

  @jax.jit
  def accuracy(params, rest, tokens, labels):
    logits = nnx.merge(graphdef, params, rest)(tokens)
    return (logits.argmax(axis=-1) == labels).mean()

  return accuracy


def main(argv: list[str] | None = None) -> float:
  """Runs the demo and returns the final held-out accuracy."""
  from tqdm import tqdm

  parser = argparse.ArgumentParser(prog="python -m optax_adamwdl", description=__doc__)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--layerwise-decay", type=float, default=0.75)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  vocab, length = 8, 16
  rng = np.random.default_rng(args.seed)
  model = TransformerEncoder(vocab, length, vocab, rngs=nnx.Rngs(args.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, args.steps // 10, args.steps)
  tx = adamwdl(
    schedule,
    weight_decay=0.01,
    layerwise_decay=args.layerwise_decay,
    apply_decay_param_fun=lambda name: not name.endswith(("bias", "scale")),
  )
  opt_state = tx.init(params)
  train_step, accuracy = make_train_step(graphdef, tx), make_accuracy(graphdef)

  print(f"Per-layer learning-rate ratios (layerwise_decay={args.layerwise_decay}):\n")
  print(lr_table(params, args.layerwise_decay))
  print(f"\nTraining on 'name the most frequent token' ({vocab} tokens, length {length}):")

  report_every = max(args.steps // 8, 1)
  # disable=None: a bar on a terminal, none in a log (the step lines still print).
  with tqdm(range(1, args.steps + 1), unit="step", leave=False, disable=None) as bar:
    for step in bar:
      batch = most_frequent_token_task(rng, 128)
      params, opt_state, loss = train_step(params, opt_state, rest, *batch)
      loss = float(loss)
      bar.set_postfix(loss=f"{loss:.4f}")
      if step % report_every == 0 or step == 1:
        bar.write(f"  step {step:4d}  lr {float(schedule(step - 1)):.2e}  loss {loss:.4f}")
  # The first step donated the model's own arrays: give it the trained ones (to save or reuse it).
  nnx.update(model, params)
  held_out = most_frequent_token_task(np.random.default_rng(args.seed + 1), 2048)
  acc = float(accuracy(params, rest, *map(jnp.asarray, held_out)))
  print(f"Held-out accuracy: {acc:.3f} (chance: {1 / vocab:.3f})")
  return acc
