r"""Published fine-tuning recipes, as keyword arguments of :func:`optax_adamwdl.adamwdl`.

Each preset is one call that returns a dict, so one configuration serves the
optimizer and the table that shows what it will do::

  config = recipes.timm(layer_decay=0.75)
  tx = adamwdl(learning_rate=1e-3, **config)
  print(lr_table(params, **config))

A preset restates, per parameter, the learning-rate scale and the weight decay
that the original code gives (its parameter groups); the source file it
restates is named in each docstring, and ``tests/test_recipes.py`` checks each
preset against it on the original model's parameter names. The names are
matched as the original matches them, so a tree whose dotted names
(:func:`optax_adamwdl.param_names`) are the original model's (a ported
``state_dict``) gets exactly the original's groups. What a preset leaves out
(the learning rate and its schedule, betas, epsilon, clipping) is given to
``adamwdl`` beside it. To add rules of your own, extend the dict, e.g.
``config["lr_mults"] = [*mine, *config.get("lr_mults", ())]``.

A preset may hold functions (a ``mask``, a ``set_param_lr_fun``), which
``optax.inject_hyperparams`` would take for schedules: name them in
``static_args=[k for k, v in config.items() if callable(v)]``.
"""

import fnmatch
import re
from collections.abc import Callable, Collection
from typing import Any

import jax
import numpy as np

from optax_adamwdl._names import param_names

__all__ = ["beit", "beit_ratio", "electra", "mae", "mae_ratio", "paddle", "timm"]


def _ndim(leaf: Any) -> int:
  return len(getattr(leaf, "shape", np.shape(leaf)))


def _mask(decays: Callable[[str, int], bool]) -> Callable[[Any], Any]:
  """An optax mask function from ``decays(name, ndim) -> bool``."""

  def mask(params: Any) -> Any:
    count = isinstance(params, int | np.integer | np.ndarray | jax.Array) and np.ndim(params) == 0
    if count and np.issubdtype(np.asarray(params).dtype, np.integer):
      raise TypeError(  # optax.inject_hyperparams calls a function it takes for a schedule so
        "A preset's mask was called with a step count: under optax.inject_hyperparams, name the "
        "preset's functions in static_args=[k for k, v in config.items() if callable(v)]."
      )
    return jax.tree.map(lambda p, name: bool(decays(name, _ndim(p))), params, param_names(params))

  return mask


# --- timm ------------------------------------------------------------------------------------

TIMM_VIT_NO_WEIGHT_DECAY = ("cls_token", "dist_token", "pos_embed", "reg_token")


def timm(
  layer_decay: float,
  weight_decay: float = 0.05,
  no_weight_decay_list: Collection[str] = TIMM_VIT_NO_WEIGHT_DECAY,
  weight_decay_exclude_1d: bool = True,
  min_scale: float = 0.0,
  no_opt_scale: float | None = None,
  final_norm: str | None = "norm",
) -> dict[str, Any]:
  r"""timm's ``param_groups_layer_decay`` (``create_optimizer_v2(..., layer_decay=...)``).

  Restates ``timm/optim/_param_groups.py`` (timm 1.0.31) with the models'
  ``group_matcher`` (``timm/models/_manipulate.py``, ``group_with_matcher``):

  - **learning rate**: the stem (``patch_embed``, ``cls_token``, ``reg_token``,
    ``pos_embed``, ``stem``, ...) gets :math:`\alpha^{L+1}`, block :math:`i`
    of :math:`L` (nested stage blocks counted in order, a stage's
    ``downsample`` with its first block) :math:`\alpha^{L-i}`, the head and
    whatever no group matches (``fc_norm``, ``head``) 1, each floored at
    ``min_scale``; a parameter whose scale is then below ``no_opt_scale`` is
    frozen (timm sets ``requires_grad=False``; here ``freeze_below``). This is
    the default ladder, except that timm puts the model's final norm
    (``norm.*``, after the last block) in the last block's group:
    ``final_norm`` names it, and its scale is set by an ``lr_mults`` rule.
  - **weight decay**: ``weight_decay`` except for parameters of at most one
    dimension (``weight_decay_exclude_1d``) and those whose name matches a
    pattern of ``no_weight_decay_list`` (``fnmatch``: wildcards allowed;
    timm passes ``model.no_weight_decay()``, by default that of its
    ``VisionTransformer``).

  Checked against timm itself on ViT (class-token and average pooling, with
  and without register tokens, ``min_scale``, ``no_opt_scale``), DeiT, BEiT,
  ConvNeXt and Swin (``tests/test_recipes.py``).

  Args:
    layer_decay: timm's ``layer_decay`` (:math:`\alpha`).
    weight_decay: timm's ``weight_decay`` (its default here, 0.05).
    no_weight_decay_list: names (``fnmatch`` patterns) that do not decay;
      timm uses the model's ``no_weight_decay()``.
    weight_decay_exclude_1d: timm's ``filter_bias_and_bn``.
    min_scale: ``layer_decay_min_scale``.
    no_opt_scale: ``layer_decay_no_opt_scale``.
    final_norm: the name of the final norm module that timm groups with the
      last block (ViT, DeiT and Swin: ``"norm"``); None for models without
      one (ConvNeXt's is ``head.norm``, in the head; a ViT with
      ``global_pool="avg"`` has ``fc_norm`` instead). A name that matches no
      parameter is an error.

  Returns:
    keyword arguments of :func:`optax_adamwdl.adamwdl`: ``layerwise_decay``,
    ``weight_decay``, ``mask``, ``min_ratio``, ``freeze_below`` (when
    ``no_opt_scale``) and ``lr_mults`` (when ``final_norm``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_adamwdl import lr_table
    >>> params = {"cls_token": jnp.zeros((1, 1, 4)), "patch_embed": {"proj": {"weight": jnp.zeros((4, 3))}},
    ...           "blocks": [{"mlp": {"weight": jnp.zeros((4, 4)), "bias": jnp.zeros(4)}}] * 2,
    ...           "norm": {"weight": jnp.ones(4)}, "head": {"weight": jnp.zeros((2, 4))}}
    >>> print(lr_table(params, **timm(layer_decay=0.5)))
    layer   rule       lr ratio  lr_mults     weight decay  params  tensors
    ------  ---------  --------  -----------  ------------  ------  -------
    bottom  embedding     0.125                       0.05      12        1
    bottom  embedding     0.125                        off       4        1
    0       layer          0.25                       0.05      16        1
    0       layer          0.25                        off       4        1
    1       layer           0.5                       0.05      16        1
    1       layer           0.5                        off       4        1
    top     head            0.5  norm\.[^.]+           off       4        1
    top     head              1                       0.05       8        1
    ------  ---------  --------  -----------  ------------  ------  -------
    total                                                       68        8
  """
  patterns = tuple(no_weight_decay_list)

  def decays(name: str, ndim: int) -> bool:
    excluded = weight_decay_exclude_1d and ndim <= 1
    return not (excluded or any(fnmatch.fnmatchcase(name, p) for p in patterns))

  config: dict[str, Any] = dict(
    layerwise_decay=layer_decay, weight_decay=weight_decay, mask=_mask(decays), min_ratio=min_scale
  )
  if no_opt_scale:  # timm: `if no_opt_scale and scale < no_opt_scale` (0 and None freeze nothing)
    config["freeze_below"] = no_opt_scale
  if final_norm is not None:
    scale = max(min_scale, layer_decay)  # the last block's group: layer_scales[layer_max - 1]
    if no_opt_scale and scale < no_opt_scale:
      scale = 0.0
    config["lr_mults"] = [(re.escape(final_norm) + r"\.[^.]+", scale)]
  return config


# --- BEiT ------------------------------------------------------------------------------------


def _beit_layer_id(name: str, num_max_layer: int) -> int:
  """BEiT's ``get_num_layer_for_vit`` (unilm ``beit/optim_factory.py``), verbatim in effect."""
  if name in ("cls_token", "mask_token", "pos_embed"):
    return 0
  if name.startswith("patch_embed"):
    return 0
  if name.startswith("rel_pos_bias"):
    return num_max_layer - 1
  if name.startswith("blocks"):
    return int(name.split(".")[1]) + 1
  return num_max_layer - 1


def beit_ratio(decay_rate: Any, n_layers: int, name: str) -> Any:
  r"""BEiT's scale of one parameter: :math:`\alpha^{L+1-\mathrm{id}}` (a ``set_param_lr_fun``).

  ``LayerDecayValueAssigner(values)`` with ``values[i] = layer_decay ** (L + 1 - i)``
  for ``i`` in ``0..L+1`` (``run_class_finetuning.py``), indexed by
  ``get_num_layer_for_vit(name, L + 2)``.

  Examples:
    >>> beit_ratio(0.5, 12, "rel_pos_bias.relative_position_bias_table")
    1.0
    >>> beit_ratio(0.5, 2, "patch_embed.proj.weight"), beit_ratio(0.5, 2, "blocks.1.attn.qkv.weight")
    (0.125, 0.5)
  """
  return decay_rate ** float(n_layers + 1 - _beit_layer_id(name, n_layers + 2))


def beit(
  layer_decay: float,
  weight_decay: float = 0.05,
  skip_list: Collection[str] = ("pos_embed", "cls_token"),
) -> dict[str, Any]:
  r"""BEiT's fine-tuning groups: ``LayerDecayValueAssigner`` and ``get_parameter_groups``.

  Restates ``beit/optim_factory.py`` of microsoft/unilm (``get_num_layer_for_vit``,
  ``get_parameter_groups``) as ``run_class_finetuning.py`` calls it:

  - **learning rate**: :math:`\alpha^{L+1-\mathrm{id}}` with id 0 for
    ``cls_token``, ``mask_token``, ``pos_embed`` and ``patch_embed.*``,
    :math:`i+1` for ``blocks.i.*``, and :math:`L+1` (the top: scale 1) for
    ``rel_pos_bias.*`` (the shared relative position bias) and everything
    else (``norm``, ``fc_norm``, ``head``). :math:`L` is the number of blocks,
    read from the names. The default ladder differs on ``rel_pos_bias``,
    which it puts at the bottom, with the embeddings.
  - **weight decay**: ``weight_decay`` except for 1-d parameters, names ending
    in ``.bias`` and the names of ``skip_list`` (BEiT's ``no_weight_decay()``:
    ``pos_embed``, ``cls_token``).

  Args:
    layer_decay: ``--layer_decay`` (:math:`\alpha`; BEiT's default 0.9).
    weight_decay: ``--weight_decay`` (BEiT's default 0.05).
    skip_list: exact names that do not decay.

  Returns:
    keyword arguments of :func:`optax_adamwdl.adamwdl`: ``layerwise_decay``,
    ``weight_decay``, ``mask`` and ``set_param_lr_fun`` (:func:`beit_ratio`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_adamwdl import lr_ratios
    >>> params = {"cls_token": jnp.zeros((1, 1, 4)), "blocks": [{"gamma_1": jnp.ones(4)}] * 2,
    ...           "rel_pos_bias": {"relative_position_bias_table": jnp.zeros((9, 2))}}
    >>> lr_ratios(params, **beit(layer_decay=0.5))
    {'blocks': [{'gamma_1': 0.25}, {'gamma_1': 0.5}], 'cls_token': 0.125, 'rel_pos_bias': {'relative_position_bias_table': 1.0}}
  """
  skip = frozenset(skip_list)

  def decays(name: str, ndim: int) -> bool:
    return not (ndim == 1 or name.endswith(".bias") or name in skip)

  return dict(
    layerwise_decay=layer_decay,
    weight_decay=weight_decay,
    mask=_mask(decays),
    set_param_lr_fun=beit_ratio,
  )


# --- MAE -------------------------------------------------------------------------------------


def _mae_layer_id(name: str, num_layers: int) -> int:
  """MAE's ``get_layer_id_for_vit`` (``util/lr_decay.py``), verbatim in effect."""
  if name in ("cls_token", "pos_embed"):
    return 0
  if name.startswith("patch_embed"):
    return 0
  if name.startswith("blocks"):
    return int(name.split(".")[1]) + 1
  return num_layers


def mae_ratio(decay_rate: Any, n_layers: int, name: str) -> Any:
  r"""MAE's scale of one parameter (a ``set_param_lr_fun``).

  ``layer_scales[get_layer_id_for_vit(name, L + 1)]`` with
  ``layer_scales[i] = layer_decay ** (L + 1 - i)``.

  Examples:
    >>> mae_ratio(0.5, 2, "pos_embed"), mae_ratio(0.5, 2, "mask_token"), mae_ratio(0.5, 2, "blocks.0.norm1.weight")
    (0.125, 1.0, 0.25)
  """
  return decay_rate ** float(n_layers + 1 - _mae_layer_id(name, n_layers + 1))


def mae(
  layer_decay: float,
  weight_decay: float = 0.05,
  no_weight_decay_list: Collection[str] = ("pos_embed", "cls_token"),
) -> dict[str, Any]:
  r"""MAE's fine-tuning groups: ``param_groups_lrd`` (facebookresearch/mae ``util/lr_decay.py``).

  - **learning rate**: ``num_layers = len(model.blocks) + 1`` and
    :math:`\alpha^{L+1-\mathrm{id}}` with id 0 for ``cls_token``,
    ``pos_embed`` and ``patch_embed.*``, :math:`i+1` for ``blocks.i.*`` and
    :math:`L+1` (scale 1) for everything else: ``fc_norm``, ``norm``, ``head``,
    and also any other token (``mask_token``, ``dist_token``), which the
    default ladder would put at the bottom.
  - **weight decay**: ``weight_decay`` except for parameters of exactly one
    dimension and the exact names of ``no_weight_decay_list``
    (``main_finetune.py`` passes ``model.no_weight_decay()``: ``pos_embed``,
    ``cls_token`` for its timm 0.3.2 ``VisionTransformer``).

  data2vec: its image fine-tuning follows BEiT's recipe; we restated no
  data2vec source file, so use :func:`beit` or :func:`mae` by the code your
  checkpoint was fine-tuned with.

  Args:
    layer_decay: ``--layer_decay`` (:math:`\alpha`; MAE's default 0.75).
    weight_decay: ``--weight_decay`` (MAE's default 0.05).
    no_weight_decay_list: exact names that do not decay.

  Returns:
    keyword arguments of :func:`optax_adamwdl.adamwdl`: ``layerwise_decay``,
    ``weight_decay``, ``mask`` and ``set_param_lr_fun`` (:func:`mae_ratio`).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_adamwdl import lr_ratios
    >>> params = {"pos_embed": jnp.zeros((1, 5, 4)), "blocks": [{"gamma": jnp.ones(4)}] * 3,
    ...           "fc_norm": {"weight": jnp.ones(4)}}
    >>> lr_ratios(params, **mae(layer_decay=0.5))
    {'blocks': [{'gamma': 0.125}, {'gamma': 0.25}, {'gamma': 0.5}], 'fc_norm': {'weight': 1.0}, 'pos_embed': 0.0625}
  """
  skip = frozenset(no_weight_decay_list)

  def decays(name: str, ndim: int) -> bool:
    return not (ndim == 1 or name in skip)

  return dict(
    layerwise_decay=layer_decay,
    weight_decay=weight_decay,
    mask=_mask(decays),
    set_param_lr_fun=mae_ratio,
  )


# --- ELECTRA ---------------------------------------------------------------------------------

ELECTRA_NO_DECAY = ("LayerNorm", "layer_norm", "bias")


def electra(layer_decay: float, n_layers: int, weight_decay: float = 0.01) -> dict[str, Any]:
  r"""ELECTRA's fine-tuning: ``_get_layer_lrs`` (google-research/electra ``model/optimization.py``).

  - **learning rate**: ``lr * layer_decay ** (n_layers + 2 - depth)`` with
    depth 0 for ``/embeddings/`` and ``/embeddings_project/``, :math:`i+1`
    for ``encoder/layer_i/`` and ``n_layers + 2`` for ``task_specific/``.
    Depth ``n_layers + 1`` is a pooler that ELECTRA does not have, kept "for
    reproducibility": the top layer gets :math:`\alpha^2`, the embeddings
    :math:`\alpha^{L+2}`. That is the default ladder with one layer more
    than the model has, so ``n_layers`` is passed on as ``n_layers + 1``;
    names are read as the default ladder reads them (ELECTRA's
    ``electra.encoder.layer_3...`` and Hugging Face's
    ``electra.encoder.layer.3...`` alike; ``task_specific.*`` is unrecognised:
    the top, scale 1).
  - **weight decay**: ``weight_decay`` except for names containing
    ``LayerNorm``, ``layer_norm`` or ``bias`` (``exclude_from_weight_decay``,
    searched anywhere in the name).

  ELECTRA's optimizer itself departs from AdamW in ways a preset cannot
  carry: no bias correction, ``epsilon=1e-6``, gradients clipped to global
  norm 1 (give ``eps=1e-6, grad_clip=optax.clip_by_global_norm(1.0)``).

  Args:
    layer_decay: ``layerwise_lr_decay`` (:math:`\alpha`; ELECTRA's default 0.8).
    n_layers: ``n_transformer_layers``: the model's number of layers.
    weight_decay: ``weight_decay_rate`` (ELECTRA's default 0.01).

  Returns:
    keyword arguments of :func:`optax_adamwdl.adamwdl`: ``layerwise_decay``,
    ``n_layers``, ``weight_decay`` and ``mask``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_adamwdl import lr_ratios
    >>> params = {"electra": {"embeddings": {"word_embeddings": jnp.zeros((9, 4))},
    ...                       "encoder": {f"layer_{i}": {"kernel": jnp.zeros((4, 4))} for i in range(2)}},
    ...           "task_specific": {"kernel": jnp.zeros((4, 2))}}
    >>> lr_ratios(params, **electra(layer_decay=0.5, n_layers=2))
    {'electra': {'embeddings': {'word_embeddings': 0.0625}, 'encoder': {'layer_0': {'kernel': 0.125}, 'layer_1': {'kernel': 0.25}}}, 'task_specific': {'kernel': 1.0}}
  """

  def decays(name: str, ndim: int) -> bool:
    return not any(re.search(r, name) for r in ELECTRA_NO_DECAY)

  return dict(
    layerwise_decay=layer_decay,
    n_layers=int(n_layers) + 1,
    weight_decay=weight_decay,
    mask=_mask(decays),
  )


# --- Paddle ----------------------------------------------------------------------------------


def paddle(
  layer_decay: float,
  n_layers: int | None = None,
  weight_decay: float = 0.01,
  apply_decay_param_fun: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
  r"""Paddle's ``AdamWDL`` with its defaults (PaddleNLP ``ops/optimizer/adamwdl.py``).

  - **learning rate**: its default ``set_param_lr_fun``, ``layerwise_lr_decay``:
    :math:`\alpha^{L-i}` for ``encoder.layers.i``, :math:`\alpha^{L+1}` for
    names containing ``embedding``, 1 otherwise. That is the default ladder
    (:func:`optax_adamwdl.layerwise_lr_decay`), which also reads other layer
    names (``encoder.layer.i``, ``h.i``, ``blocks.i``) that PaddleNLP's rule
    leaves at 1. ``n_layers`` is inferred from the names unless given
    (PaddleNLP's default is 12 whatever the model).
  - **weight decay**: ``weight_decay`` (0.01) on every parameter unless
    ``apply_decay_param_fun(name)`` says otherwise, scaled by the layer's
    learning rate.

  Args:
    layer_decay: ``layerwise_decay`` (:math:`\alpha`).
    n_layers: ``n_layers``; None infers it.
    weight_decay: ``weight_decay``.
    apply_decay_param_fun: ``name -> bool``; None decays every parameter.

  Returns:
    keyword arguments of :func:`optax_adamwdl.adamwdl`: ``layerwise_decay``,
    ``n_layers``, ``weight_decay`` and ``apply_decay_param_fun`` (when given).

  Examples:
    >>> paddle(0.8)
    {'layerwise_decay': 0.8, 'n_layers': None, 'weight_decay': 0.01}
  """
  config: dict[str, Any] = dict(layerwise_decay=layer_decay, n_layers=n_layers,
                                weight_decay=weight_decay)  # fmt: skip
  if apply_decay_param_fun is not None:
    config["apply_decay_param_fun"] = apply_decay_param_fun
  return config
