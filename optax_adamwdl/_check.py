"""Checking the ladder against the model: the order in which its forward pass reads each parameter.

:func:`check_ladder` traces a forward pass with ``jax.make_jaxpr`` (nothing is
compiled or run), numbers its equations in execution order and finds the
equations that read each parameter; the result, a :class:`LadderCheck`, names
the parameters whose ratios contradict that order, the shared ones and the
unused ones.
"""

from collections.abc import Callable
from typing import Any

from optax_adamwdl import _order, _trace
from optax_adamwdl._ladder import placements
from optax_adamwdl._ladder_options import LadderOptions, SetParamLrFun
from optax_adamwdl._names import leaf_names
from optax_adamwdl._order import LadderCheck

_RTOL = 1e-9


def check_ladder(
  forward: Callable[..., Any],
  params: Any,
  *example_inputs: Any,
  layerwise_decay: float = 0.5,
  n_layers: int | None = None,
  set_param_lr_fun: SetParamLrFun | None = None,
  **options: Any,
) -> LadderCheck:
  """Checks the ladder against the order in which the model's forward pass reads its parameters.

  Traces ``forward(params, *example_inputs)`` with ``jax.make_jaxpr``
  (nothing is compiled or run: ``jax.ShapeDtypeStruct`` leaves will do) and
  numbers its equations in execution order: those of a called function
  (``jit``, ``custom_jvp``, ``custom_vjp``, ``checkpoint``) and of ``cond``
  branches in place, a loop's body once. An equation *reads* a parameter
  when it takes the parameter (or a cast, reshape, transpose or stack of it)
  as an operand.

  Each layer of the ladder (one position of a stack; a stack's scanned leaves
  are one layer) *starts* at the first read of any of its parameters. A
  parameter is compared with the layers of its stack
  (:attr:`Placement.stack`), one outside every stack with the layers of all
  stacks. Each read falls *before the layers* (before the first starts),
  *in* a layer (from its start until the next one starts), or *after the
  layers* (after the last first read of every layer's parameters).

  - **Shared**: a parameter read in two or more of these places (a tied input
    and output embedding, a bias read by every layer), or read without being
    sliced inside the innermost loop that runs several layers. Shared
    parameters are listed, not checked.
  - **Problem**: a parameter whose ratio is above that of a layer starting
    after its first read, or below that of a layer starting before it (a
    parameter outside the layers first read after every layer has started
    needs only the smaller of that ratio and ``head_ratio``). A layer's
    parameters are compared with the other layers, so this also says that the
    layers run in the order of their ratios; when every parameter of a layer
    is a problem, the layer is one entry. Also a problem: a parameter outside
    the layers sliced per iteration of a loop over layers (a layer axis the
    ladder does not know), and scanned leaves that their loop runs against
    their ratios (``reverse=True``).
  - **Unused**: a parameter never read.

  Args:
    forward: the forward pass, called as ``forward(params, *example_inputs)``;
      when ``params`` is a flax nnx ``Module``, it receives a copy of that
      module whose parameters (and other state, such as rng counts) are
      traced. Evaluation mode (no dropout) is enough: the order of the
      layers does not depend on it.
    params: a pytree of parameters (arrays or ``jax.ShapeDtypeStruct``), a
      flax nnx ``State``, or a flax nnx ``Module`` (its ``nnx.Param``
      variables are the parameters).
    *example_inputs: the inputs of one call. Their array leaves (and
      ``jax.ShapeDtypeStruct``) are traced; any other leaf (a Python flag, a
      number) is passed as it is.
    layerwise_decay: the decay rate you train with (below 1, or every ratio
      is 1 and nothing can contradict the order).
    n_layers: as for :func:`optax_adamwdl.scale_by_layerwise_lr`.
    set_param_lr_fun: as for :func:`optax_adamwdl.scale_by_layerwise_lr`.
    **options: its keyword options (``stacks``, ``scan_axes``, ``stage_wise``,
      ``head_ratio``, ``depth_normalized``, ``min_ratio``, ``freeze_below``),
      so that the check sees the ladder you train with.

  Returns:
    A :class:`LadderCheck`: ``problems``, ``shared`` and ``unused``; ``ok``
    when there are neither problems nor unused parameters.

  Raises:
    ValueError: for traced hyperparameters (the check needs their values), or
      any error of the ladder itself (see
      :func:`optax_adamwdl.scale_by_layerwise_lr`).

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"embed": jnp.zeros((10, 4)), "layers": [jnp.zeros((4, 4))] * 2,
    ...           "head": jnp.zeros((4, 2))}
    >>> def forward(p, ids):
    ...   x = p["embed"][ids]
    ...   for w in p["layers"]:
    ...     x = jnp.tanh(x @ w)
    ...   return x @ p["head"]
    >>> check_ladder(forward, params, jnp.zeros(3, int)).ok
    True
    >>> head_low = lambda decay, n_layers, name: decay if name == "head" else 1.0
    >>> print(check_ladder(forward, params, jnp.zeros(3, int), set_param_lr_fun=head_low))
    problems (1):
      head
        ladder:  at the top, ratio 0.5 (custom)
        forward: first read after the layers; layers.1 starts before it, so it should get at least 1
  """
  ladder = LadderOptions.build(layerwise_decay, n_layers, set_param_lr_fun, **options)
  if not ladder.concrete:
    raise ValueError("check_ladder needs concrete hyperparameters (numbers, not traced values).")
  tree, reads = _trace.trace(forward, params, example_inputs)
  return _order.Analysis(
    leaf_names(tree), placements(ladder, tree), reads, float(ladder.head_ratio)
  ).check()
