"""``adamwdl``: AdamW with layer-wise learning-rate decay, as an optax chain."""

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from optax_adamwdl import _checks
from optax_adamwdl.fusion import single_pass
from optax_adamwdl.ladder import ScanAxes, Stacks
from optax_adamwdl.layerwise import (
  SetParamLrFun,
  leaf_ratios,
  names_and_shapes,
  scale_by_layerwise_lr,
)
from optax_adamwdl.lazy import update_nonzero_rows
from optax_adamwdl.names import param_names
from optax_adamwdl.precision import with_master_weights

MaskOrFn = Any | Callable[[optax.Params], Any] | None


def decay_mask_from_names(apply_decay_param_fun: Callable[[str], bool]):
  """Turns a Paddle-style ``name -> bool`` predicate into an optax mask function.

  Examples:
    >>> import jax.numpy as jnp
    >>> mask = decay_mask_from_names(lambda name: not name.endswith("bias"))
    >>> mask({"dense": {"kernel": jnp.zeros(2), "bias": jnp.zeros(2)}})
    {'dense': {'bias': False, 'kernel': True}}
  """

  def decide(name: str) -> bool:
    decision = apply_decay_param_fun(name)
    if not isinstance(decision, (bool, np.bool_)):
      raise TypeError(
        f"apply_decay_param_fun must return True or False, got {decision!r} for parameter {name!r}."
      )
    return bool(decision)

  return lambda params: jax.tree.map(decide, param_names(params))


def _trainable_mask(layerwise_decay, n_layers, set_param_lr_fun, ladder_options):
  """A mask function: False for the leaves whose every ratio is 0 (frozen)."""

  def trainable(params):
    ratios = leaf_ratios(
      *names_and_shapes(params), layerwise_decay, n_layers, set_param_lr_fun, **ladder_options
    )
    if any(isinstance(r, jax.core.Tracer) for r in ratios):
      raise TypeError(
        "freeze_below needs a concrete layerwise_decay: under optax.inject_hyperparams put "
        "layerwise_decay (and n_layers) in static_args."
      )
    return jax.tree.structure(params).unflatten([bool(np.any(np.asarray(r) != 0)) for r in ratios])

  return trainable


def _check_arguments(learning_rate, b1, b2, eps, weight_decay, layerwise_decay):
  if not callable(learning_rate):
    _checks.check_range("learning_rate", learning_rate, low=0.0)
  if not callable(weight_decay):
    _checks.check_range("weight_decay", weight_decay)
  _checks.check_range("b1", b1, low=0.0, high=1.0, high_inclusive=False)
  _checks.check_range("b2", b2, low=0.0, high=1.0, high_inclusive=False)
  _checks.check_range("eps", eps, low=0.0)
  _checks.check_range("layerwise_decay", layerwise_decay, low=0.0, low_inclusive=False)


def adamwdl(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.01,
  *,
  layerwise_decay: jax.typing.ArrayLike = 1.0,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  mask: MaskOrFn = None,
  apply_decay_param_fun: Callable[[str], bool] | None = None,
  grad_clip: optax.GradientTransformation | None = None,
  lazy_mode: bool = False,
  multi_precision: bool = False,
  mu_dtype: Any | None = None,
  stacks: Stacks = None,
  scan_axes: ScanAxes = None,
  head_ratio: float = 1.0,
  depth_normalized: bool = False,
  min_ratio: float = 0.0,
  freeze_below: float | None = None,
  decay_follows_ratio: bool = True,
) -> optax.GradientTransformation:
  r"""AdamW with layer-wise learning-rate decay (Paddle's ``AdamWDL``).

  Each parameter :math:`p` takes an AdamW step whose learning rate is scaled by
  its layer's ratio :math:`r_p`:

  .. math::

    \begin{align*}
      m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
      v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
      \hat m_t &\leftarrow m_t / (1 - \beta_1^t), \quad
      \hat v_t \leftarrow v_t / (1 - \beta_2^t) \\
      p_t &\leftarrow p_{t-1} - \eta_t\, r_p \left(
        \hat m_t / (\sqrt{\hat v_t} + \varepsilon) + \lambda\, \mathbb{1}_p\, p_{t-1}
      \right)
    \end{align*}

  where :math:`\eta_t` is ``learning_rate``, :math:`\beta_1, \beta_2` are
  ``b1, b2``, :math:`\varepsilon` is ``eps``, :math:`\lambda` is
  ``weight_decay``, :math:`\mathbb{1}_p` the decay mask and, by default,
  :math:`r_p = \alpha^{L-i}` for a parameter of layer :math:`i`,
  :math:`\alpha^{L+1}` for embeddings and 1 for the rest, with
  :math:`\alpha` = ``layerwise_decay`` and :math:`L` = ``n_layers``.

  Args:
    learning_rate: a float or an optax schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to :math:`\sqrt{\hat v_t}`, >= 0.
    weight_decay: the decoupled weight decay :math:`\lambda`, a float or a
      schedule; scaled by the layer's learning rate, as in Paddle.
    layerwise_decay: :math:`\alpha` > 0; 1.0 is plain AdamW.
    n_layers: :math:`L`; None infers it from the parameter names (largest
      layer index + 1).
    set_param_lr_fun: ``(decay_rate, n_layers, name) -> ratio``; None uses
      :func:`optax_adamwdl.layerwise_lr_decay`. ``name`` is the dotted name of
      :func:`optax_adamwdl.param_names`.
    mask: which parameters get weight decay, as in ``optax.adamw``: a pytree of
      bools or a function of the params returning one. None decays all.
    apply_decay_param_fun: Paddle's form of ``mask``: ``name -> bool``. Give
      ``mask`` or this, not both.
    grad_clip: an optax transformation applied to the raw gradients first, such
      as ``optax.clip_by_global_norm(1.0)``.
    lazy_mode: rows (slices along axis 0) whose gradient is entirely zero keep
      their values and moments this step; see
      :func:`optax_adamwdl.update_nonzero_rows`.
    multi_precision: keep a float32 master copy (and float32 moments) of every
      bfloat16/float16 parameter; see :func:`optax_adamwdl.with_master_weights`.
    mu_dtype: dtype of the first moment, as in ``optax.adamw``.
    stacks: several stacks or towers, each with its own ladder; see
      :func:`optax_adamwdl.scale_by_layerwise_lr`.
    scan_axes: where scanned layers are stacked; see
      :func:`optax_adamwdl.scale_by_layerwise_lr`.
    head_ratio: the ratio of the parameters above the top layer (pooler,
      final norm, classifier head).
    depth_normalized: exponents divided by :math:`L + 1` (embeddings get
      :math:`\alpha` whatever the depth).
    min_ratio: the smallest ratio any parameter gets.
    freeze_below: parameters whose ratio is below this do not move, and Adam
      keeps no moments for them (a scanned leaf keeps its moments, its frozen
      slices only get a zero update).
    decay_follows_ratio: True (Paddle, timm): weight decay is scaled by the
      layer's ratio; False (big_vision): by the learning rate only,
      :math:`p \leftarrow p - \eta_t (r_p \hat m_t / (\sqrt{\hat v_t} +
      \varepsilon) + \lambda p)`.

  Returns:
    An ``optax.GradientTransformation``: the chain of ``grad_clip``,
    ``optax.scale_by_adam`` (arranged for one pass over memory when XLA:CPU's
    multi-output fusion is on; same values), ``optax.add_decayed_weights`` and
    :func:`optax_adamwdl.scale_by_layerwise_lr` given the ``learning_rate`` (one
    multiply per leaf by the layer's learning rate; with
    ``decay_follows_ratio=False``, the ratio comes before the decay and
    ``optax.scale_by_learning_rate`` after it), wrapped in
    :func:`optax_adamwdl.update_nonzero_rows` (``lazy_mode``) and then
    :func:`optax_adamwdl.with_master_weights` (``multi_precision``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> params = {"embeddings": jnp.ones(2), "encoder": {"layers": [jnp.ones(2)] * 2},
    ...           "classifier": jnp.ones(2)}
    >>> tx = adamwdl(learning_rate=0.1, weight_decay=0.0, layerwise_decay=0.5)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> jax.tree.map(lambda u: round(float(u[0]), 4), updates)
    {'classifier': -0.1, 'embeddings': -0.0125, 'encoder': {'layers': [-0.025, -0.05]}}

  References:
    Yang et al., `XLNet <https://arxiv.org/abs/1906.08237>`_, 2019;
    Clark et al., `ELECTRA <https://arxiv.org/abs/2003.10555>`_, 2020;
    Bao et al., `BEiT <https://arxiv.org/abs/2106.08254>`_, 2021;
    Loshchilov and Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.
  """
  _check_arguments(learning_rate, b1, b2, eps, weight_decay, layerwise_decay)
  if mask is not None and apply_decay_param_fun is not None:
    raise ValueError("Give mask (optax style) or apply_decay_param_fun (Paddle style), not both.")
  if apply_decay_param_fun is not None:
    if not callable(apply_decay_param_fun):
      raise TypeError(
        f"apply_decay_param_fun must be a callable name -> bool, got {apply_decay_param_fun!r}."
      )
    mask = decay_mask_from_names(apply_decay_param_fun)
  if grad_clip is not None and not isinstance(grad_clip, optax.GradientTransformation):
    raise TypeError(
      "grad_clip must be an optax.GradientTransformation, such as "
      f"optax.clip_by_global_norm(1.0), got {grad_clip!r}."
    )
  ladder_options = dict(
    stacks=stacks,
    scan_axes=scan_axes,
    head_ratio=head_ratio,
    depth_normalized=depth_normalized,
    min_ratio=min_ratio,
    freeze_below=freeze_below,
  )
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)
  decay = optax.add_decayed_weights(weight_decay, mask)
  scale = functools.partial(
    scale_by_layerwise_lr, layerwise_decay, n_layers, set_param_lr_fun, **ladder_options
  )
  if freeze_below is not None:
    trainable = _trainable_mask(layerwise_decay, n_layers, set_param_lr_fun, ladder_options)
    adam, decay = optax.masked(adam, trainable), optax.masked(decay, trainable)
  if decay_follows_ratio:  # the ratio and the learning rate scale the same sum: one multiply
    tail = (decay, scale(learning_rate=learning_rate))
  else:
    tail = (scale(), decay, optax.scale_by_learning_rate(learning_rate))
  tx = optax.chain(
    grad_clip if grad_clip is not None else optax.identity(), single_pass(adam), *tail
  )
  if lazy_mode:
    tx = update_nonzero_rows(tx)
  if multi_precision:
    tx = with_master_weights(tx)
  return tx
