"""The maths, stated once in float64 for the tests to compare against (docs/maths.md).

Nothing here imports optax_adamwdl. :func:`adam_update` is one AdamWDL step of one leaf;
:func:`adam_step` applies it, :func:`run` runs it over flat dicts; the generated differential test
(tests/differential.py) calls :func:`adam_update` too. The rest restates the ladders the tests give
the library: :func:`ladder` (the default rule on ``embeddings.*`` / ``encoder.layers.N.*`` names)
and Paddle's rule on a BERT's Paddle names (SEMANTICS.md).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


def wide(x: Any) -> np.ndarray:
  """``x`` as float64, or complex128 when complex."""
  x = np.asarray(x)
  return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def adam_update(
  p,
  m,
  v,
  g,
  t: int,
  ratio,
  *,
  lr: float,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  wd: float,
  decay: bool = True,
  nesterov: bool = False,
  decay_follows_ratio: bool = True,
  lazy: bool = False,
):
  """One AdamWDL step of one leaf: ``(update, m, v)``, the update to add to ``p`` and the moments.

  ``p``, ``m``, ``v`` and the gradient ``g`` are float64 (complex128) arrays (``m`` and ``v`` may
  be 0.0 before the first step), ``t`` the 1-based step count and ``ratio`` the leaf's
  learning-rate ratio: a number, or an array that broadcasts against ``p`` (a scanned leaf's
  vector, shaped along its layer axis). A ratio of 0 freezes: an update of exactly 0, whatever the
  gradient (inf and nan included). ``decay``: whether the leaf is decayed (``mask``).
  ``decay_follows_ratio=False``: the decay is scaled by the learning rate only. ``lazy``
  (``lazy_mode``): a row (slice along axis 0) whose gradient is all zero keeps its value and its
  moments.
  """
  with np.errstate(invalid="ignore", over="ignore"):  # inf - inf on a frozen leaf's gradient
    m_new = b1 * m + (1 - b1) * g
    if np.iscomplexobj(g):
      v_new = b2 * v + (1 - b2) * np.abs(g) ** 2
    else:
      v_new = b2 * v + (1 - b2) * g * g
    if nesterov:
      m_hat = b1 * m_new / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
    else:
      m_hat = m_new / (1 - b1**t)
    adam = m_hat / (np.sqrt(v_new / (1 - b2**t) + eps_root) + eps)
    decayed = wd * decay * p
    if decay_follows_ratio:  # Paddle, timm: the layer's ratio scales both
      step = ratio * (adam + decayed)
    else:  # big_vision: the decay is scaled by the learning rate only
      step = ratio * adam + decayed * (np.asarray(ratio) != 0)
  active = np.ones(np.shape(g), bool)
  if lazy:
    rows = g != 0 if g.ndim <= 1 else np.any(g != 0, axis=tuple(range(1, g.ndim)), keepdims=True)
    active = np.broadcast_to(rows, g.shape)
  update = np.where(active & (np.broadcast_to(ratio, np.shape(g)) != 0), -lr * step, 0.0)
  return update, np.where(active, m_new, m), np.where(active, v_new, v)


def adam_step(p, m, v, g, t: int, ratio, **hyper):
  """One AdamWDL step of one leaf: ``(p, m, v)`` after it (the arguments of :func:`adam_update`)."""
  update, m, v = adam_update(p, m, v, g, t, ratio, **hyper)
  return p + update, m, v


def run(
  init: Mapping[str, Any],
  grads: Sequence[Mapping[str, Any]],
  ratios: Mapping[str, Any] | Callable[[int], Mapping[str, Any]],
  *,
  lr: float | Callable[[int], float],
  wd: float | Callable[[int], float],
  decay: Mapping[str, bool] | None = None,
  **hyper,
) -> tuple[dict, dict, dict]:
  """AdamWDL on flat dicts: ``(p, m, v)`` after one step per dict of ``grads``, in float64.

  ``ratios`` is {name: ratio} (see :func:`adam_update`); it, ``lr`` and ``wd`` may instead be
  functions of the 0-based step (a schedule). ``decay`` is {name: bool}, every name by default;
  ``hyper`` are the other keywords of :func:`adam_update` (``b1``, ``lazy``, ...).
  """
  at = lambda x, t: x(t) if callable(x) else x
  p = {k: wide(x) for k, x in init.items()}
  m = {k: np.zeros_like(x) for k, x in p.items()}
  v = {k: np.zeros(x.shape) for k, x in p.items()}
  for t, g in enumerate(grads, start=1):
    lr_t, wd_t, ratios_t = at(lr, t - 1), at(wd, t - 1), at(ratios, t - 1)
    for k in p:
      p[k], m[k], v[k] = adam_step(
        p[k],
        m[k],
        v[k],
        wide(g[k]),
        t,
        ratios_t[k],
        lr=lr_t,
        wd=wd_t,
        decay=True if decay is None else bool(decay[k]),
        **hyper,
      )
  return p, m, v


def ladder(name, decay, depth, *, head=1.0, depth_normalized=False, min_ratio=0.0):
  """The default ladder of one stack of ``depth`` layers, on ``embeddings.*`` (the bottom),
  ``encoder.layers.N.*`` (layer N) and any other name (the top, ``head``)."""
  if name.startswith("embeddings."):
    exponent = depth + 1
  elif name.startswith("encoder.layers."):
    exponent = depth - int(name.split(".")[2])
  else:
    return max(head, min_ratio)
  if depth_normalized:
    exponent = exponent / (depth + 1)
  return max(decay**exponent, min_ratio)


def paddle_layerwise_lr_decay(decay_rate, n_layers, name):
  """PaddleNLP's default rule, as measured (SEMANTICS.md), on a Paddle name."""
  if "encoder.layers" in name:
    idx = name.find("encoder.layers.")
    layer = int(name[idx:].split(".")[2])
    return decay_rate ** (n_layers - layer)
  if "embedding" in name:
    return decay_rate ** (n_layers + 1)
  return 1.0


def bert_paddle_names(n_layers: int) -> dict[str, tuple[int, ...]]:
  """A BERT-like model's Paddle parameter names and (small) shapes."""
  h = 8
  shapes = {
    "embeddings.word_embeddings.weight": (30, h),
    "embeddings.position_embeddings.weight": (16, h),
    "embeddings.token_type_embeddings.weight": (2, h),
    "embeddings.layer_norm.weight": (h,),
    "embeddings.layer_norm.bias": (h,),
  }
  for i in range(n_layers):
    p = f"encoder.layers.{i}."
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      shapes[p + f"self_attn.{proj}.weight"] = (h, h)
      shapes[p + f"self_attn.{proj}.bias"] = (h,)
    shapes[p + "linear1.weight"] = (h, 2 * h)
    shapes[p + "linear1.bias"] = (2 * h,)
    shapes[p + "linear2.weight"] = (2 * h, h)
    shapes[p + "linear2.bias"] = (h,)
    for norm in ("norm1", "norm2"):
      shapes[p + f"{norm}.weight"] = (h,)
      shapes[p + f"{norm}.bias"] = (h,)
  shapes["pooler.dense.weight"] = (h, h)
  shapes["pooler.dense.bias"] = (h,)
  shapes["classifier.weight"] = (h, 3)
  shapes["classifier.bias"] = (3,)
  return shapes


def paddle_no_decay(name: str) -> bool:
  """The usual BERT recipe: no weight decay on biases and norms."""
  return not (name.endswith("bias") or "norm" in name)
