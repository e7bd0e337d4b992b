"""``scale_by_layerwise_lr``: multiply each update by its parameter's learning-rate ratio."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adamwdl import _checks, _ladder
from optax_adamwdl._ladder import Placement, placements
from optax_adamwdl._ladder_options import LadderOptions, ScanAxes, SetParamLrFun, Stacks
from optax_adamwdl._multipliers import Mults


def scale_leaf(update: jax.Array, ratio: Any) -> jax.Array:
  """``update * ratio``, in at least float32; exactly 0 where the ratio is 0, whatever the update.

  A concrete ratio is a constant of the compiled step (kept out of the
  optimizer state, so that a restored state never overrides the
  configuration); a traced one (``optax.inject_hyperparams``) is an operand.
  """
  if isinstance(ratio, float) and ratio in (0.0, 1.0):
    return update if ratio == 1.0 else jnp.zeros_like(update)
  wide = jnp.promote_types(update.dtype, jnp.float32)
  real = jnp.finfo(wide).dtype  # float32 for complex64: the ratio is real
  scaled = (update.astype(wide) * jnp.asarray(ratio, real)).astype(update.dtype)
  if isinstance(ratio, jax.Array) or (isinstance(ratio, np.ndarray) and not ratio.all()):
    return jnp.where(ratio != 0, scaled, jnp.zeros((), update.dtype))
  return scaled


def scale_by_layerwise_lr(
  layerwise_decay: jax.typing.ArrayLike = 1.0,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  *,
  stacks: Stacks = None,
  scan_axes: ScanAxes = None,
  stage_wise: bool = False,
  head_ratio: jax.typing.ArrayLike = 1.0,
  depth_normalized: bool = False,
  min_ratio: jax.typing.ArrayLike = 0.0,
  freeze_below: jax.typing.ArrayLike | None = None,
  lr_mults: Mults = None,
  strict_mults: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each update by its parameter's layer-wise learning-rate ratio.

  .. math::

    u_p \leftarrow r_p\, u_p, \qquad r_p = \alpha^{L - i_p}

  for a parameter in layer :math:`i_p` of a stack of :math:`L` layers,
  :math:`\alpha^{L + 1}` below the first layer (embeddings, stems, pre-norms)
  and ``head_ratio`` above the last (final norms, poolers, heads); or
  ``set_param_lr_fun(layerwise_decay, n_layers, name)``. The ratios are read
  from the pytree paths when the update is traced (constants of the compiled
  step); the state is empty, so a restored state never overrides the
  configuration. A ratio of 0 gives an update of exactly 0, whatever comes in.

  The ladder's contract, on every model family it recognises (see the docs'
  table): nothing below the first layer gets more than layer 0, a deeper
  layer never gets less than a shallower one (blocks nested in stages are
  counted stage-major), and everything above the last layer gets
  ``head_ratio``. Each stack of layers (encoder and decoder, text and vision
  towers) has its own ladder and its own depth.

  Args:
    layerwise_decay: the decay rate :math:`\alpha` > 0; 1 scales nothing.
    n_layers: :math:`L`; None infers each stack's depth from its names (its
      largest layer index + 1).
    set_param_lr_fun: ``(decay_rate, n_layers, name) -> ratio``, replacing
      the default ladder; ``name`` is the dotted name of
      :func:`optax_adamwdl.param_names`.
    stacks: choose the stacks: a list of name prefixes, or a mapping from a
      prefix to ``{"n_layers": ..., "decay": ...}`` (both optional).
      Automatic stacks cover the layers outside them.
    scan_axes: scanned layers, one leaf holding every layer: a mapping from a
      name component (e.g. ``"encoderblock"``) to the layer axis, or a
      function ``name -> axis or None``. Slice :math:`i` gets
      :math:`\alpha^{L - i}`.
    stage_wise: for blocks nested in stages (``stages.S.layers.B``), one
      ladder step per stage instead of one per block.
    head_ratio: the ratio above the last layer.
    depth_normalized: divide every exponent by :math:`L + 1`.
    min_ratio: the smallest ratio any parameter gets (timm's
      ``layer_decay_min_scale``).
    freeze_below: ratios below this become 0: those parameters do not move.
    lr_mults: ``[(pattern, multiplier), ...]``: the first pattern that
      ``fullmatch``\ es a parameter's dotted name multiplies its ratio.
    strict_mults: refuse a parameter that two ``lr_mults`` patterns match.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an empty state.

  Raises:
    ValueError: at ``init``, for a tree in which the ladder finds no layer
      while it would scale something, a ratio that float32 cannot hold, an
      ``n_layers`` smaller than the names show, or a stack, scan axis or
      ``lr_mults`` pattern that matches no parameter.

  Examples:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_layerwise_lr(0.5)
    >>> grads = {"embed": jnp.ones(2), "layers": [jnp.ones(2), jnp.ones(2)], "head": jnp.ones(2)}
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> {k: float(updates[k][0]) for k in ("embed", "head")}, float(updates["layers"][0][0])
    ({'embed': 0.125, 'head': 1.0}, 0.25)
  """
  options = dict(stacks=stacks, scan_axes=scan_axes, stage_wise=stage_wise, head_ratio=head_ratio)
  options.update(depth_normalized=depth_normalized, min_ratio=min_ratio, freeze_below=freeze_below)
  options.update(lr_mults=lr_mults, strict_mults=strict_mults)
  return scale_by_ladder(
    LadderOptions.build(layerwise_decay, n_layers, set_param_lr_fun, **options)
  )


def scale_by_ladder(
  ladder: LadderOptions, *, only_freeze: bool = False
) -> optax.GradientTransformationExtraArgs:
  """:func:`scale_by_layerwise_lr` of a built ladder; with ``only_freeze``, ratios become 0 or 1.

  ``only_freeze`` keeps the parameters whose ratio is 0 still after a later
  piece of the chain (the decay, with ``decay_follows_ratio=False``).
  """

  def ratio(placement: Placement) -> Any:
    if not only_freeze:
      return placement.ratio
    if isinstance(placement.ratio, jax.Array):
      return (placement.ratio != 0).astype(jnp.float32)
    if isinstance(placement.ratio, np.ndarray):
      return (placement.ratio != 0).astype(np.float64)
    return 1.0 if placement.ratio != 0 else 0.0

  def init_fn(params):
    placements(ladder, params)  # Raises here, at init, on a tree or rule that cannot work.
    if not ladder.concrete:  # Traced hyperparameters: check their values when init runs.
      concrete = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), params
      )
      check = lambda numbers: placements(ladder.with_numbers(numbers), concrete)
      _checks.when_run(check, ladder.numbers)
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    placed = placements(ladder, updates)
    if (
      not ladder.concrete
      and ladder.custom is None
      and placed
      and not _ladder.layered(ladder, updates)
    ):
      # No layer, and an injected decay that init saw at 1 may have left 1 since: refuse then.
      names = [p.name for p in placed]
      _checks.when_run(lambda decays: _ladder.refuse_without_layers(decays, names), ladder.decays)
    ratios = [ratio(p) for p in placed]
    leaves, treedef = jax.tree.flatten(updates)
    return treedef.unflatten(list(map(scale_leaf, leaves, ratios))), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
