"""Self-supervised pre-training of the encoder on the standard library's source, cached on disk.

Two objectives on the same forward pass, summed: masked-token prediction (BERT's) and a contrastive one
that needs no label either: two windows of the same file should have closer pooled features than
windows of other files (InfoNCE over the batch, as in SimCLR; the masking is the augmentation). The
first teaches local syntax, the second what a file is about.

The cache key is a hash of everything that determines the result (the model and pre-training settings,
the corpus fingerprint, the JAX version), so a changed setting pre-trains again and a re-run reuses it.
"""

import functools
import hashlib
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.finetune import data
from experiments.finetune.model import TokenEncoder

CACHE = pathlib.Path(__file__).resolve().parent / "cache"  # git-ignored
CODE_VERSION = 4


def new_model(cfg, outputs: int, seed: int, projection: int | None = None) -> TokenEncoder:
  return TokenEncoder(
    cfg.vocab_size,
    cfg.length,
    outputs,
    dim=cfg.dim,
    heads=cfg.heads,
    n_layers=cfg.n_layers,
    projection=projection,
    rngs=nnx.Rngs(seed),
  )


def contrastive_loss(z: jax.Array, temperature: float) -> jax.Array:
  """InfoNCE: rows 2i and 2i + 1 are a positive pair, every other row of the batch a negative."""
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  similarity = z @ z.T / temperature
  similarity = jnp.where(jnp.eye(len(z), dtype=bool), -jnp.inf, similarity)
  partner = jnp.arange(len(z)) ^ 1
  return optax.softmax_cross_entropy_with_integer_labels(similarity, partner).mean()


def cache_key(cfg, corpus: data.Corpus) -> str:
  fields = {
    k: getattr(cfg, k)
    for k in (
      "length",
      "vocab_size",
      "dim",
      "heads",
      "n_layers",
      "pretrain_steps",
      "pretrain_batch",
      "pretrain_lr",
      "pretrain_seed",
      "temperature",
    )
  }
  # CODE_VERSION: bump it when the model or the pre-training code changes.
  text = json.dumps([fields, corpus.fingerprint, jax.__version__, CODE_VERSION], sort_keys=True)
  return hashlib.sha1(text.encode()).hexdigest()[:16]


def pretrain(cfg, corpus: data.Corpus, *, cache: pathlib.Path | None = CACHE, log=print):
  """Returns (params without the pre-training head, record dict); reads or fills the cache."""
  model = new_model(cfg, cfg.vocab_size, cfg.pretrain_seed, projection=cfg.dim)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  treedef = jax.tree.structure(params)
  key = cache_key(cfg, corpus)
  path = cache / f"pretrain-{key}.npz" if cache is not None else None
  if path is not None and path.exists():
    with np.load(path) as stored:
      leaves = [jnp.asarray(stored[f"arr_{i}"]) for i in range(treedef.num_leaves)]
    record = json.loads(path.with_suffix(".json").read_text())
    record["cached"] = True
    log(f"pre-trained encoder read from the cache ({path.name})")
    return jax.tree.unflatten(treedef, leaves), record

  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg.pretrain_lr, max(cfg.pretrain_steps // 20, 1), cfg.pretrain_steps, cfg.pretrain_lr / 10
  )
  tx = optax.adamw(schedule, weight_decay=0.01)
  opt_state = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, tokens, positions, targets):
    def loss_fn(params):
      logits, z = nnx.merge(graphdef, params, rest).pretraining_outputs(tokens, positions)
      mlm = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
      contrastive = contrastive_loss(z, cfg.temperature)
      return mlm + contrastive, jnp.stack([mlm, contrastive])

    (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses

  rng = np.random.default_rng(cfg.pretrain_seed)
  losses, start = [], time.time()
  every = max(cfg.pretrain_steps // 20, 1)
  window = []
  for i in range(1, cfg.pretrain_steps + 1):
    batch = data.pretrain_batch(rng, corpus, cfg.pretrain_batch // 2, cfg.length, cfg.vocab_size)
    params, opt_state, loss = step(params, opt_state, *batch)
    window.append(loss)
    if i % every == 0 or i == 1:
      mlm, contrastive = np.asarray(jnp.stack(window)).mean(axis=0)
      losses.append([i, round(float(mlm), 4), round(float(contrastive), 4)])
      window = []
      log(
        f"  pre-train step {i:5d}  masked-token loss {mlm:.3f}  contrastive loss {contrastive:.3f}"
        f"  ({time.time() - start:.0f} s)"
      )
  record = {
    "steps": cfg.pretrain_steps,
    # [step, mean masked-token loss, mean contrastive loss], means since the previous entry
    "loss_curve": losses,
    "seconds": round(time.time() - start, 1),
    "key": key,
    "cached": False,
  }
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, *[np.asarray(x) for x in jax.tree.leaves(params)])
    path.with_suffix(".json").write_text(json.dumps(record))
  return params, record
