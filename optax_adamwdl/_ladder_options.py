"""The ladder's options: one frozen, validated value that every ladder step reads.

Numbers are kept as Python numbers when concrete (so that the options are
hashable and a tree's placements are computed once) and as they are when
traced (``optax.inject_hyperparams`` traces every numeric argument).
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from optax_adamwdl import _checks
from optax_adamwdl._multipliers import Multipliers, Mults

SetParamLrFun = Callable[[Any, Any, str], Any]
ScanAxes = Mapping[str, int] | Callable[[str], int | None] | None
Stacks = Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None


@dataclasses.dataclass(frozen=True)
class LadderOptions:
  """The options of :func:`optax_adamwdl.scale_by_layerwise_lr`, checked.

  ``stacks`` holds ``(prefix, n_layers, decay)`` triples, ``scan_axes`` a
  sorted tuple of ``(component, axis)`` pairs (or the user's function) and
  ``lr_mults`` the learning-rate multipliers by name pattern.

  Examples:
    >>> LadderOptions.build(0.5, stacks=["encoder"]).stacks
    (('encoder', None, None),)
  """

  decay: Any = 1.0
  n_layers: Any = None
  custom: SetParamLrFun | None = None  # set_param_lr_fun: replaces the default ladder
  stacks: tuple[tuple[str, Any, Any], ...] = ()
  scan_axes: Any = None
  stage_wise: bool = False
  head_ratio: Any = 1.0
  depth_normalized: bool = False
  min_ratio: Any = 0.0
  freeze_below: Any = None
  lr_mults: Multipliers = Multipliers("lr_mults")

  @classmethod
  def build(
    cls,
    layerwise_decay: Any = 1.0,
    n_layers: Any = None,
    set_param_lr_fun: SetParamLrFun | None = None,
    *,
    stacks: Stacks = None,
    scan_axes: ScanAxes = None,
    stage_wise: bool = False,
    head_ratio: Any = 1.0,
    depth_normalized: bool = False,
    min_ratio: Any = 0.0,
    freeze_below: Any = None,
    lr_mults: Mults = None,
    strict_mults: bool = False,
  ) -> "LadderOptions":
    """Checks the public keyword arguments and returns them as options."""
    _checks.check_range("layerwise_decay", layerwise_decay, low=0.0, low_inclusive=False)
    _checks.check_range("head_ratio", head_ratio, low=0.0)
    _checks.check_range("min_ratio", min_ratio, low=0.0)
    if freeze_below is not None:
      _checks.check_range("freeze_below", freeze_below, low=0.0)
    _checks.check_callable("set_param_lr_fun", set_param_lr_fun, "(decay_rate, n_layers, name)")
    number = _checks.number_or_traced
    options = cls(
      decay=number("layerwise_decay", layerwise_decay),
      n_layers=_checks.check_n_layers("n_layers", n_layers),
      custom=set_param_lr_fun,
      stacks=_checks.check_stacks(stacks),
      scan_axes=_checks.check_scan_axes(scan_axes),
      stage_wise=bool(stage_wise),
      head_ratio=number("head_ratio", head_ratio),
      depth_normalized=bool(depth_normalized),
      min_ratio=number("min_ratio", min_ratio),
      freeze_below=None if freeze_below is None else number("freeze_below", freeze_below),
      lr_mults=Multipliers.build("lr_mults", lr_mults, strict_mults),
    )
    refines = options.stacks or options.scan_axes is not None or options.stage_wise
    head = options.head_ratio  # traced under inject_hyperparams (its default too): unchecked
    if options.custom is not None and (
      refines or options.depth_normalized or (isinstance(head, int | float) and head != 1)
    ):
      raise ValueError(
        "stacks, scan_axes, stage_wise, head_ratio and depth_normalized refine the default "
        "ladder; set_param_lr_fun replaces it. Give one or the other."
      )
    return options

  @property
  def numbers(self) -> tuple[Any, ...]:
    """Every number of the options, in a fixed order (see :meth:`with_numbers`)."""
    stack_numbers = [v for _, n, d in self.stacks for v in (n, d)]
    return (self.decay, self.n_layers, self.head_ratio, self.min_ratio, self.freeze_below,
            *stack_numbers)  # fmt: skip

  def with_numbers(self, numbers: Sequence[Any]) -> "LadderOptions":
    """These options with ``numbers`` (concrete values of :attr:`numbers`) in place, checked again."""
    decay, n_layers, head_ratio, min_ratio, freeze_below, *stack_numbers = numbers
    stacks = {
      p: {k: v for k, v in (("n_layers", n), ("decay", d)) if v is not None}
      for (p, _, _), n, d in zip(self.stacks, stack_numbers[::2], stack_numbers[1::2])
    }
    scan_axes = dict(self.scan_axes) if isinstance(self.scan_axes, tuple) else self.scan_axes
    return LadderOptions.build(
      decay, n_layers, self.custom, stacks=stacks or None, scan_axes=scan_axes,
      stage_wise=self.stage_wise, head_ratio=head_ratio, depth_normalized=self.depth_normalized,
      min_ratio=min_ratio, freeze_below=freeze_below, lr_mults=self.lr_mults.rules,
      strict_mults=self.lr_mults.strict,
    )  # fmt: skip

  @property
  def concrete(self) -> bool:
    return not any(_checks.is_traced(v) or isinstance(v, jax.Array) for v in self.numbers)

  @property
  def decays(self) -> list[Any]:
    """The default decay and every stack's own."""
    return [self.decay, *(d for _, _, d in self.stacks if d is not None)]

  @property
  def scales(self) -> bool:
    """False when every ratio is 1 whatever the tree (so no layer needs to be found)."""
    return not (
      self.concrete
      and self.custom is None
      and self.head_ratio == 1
      and all(d == 1 for d in self.decays)
    )
