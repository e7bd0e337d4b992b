"""A sharded Flax train step with adamwdl: batch over "data", parameters over "model".

On one machine, with 8 simulated CPU devices:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/sharded_train_step.py

On several hosts (a TPU pod slice, multi-GPU nodes) the same script runs on every host after
``jax.distributed.initialize()``; see docs/guides/sharding_and_checkpoints.md.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_adamwdl import adamwdl, lr_table


class Encoder(nn.Module):
  depth: int = 4

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(256, 64)(tokens)  # "Embed_0": the embedding
    for i in range(self.depth):
      x = x + nn.Dense(64, name=f"layers_{i}")(nn.gelu(x))  # layers 0..3
    return nn.Dense(10, name="head")(x.mean(axis=1))


def main(steps: int = 60):
  n = jax.device_count()
  mesh = Mesh(
    np.array(jax.devices()).reshape((n // 2, 2) if n % 2 == 0 else (n, 1)), ("data", "model")
  )
  model = Encoder()
  tx = adamwdl(
    optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, steps),
    layerwise_decay=0.75,
    apply_decay_param_fun=lambda name: name.endswith(("kernel", "embedding")),
  )

  # Each parameter's last axis is split over "model"; the moments follow their parameter.
  example = jnp.zeros((8, 8), jnp.int32)
  abstract_params = jax.eval_shape(model.init, jax.random.key(0), example)["params"]
  param_sharding = jax.tree.map(
    lambda x: NamedSharding(mesh, P(*[None] * (x.ndim - 1), "model")), abstract_params
  )
  params = jax.jit(lambda key: model.init(key, example)["params"], out_shardings=param_sharding)(
    jax.random.key(0)
  )
  state_sharding = optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    jax.eval_shape(tx.init, params),
    param_sharding,
    transform_non_params=lambda _: NamedSharding(mesh, P()),
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),  # frozen or float32-under-master leaves
  )
  opt_state = jax.jit(tx.init, out_shardings=state_sharding)(params)
  print(lr_table(params, 0.75))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, tokens, labels):
    def loss_fn(params):
      logits = model.apply({"params": params}, tokens)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(0)
  batch_sharding = NamedSharding(mesh, P("data"))
  for step in range(steps):
    labels = rng.integers(0, 10, 32)
    tokens = 25 * labels[:, None] + rng.integers(0, 25, (32, 8))  # each class has its own tokens
    tokens, labels = jax.device_put((tokens, labels), batch_sharding)
    params, opt_state, loss = train_step(params, opt_state, tokens, labels)
    if step % 10 == 0 or step == steps - 1:
      print(f"step {step:3d}  loss {float(loss):.4f}")


if __name__ == "__main__":
  main()
