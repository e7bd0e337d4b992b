"""Fine-tuning with adamwdl: every (decay, peak learning rate) of one seed trained at once.

The runs of one seed share the labelled snippets, the batch order and the new head's initial values (a
paired design: the configurations differ only in their optimizer). They are stacked along a leading axis
and trained by one ``jax.vmap``-ed, jitted step; the peak learning rate and ``layerwise_decay`` are
hyperparameters injected into the optimizer state (``optax.inject_hyperparams``), so one compiled step
serves every configuration.

Per-layer metrics, logged at every step of every run: the update-to-parameter norm ratio ||dp|| / ||p||
of each ladder row (the embeddings, each layer, the head), computed inside the step from its updates and
parameters, and each row's learning rate, the schedule at that step times the row's ratio from
``optax_adamwdl.lr_placements``. They are the numbers ``optax_adamwdl.layer_metrics`` returns
(``tests/test_experiment.py`` checks it), computed here directly because the learning rate is built
inside the injected factory, per run, from the injected peak.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.finetune import data
from experiments.finetune.pretrain import new_model
from optax_adamwdl import Placement, adamwdl, lr_placements


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


def row_name(placement: Placement) -> str:
  if placement.position == "bottom":
    return "embeddings"
  if placement.position == "top":
    return "head"
  return f"layer_{int(placement.position):02d}"


def ladder_rows(params, decay: float) -> tuple[list[str], dict[str, float]]:
  """The ladder row of each leaf of ``params`` (in leaf order), and each row's learning-rate ratio."""
  placements = jax.tree.leaves(
    lr_placements(params, decay), is_leaf=lambda x: isinstance(x, Placement)
  )
  rows = [row_name(p) for p in placements]
  ratios = {}
  for name, p in zip(rows, placements):
    ratios[name] = float(p.ratio)
  return rows, ratios


def sort_rows(names) -> list[str]:
  """Bottom to top: the embeddings, the layers (their names are zero-padded), the head."""
  rank = {"embeddings": 0, "head": 2}
  return sorted(set(names), key=lambda n: (rank.get(n, 1), n))


def update_ratios(params, updates, rows: list[str]) -> dict[str, jax.Array]:
  """||update|| / ||param|| per ladder row (jit-safe): how far the step moves each row, relatively."""
  sq = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)))
  p_sq, u_sq = {}, {}
  for row, p, u in zip(rows, jax.tree.leaves(params), jax.tree.leaves(updates)):
    p_sq[row] = p_sq.get(row, 0.0) + sq(p)
    u_sq[row] = u_sq.get(row, 0.0) + sq(u)
  return {row: jnp.sqrt(u_sq[row] / jnp.maximum(p_sq[row], 1e-30)) for row in p_sq}


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
    self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
    self.rows, _ = ladder_rows(params, 0.5)
    self.pretrained = pretrained
    self.tx = make_tx(cfg)
    graphdef, rest, tx, rows = self.graphdef, self.rest, self.tx, self.rows

    def step(params, opt_state, tokens, labels):
      def loss_fn(params):
        logits = nnx.merge(graphdef, params, rest)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      ratios = update_ratios(params, updates, rows)
      return optax.apply_updates(params, updates), opt_state, loss, ratios

    self.step = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None)), donate_argnums=(0, 1))
    self.predict = jax.jit(
      jax.vmap(lambda p, x: nnx.merge(graphdef, p, rest)(x).argmax(-1), in_axes=(0, None))
    )

  def train(self, seed: int, runs: list[dict], corpus: data.Corpus):
    """Trains ``runs`` (dicts with peak_lr, decay, from_scratch) for one seed, side by side.

    Returns the stacked final parameters, the loss curves (steps, runs) and the per-row update ratios
    {row: (steps, runs)}.
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
    losses, ratios = [], []
    for _ in range(cfg.finetune_steps):
      if len(order) < cfg.finetune_batch:
        order = np.concatenate([order, rng.permutation(len(labels))])
      idx, order = order[: cfg.finetune_batch], order[cfg.finetune_batch :]
      params, opt_state, loss, step_ratios = self.step(params, opt_state, tokens[idx], labels[idx])
      losses.append(loss)
      ratios.append(step_ratios)
    losses = np.asarray(jnp.stack(losses))
    ratios = {row: np.asarray(jnp.stack([r[row] for r in ratios])) for row in ratios[0]}
    return params, losses, ratios

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


def lr_curves(cfg, params, peak_lr: float, decay: float) -> dict[str, list[float]]:
  """Each row's learning rate at each fine-tuning step: schedule(step) x the row's ratio."""
  _, ratios = ladder_rows(params, decay)
  sched = schedule(cfg, peak_lr)
  base = np.asarray([float(sched(t)) for t in range(cfg.finetune_steps)])
  return {row: (base * ratio).tolist() for row, ratio in ratios.items()}
