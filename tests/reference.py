"""Independent statements of the maths, for the tests to compare against.

Nothing here imports optax_adamwdl: these are re-statements of SEMANTICS.md
in plain Python and NumPy (float64).
"""

import numpy as np


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


def numpy_adamwdl(
  params, grad_fn, steps, *, lr, b1, b2, eps, wd, ratios, decay_mask, decay_follows_ratio=True
):
  """AdamWDL per SEMANTICS.md, in float64, on a dict of NumPy arrays.

  ``grad_fn(params, t)`` returns the gradients at step t (1-based); ``lr`` is a
  float or a function of the 0-based step.
  """
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t in range(1, steps + 1):
    g = {k: np.asarray(x, np.float64) for k, x in grad_fn(p, t).items()}
    lr_t = lr(t - 1) if callable(lr) else lr
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k]
      m_hat = m[k] / (1 - b1**t)
      v_hat = v[k] / (1 - b2**t)
      adam = m_hat / (np.sqrt(v_hat) + eps)
      decay = wd * float(decay_mask[k]) * p[k]
      if decay_follows_ratio:  # Paddle, timm: the layer's lr scales both
        p[k] = p[k] - lr_t * ratios[k] * (adam + decay)
      else:  # big_vision: the decay is scaled by the learning rate only
        p[k] = p[k] - lr_t * (ratios[k] * adam + decay)
  return p
