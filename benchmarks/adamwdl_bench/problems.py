"""What is optimized: BERT-shaped trees, the configurations compared on them, and the step they take."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adamwdl import adamwdl, lr_ratios, param_names, single_pass

DECAY, LR, WD = 0.75, 1e-3, 0.01

TREES = {
  "bert-base": dict(layers=12, hidden=768, vocab=30522, positions=512),
  "bert-large": dict(layers=24, hidden=1024, vocab=30522, positions=512),
  "1.3b": dict(layers=24, hidden=2048, vocab=30522, positions=512),
  "tiny": dict(layers=2, hidden=64, vocab=1000, positions=64),
}

# Per configuration: the parameters' dtype and the bytes a step must move per parameter.
CONFIGS = {
  "optax.adamw": ("float32", 28),  # read p, g, m, v and write p, m, v
  "adamwdl": ("float32", 28),
  "adamwdl, multipliers": ("float32", 28),  # + lr_mults and wd_mults: more distinct ratios
  "multi_transform": ("float32", 28),  # the hand-written alternative: one adamw per ratio
  "optax.adamw, single_pass": ("float32", 28),
  "adamwdl, single_pass": ("float32", 28),
  "optax.adamw, bf16": ("bfloat16", 14),  # 7 bf16 arrays: Adam's state in the params' dtype
  # bf16 p and g, float32 master, m and v: 2 + 2 + 12 bytes read, 2 + 12 written
  "adamwdl, bf16 + multi_precision": ("bfloat16", 30),
}
NAMES = {  # how the tables print a configuration
  "optax.adamw, bf16": "optax.adamw, bf16 params and state",
  "adamwdl, bf16 + multi_precision": "adamwdl, bf16 params + multi_precision",
}
# A fine-tuning recipe's multipliers on top of the ladder: a 10x classifier, a 5x pooler, frozen
# position embeddings, and half the weight decay on the feed-forward kernels. (XLA compiles one
# kernel per distinct (shape, constants): a multiplier that gives leaves of one shape new ratios
# adds kernels, and compile time with them.)
LR_MULTS = [(r"classifier\..*", 10.0), (r"pooler\..*", 5.0), (r".*position_embeddings.*", 0.0)]
WD_MULTS = [(r".*\.linear[12]\.weight", 0.5)]
BF16 = ["optax.adamw", "adamwdl", "optax.adamw, bf16", "adamwdl, bf16 + multi_precision"]
FUSED = ["optax.adamw", "optax.adamw, single_pass", "adamwdl, single_pass"]

# The demo's TransformerEncoder for the whole step (batch x length tokens, two classes).
E2E_SIZES = {
  "bert-base": dict(vocab=30522, length=128, dim=768, heads=12, n_layers=12, batch=32),
  "bert-mini": dict(vocab=30522, length=128, dim=256, heads=4, n_layers=4, batch=4),
  "tiny": dict(vocab=1000, length=16, dim=32, heads=2, n_layers=2, batch=4),
}


def bert_shapes(
  layers: int, hidden: int, vocab: int, positions: int, ffn: int = 4, classes: int = 2
) -> dict[str, tuple]:
  """A BERT-shaped tree with Paddle's parameter names (110M for base, 335M for large).

  ``ffn`` is the feed-forward width in hiddens; ``bert_shapes(n, 8, 30, 16, ffn=2, classes=3)``
  is the small tree of ``tests/reference.py`` (``bert_paddle_names(n)``).
  """
  h, f = hidden, ffn * hidden
  shapes = {
    "embeddings.word_embeddings.weight": (vocab, h),
    "embeddings.position_embeddings.weight": (positions, h),
    "embeddings.token_type_embeddings.weight": (2, h),
    "embeddings.layer_norm.weight": (h,),
    "embeddings.layer_norm.bias": (h,),
  }
  for i in range(layers):
    p = f"encoder.layers.{i}."
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      shapes[p + f"self_attn.{proj}.weight"] = (h, h)
      shapes[p + f"self_attn.{proj}.bias"] = (h,)
    shapes[p + "linear1.weight"] = (h, f)
    shapes[p + "linear1.bias"] = (f,)
    shapes[p + "linear2.weight"] = (f, h)
    shapes[p + "linear2.bias"] = (h,)
    for norm in ("norm1", "norm2"):
      shapes[p + f"{norm}.weight"] = (h,)
      shapes[p + f"{norm}.bias"] = (h,)
  shapes["pooler.dense.weight"] = (h, h)
  shapes["pooler.dense.bias"] = (h,)
  shapes["classifier.weight"] = (h, classes)
  shapes["classifier.bias"] = (classes,)
  return shapes


def n_params(tree: str) -> int:
  return sum(int(np.prod(s)) for s in bert_shapes(**TREES[tree]).values())


def decays(name: str) -> bool:
  """The weight-decay rule of every optimizer here: not on biases and norms (BERT's recipe).

  On the demo's ``TransformerEncoder`` it leaves out the biases and the norms' scales.
  """
  return not (name.endswith("bias") or "norm" in name)


def decay_mask(params):
  """The rule as an optax mask: the parameters' tree of booleans, by their dotted names."""
  return jax.tree.map(decays, param_names(params))


def layer_ratios(shapes: dict[str, tuple]) -> dict[str, float]:
  """Each parameter's ratio, as adamwdl's default ladder gives it (multi_transform, torch, paddle)."""
  abstract = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
  return {k: float(np.max(r)) for k, r in lr_ratios(abstract, DECAY).items()}


def make_tx(label: str, shapes: dict[str, tuple] | None = None, learning_rate=LR):
  """The optimizer of configuration ``label`` (multi_transform needs the tree's ``shapes``)."""
  base, _, variant = label.partition(", ")
  if base == "optax.adamw":
    tx = optax.adamw(learning_rate, weight_decay=WD, mask=decay_mask)
  elif base == "adamwdl":
    multipliers = dict(lr_mults=LR_MULTS, wd_mults=WD_MULTS) if variant == "multipliers" else {}
    tx = adamwdl(
      learning_rate,
      weight_decay=WD,
      apply_decay_param_fun=decays,
      layerwise_decay=DECAY,
      multi_precision=variant == "bf16 + multi_precision",
      **multipliers,
    )
  elif base == "multi_transform":
    labels = {k: repr(r) for k, r in layer_ratios(shapes).items()}
    inner = {
      lab: optax.adamw(learning_rate * float(lab), weight_decay=WD, mask=decay_mask)
      for lab in set(labels.values())
    }
    tx = optax.multi_transform(inner, labels)
  else:
    raise ValueError(label)
  return single_pass(tx) if variant == "single_pass" else tx


def optimizer_step(tx: optax.GradientTransformation):
  """The optimizer step every JAX configuration takes: (params, state, grads) -> (params, state)."""

  def step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def jax_problem(tree: str, dtype: str = "float32"):
  """The parameters and one gradient of a BERT-shaped tree, on the default device.

  Each leaf repeats a block of 2**20 normal draws: values do not change what a
  step costs, and this is quick at 1.3B parameters (nor is any program compiled
  per leaf shape).
  """
  rng = np.random.default_rng(0)
  shapes = bert_shapes(**TREES[tree])
  trees = []
  for scale in (0.02, 1e-3):
    block = (scale * rng.standard_normal(2**20, np.float32)).astype(jnp.dtype(dtype))
    trees.append({k: jax.device_put(np.resize(block, s)) for k, s in shapes.items()})
  return tuple(trees)


def tree_map_jit(fn, *trees):
  """``jax.tree.map(fn, *trees)`` as one program, rather than one eager op per leaf shape."""
  return jax.jit(lambda *t: jax.tree.map(fn, *t))(*trees)
