"""``adamwdl``: AdamW with layer-wise learning-rate decay, as an optax chain."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adamwdl import _checks, _decay, _names
from optax_adamwdl._ladder import placements
from optax_adamwdl._ladder_options import LadderOptions, ScanAxes, SetParamLrFun, Stacks
from optax_adamwdl._lazy import update_nonzero_rows
from optax_adamwdl._master import with_master_weights
from optax_adamwdl._multipliers import Multipliers, Mults
from optax_adamwdl._scale import scale_by_ladder

_STATIC_FOR_FREEZING = ("layerwise_decay", "n_layers", "head_ratio", "min_ratio", "freeze_below")


def _trainable(ladder: LadderOptions, numbers: dict[str, Any]) -> Callable[[Any], Any] | None:
  """A mask function: False for the frozen leaves, which keep no Adam moments; or None.

  Frozen: with ``freeze_below``, the leaves whose every ratio is 0; and the leaves that an
  ``lr_mults`` multiplier of 0 stops. Which leaves keep moments is the state's structure, so
  it is decided once, from Python numbers: with ``freeze_below``, an array (as
  ``optax.inject_hyperparams`` gives every numeric argument) is refused here, at construction,
  rather than at the first traced update.
  """
  zero_mults = any(m == 0 for _, m in ladder.lr_mults.rules)
  if numbers["freeze_below"] is None and not zero_mults:
    return None
  arrays = [
    k for k, v in numbers.items() if v is not None and not isinstance(v, int | float | np.generic)
  ]
  if arrays and numbers["freeze_below"] is not None:
    raise TypeError(
      "freeze_below decides which parameters keep optimizer state, so the ladder's numbers must "
      f"be Python numbers, but {arrays} came as arrays: under optax.inject_hyperparams pass "
      f"static_args={_STATIC_FOR_FREEZING} (those you give)."
    )

  def frozen(p) -> bool:
    if p.lr_mult == 0:
      return True
    return numbers["freeze_below"] is not None and not np.any(np.asarray(p.ratio) != 0)

  def trainable(params):
    keep = [not frozen(p) for p in placements(ladder, params)]
    return jax.tree.structure(params).unflatten(keep)

  return trainable


def _guarded(
  inner: optax.GradientTransformation, float16: bool
) -> optax.GradientTransformationExtraArgs:
  """``inner``, refusing at ``init`` what cannot train, with stable dtypes at ``update``.

  ``init`` refuses float16 parameters unless ``float16`` (master weights hold them): in float16,
  Adam's second moment ``(1 - b2) * g**2`` underflows to 0 for every ``|g|`` below about 8e-3
  (b2 = 0.999), and the step becomes ``m / eps``. ``update`` returns the updates in the
  gradients' dtypes and the state in its own: a hyperparameter given as a float32 array
  (``optax.inject_hyperparams`` gives every one so) would promote bfloat16 moments and updates
  to float32, and change the state's structure (``optax.apply_if_finite`` and
  ``optax.MultiSteps`` compare it across steps).
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    names = [n for n, x in zip(_names.leaf_names(params), jax.tree.leaves(params))
             if getattr(x, "dtype", None) == jnp.float16]  # fmt: skip
    if names and not float16:
      raise ValueError(
        f"Parameter {names[0]!r} is float16: Adam's second moment (1 - b2) * g**2 underflows "
        "to 0 in float16 for |g| below about 8e-3, and the step becomes m / eps (optax.adamw "
        "does the same). Pass multi_precision=True: float32 master weights and moments."
      )
    return inner.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, new_state = inner.update(updates, state, params, **extra_args)
    cast = lambda new, old: new.astype(old.dtype) if hasattr(new, "astype") else new
    return jax.tree.map(cast, new_updates, updates), jax.tree.map(cast, new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_arguments(learning_rate, b1, b2, eps, eps_root, weight_decay, grad_clip) -> None:
  for name, value in (("learning_rate", learning_rate), ("weight_decay", weight_decay)):
    if not callable(value):
      _checks.check_range(name, value, low=0.0)
  _checks.check_range("b1", b1, low=0.0, high=1.0, high_inclusive=False)
  _checks.check_range("b2", b2, low=0.0, high=1.0, high_inclusive=False)
  _checks.check_range("eps", eps, low=0.0)
  _checks.check_range("eps_root", eps_root, low=0.0)
  if grad_clip is not None and not isinstance(grad_clip, optax.GradientTransformation):
    raise TypeError(
      "grad_clip must be an optax.GradientTransformation, such as "
      f"optax.clip_by_global_norm(1.0), got {grad_clip!r}."
    )


def adamwdl(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: Any | None = None,
  weight_decay: optax.ScalarOrSchedule = 0.01,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  *,
  nesterov: bool = False,
  layerwise_decay: jax.typing.ArrayLike = 1.0,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  stacks: Stacks = None,
  scan_axes: ScanAxes = None,
  stage_wise: bool = False,
  head_ratio: jax.typing.ArrayLike = 1.0,
  depth_normalized: bool = False,
  min_ratio: jax.typing.ArrayLike = 0.0,
  freeze_below: jax.typing.ArrayLike | None = None,
  decay_follows_ratio: bool = True,
  apply_decay_param_fun: Callable[[str], bool] | None = None,
  lr_mults: Mults = None,
  wd_mults: Mults = None,
  strict_mults: bool = False,
  grad_clip: optax.GradientTransformation | None = None,
  lazy_mode: bool = False,
  multi_precision: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW with layer-wise learning-rate decay (Paddle's ``AdamWDL``).

  Each parameter :math:`p` takes an AdamW step whose learning rate is scaled
  by its layer's ratio :math:`r_p`:

  .. math::

    \begin{align*}
      m_t &\leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
      v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
      \hat m_t &\leftarrow m_t / (1 - \beta_1^t), \quad
      \hat v_t \leftarrow v_t / (1 - \beta_2^t) \\
      p_t &\leftarrow p_{t-1} - \eta_t\, r_p \left(
        \hat m_t / (\sqrt{\hat v_t + \bar\varepsilon} + \varepsilon)
        + \lambda\, \mathbb{1}_p\, p_{t-1} \right)
    \end{align*}

  where :math:`\eta_t` is ``learning_rate``, :math:`\varepsilon, \bar\varepsilon`
  are ``eps, eps_root``, :math:`\lambda` is ``weight_decay`` and
  :math:`\mathbb{1}_p` the decay ``mask``. By default :math:`r_p = \alpha^{L-i}`
  for layer :math:`i` of a stack of :math:`L`, :math:`\alpha^{L+1}` below the
  first layer and ``head_ratio`` above the last, with :math:`\alpha` =
  ``layerwise_decay`` (see :func:`optax_adamwdl.scale_by_layerwise_lr`).

  The arguments up to ``nesterov`` are ``optax.adamw``'s, in its order, except
  the default ``weight_decay``: 0.01 as in Paddle (``optax.adamw``: 1e-4).

  Args:
    learning_rate: a float or an optax schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added outside the square root (Paddle's ``epsilon``).
    eps_root: added inside the square root.
    mu_dtype: dtype of the first moment.
    weight_decay: the decoupled weight decay :math:`\lambda` (float or
      schedule), scaled by the layer's learning rate as in Paddle.
    mask: which parameters decay: a pytree of bools or a function of the
      params returning one, as in ``optax.adamw``. None decays all.
    nesterov: Nesterov momentum, as in ``optax.adamw``.
    layerwise_decay: the layer-wise decay; this and the nine ladder options
      that follow (``n_layers``, ``set_param_lr_fun``, ``stacks``,
      ``scan_axes``, ``stage_wise``, ``head_ratio``, ``depth_normalized``,
      ``min_ratio``, ``freeze_below``) are those of
      :func:`optax_adamwdl.scale_by_layerwise_lr`. Parameters whose ratio is 0
      do not move and, with ``freeze_below``, keep no Adam moments.
    decay_follows_ratio: True (Paddle, timm): the decay is scaled by the ratio;
      False (big_vision): by the learning rate only,
      :math:`p \leftarrow p - \eta_t (r_p\, \mathrm{adam} + \lambda p)`.
    apply_decay_param_fun: Paddle's form of ``mask``: ``name -> bool``.
    lr_mults: learning-rate multipliers by name, big_vision's ``lr_mults``:
      ``[(pattern, multiplier), ...]``; the first pattern that ``fullmatch``\ es
      a parameter's dotted name multiplies its ratio :math:`r_p` (after
      ``min_ratio`` and ``freeze_below``). A multiplier of 0 freezes the
      parameter: it does not move and keeps no Adam moments.
    wd_mults: weight-decay multipliers by name, the same way: the parameter
      decays by :math:`\lambda\, \mathbb{1}_p\, w_p` (``mask`` says whether,
      ``wd_mults`` how much; unmatched parameters get 1).
    strict_mults: refuse a parameter that two patterns of one list match
      (scenic's rule). A pattern that matches no parameter is always refused.
    grad_clip: an optax transformation applied to the raw gradients first,
      e.g. ``optax.clip_by_global_norm(1.0)``; frozen parameters (those
      that keep no moments) take no part in it, as in PyTorch, where they
      have no gradient, and big_vision.
    lazy_mode: rows whose gradient is all zero keep their values and moments
      (:func:`optax_adamwdl.update_nonzero_rows`).
    multi_precision: float32 master weights and moments for bfloat16/float16
      parameters (:func:`optax_adamwdl.with_master_weights`).

  Returns:
    ``optax.chain(grad_clip, optax.scale_by_adam(...),
    optax.add_decayed_weights(...), scale_by_layerwise_lr(...),
    optax.scale_by_learning_rate(learning_rate))`` (without ``grad_clip`` when
    None; with ``decay_follows_ratio=False`` the decay follows the ratio's
    scale and a scale that keeps frozen parameters still), wrapped by
    ``update_nonzero_rows`` (``lazy_mode``) and then ``with_master_weights``
    (``multi_precision``).

  Examples:
    >>> import jax.numpy as jnp
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
  _check_arguments(learning_rate, b1, b2, eps, eps_root, weight_decay, grad_clip)
  mask = _decay.decay_mask(mask, apply_decay_param_fun)
  numbers = dict(layerwise_decay=layerwise_decay, n_layers=n_layers, head_ratio=head_ratio,
                 min_ratio=min_ratio, freeze_below=freeze_below)  # fmt: skip
  ladder = LadderOptions.build(
    set_param_lr_fun=set_param_lr_fun, stacks=stacks, scan_axes=scan_axes, stage_wise=stage_wise,
    depth_normalized=depth_normalized, lr_mults=lr_mults, strict_mults=strict_mults, **numbers,
  )  # fmt: skip
  adam = optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)
  trainable = _trainable(ladder, numbers)
  if trainable is not None:  # frozen leaves: no moments, and no part in the clipping norm
    adam = optax.masked(adam, trainable)
    grad_clip = grad_clip if grad_clip is None else optax.masked(grad_clip, trainable)
  decay = _decay.add_decayed_weights(
    weight_decay, mask, Multipliers.build("wd_mults", wd_mults, strict_mults)
  )
  if decay_follows_ratio:
    steps = [adam, decay, scale_by_ladder(ladder)]
  else:
    steps = [adam, scale_by_ladder(ladder), decay, scale_by_ladder(ladder, only_freeze=True)]
  tx = optax.chain(*([grad_clip] if grad_clip is not None else []), *steps,
                   optax.scale_by_learning_rate(learning_rate))  # fmt: skip
  if lazy_mode:
    tx = update_nonzero_rows(tx)
  if multi_precision:
    return _guarded(with_master_weights(tx), float16=True)  # float32 moments
  return _guarded(tx, float16=False)
