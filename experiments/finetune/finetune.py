"""Fine-tuning with adamwdl: every (decay, peak learning rate) of one seed trained at once.

The runs of one seed share the labelled snippets, the batch order and the new head's initial values (a
paired design: the configurations differ only in their optimizer). They are stacked along a leading axis
and trained by one ``jax.vmap``-ed, jitted step; the peak learning rate and ``layerwise_decay`` are
hyperparameters injected into the optimizer state (``optax.inject_hyperparams``), so one compiled step
serves every configuration.

Per-layer metrics, logged at every step of every run by ``optax_adamwdl.layer_metrics`` inside the step:
each ladder row's (``bottom``, ``layer_0``, ..., ``top``) learning rate, the schedule at that step times
the row's ratio, and its update-to-parameter norm ratio ||dp|| / ||p||. The metrics are built inside the
step from the injected hyperparameters (``opt_state.hyperparams``), so each configuration's curves use
its own peak learning rate and decay.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.finetune import data
from experiments.finetune.pretrain import new_model
from optax_adamwdl import adamwdl, layer_metrics


def no_decay_for_bias_and_scale(name: str) -> bool:
  return not name.endswith(("bias", "scale"))


def schedule(cfg, peak_lr):
  """Linear warm-up to ``peak_lr``, then cosine decay to 0 (``peak_lr`` may be traced)."""
  warmup = max(round(cfg.finetune_steps * cfg.warmup_fraction), 1)
  unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, cfg.finetune_steps)
  return lambda step: peak_lr * unit(step)


def make_tx(cfg) -> optax.GradientTransformation:
  """adamwdl with a warm-up-cosine schedule; its peak and the decay are injected hyperparameters."""

  def factory(peak_lr, layerwise_decay):
    return adamwdl(
      schedule(cfg, peak_lr),
      weight_decay=cfg.weight_decay,
      layerwise_decay=layerwise_decay,
      apply_decay_param_fun=no_decay_for_bias_and_scale,
    )

  return optax.inject_hyperparams(factory)(peak_lr=1e-3, layerwise_decay=1.0)


def start_params(cfg, pretrained, seed: int, from_scratch: bool):
  """The classifier's initial parameters: the pre-trained encoder with a new head (or none of it)."""
  classes = len(cfg.packages)
  if from_scratch:
    return nnx.state(new_model(cfg, classes, 2000 + seed), nnx.Param)
  params = nnx.state(new_model(cfg, classes, 1000 + seed), nnx.Param)  # its head is the new one
  for key in list(params.keys()):
    if key != "head":
      params[key] = pretrained[key]
  return params


class Trainer:
  """Compiled once per configuration count; runs the stacked configurations of one seed."""

  def __init__(self, cfg, pretrained):
    self.cfg = cfg
    model = new_model(cfg, len(cfg.packages), 0)
    self.graphdef, _, self.rest = nnx.split(model, nnx.Param, ...)
    self.pretrained = pretrained
    self.tx = make_tx(cfg)
    graphdef, rest, tx = self.graphdef, self.rest, self.tx

    def step(params, opt_state, tokens, labels):
      def loss_fn(params):
        logits = nnx.merge(graphdef, params, rest)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      hp = opt_state.hyperparams  # this configuration's injected (traced) peak and decay
      metrics = layer_metrics(
        learning_rate=schedule(cfg, hp["peak_lr"]),
        layerwise_decay=hp["layerwise_decay"],
        weight_decay=cfg.weight_decay,
        apply_decay_param_fun=no_decay_for_bias_and_scale,
      )(params, updates, opt_state)
      return optax.apply_updates(params, updates), opt_state, loss, metrics

    self.step = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None)), donate_argnums=(0, 1))
    self.predict = jax.jit(
      jax.vmap(lambda p, x: nnx.merge(graphdef, p, rest)(x).argmax(-1), in_axes=(0, None))
    )

  def train(self, seed: int, runs: list[dict], corpus: data.Corpus):
    """Trains ``runs`` (dicts with peak_lr, decay, from_scratch) for one seed, side by side.

    Returns the stacked final parameters, the loss curves (steps, runs) and the metrics that
    ``layer_metrics`` logged at every step, ``{"lr/<row>" or "update_ratio/<row>": (steps, runs)}``.
    """
    cfg = self.cfg
    tokens, labels = data.labelled_subset(corpus, cfg.labels_per_class, seed)
    starts = [start_params(cfg, self.pretrained, seed, r["from_scratch"]) for r in runs]
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *starts)
    opt_state = jax.vmap(self.tx.init)(params)
    opt_state.hyperparams["peak_lr"] = jnp.asarray([r["peak_lr"] for r in runs], jnp.float32)
    opt_state.hyperparams["layerwise_decay"] = jnp.asarray([r["decay"] for r in runs], jnp.float32)
    rng = np.random.default_rng(10_000 + seed)
    order = np.empty(0, np.int64)
    losses, metrics = [], []
    for _ in range(cfg.finetune_steps):
      if len(order) < cfg.finetune_batch:
        order = np.concatenate([order, rng.permutation(len(labels))])
      idx, order = order[: cfg.finetune_batch], order[cfg.finetune_batch :]
      params, opt_state, loss, logged = self.step(params, opt_state, tokens[idx], labels[idx])
      losses.append(loss)
      metrics.append(logged)
    losses = np.asarray(jnp.stack(losses))
    metrics = {k: np.asarray(jnp.stack([m[k] for m in metrics])) for k in metrics[0]}
    return params, losses, metrics

  def accuracy(
    self, params, tokens: np.ndarray, labels: np.ndarray, chunk: int = 128
  ) -> np.ndarray:
    """The accuracy of each stacked configuration, in fixed-size chunks (one compilation)."""
    correct = 0
    for i in range(0, len(labels), chunk):
      x = tokens[i : i + chunk]
      n = len(x)
      if n < chunk:
        x = np.concatenate([x, np.zeros((chunk - n, x.shape[1]), x.dtype)])
      predictions = np.asarray(self.predict(params, x))[:, :n]
      correct = correct + (predictions == labels[i : i + n]).sum(axis=1)
    return correct / len(labels)
