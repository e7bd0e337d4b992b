"""optax's own optimizer conformance suite, run on adamwdl.

The installed optax ships ``optax/_src/alias_test.py``, whose ``AliasTest`` checks every optax
optimizer the same way: convergence on a parabola and on Rosenbrock's function (float32 and
complex64), no recompilation on the second call, extra keyword arguments to ``update``,
``optax.inject_hyperparams`` (same updates and same state as the plain optimizer), an explicit
``mu_dtype``, updates in the gradients' dtype, dtype and shape stability from float16 to complex128
under ``lax.cond``, and ``optax.MultiSteps``.

``AliasTest`` is parametrised with ``absl.testing.parameterized`` over a module-level table of
optimizer names, which each test method looks up with ``_get_opt(self, opt_name)``
(``getattr(optax._src.alias, opt_name)``). We take every generated test case that optax runs for
``opt_name="adamw"`` (with adamw's own ``opt_kwargs``), and run the original test function on a copy
whose globals make ``_get_opt`` and ``alias.adamw`` return ``adamwdl`` in one of our
configurations. The test functions keep ``opt_name="adamw"``, so every branch optax takes by name
(its skips included) is the one it takes for ``optax.adamw``: the only skip in this file is one optax
itself takes for ``adamw`` (complex128 on TPU in ``test_state_shape_dtype_shard_stability``). The
copies' ``jax.jit`` compiles with faster XLA:CPU options (same arithmetic): compile time is most of
what this file spends.
"""

import collections.abc
import functools
import inspect
import types

import jax
import optax
import pytest
from optax._src import alias as optax_alias
from optax._src import alias_test

from optax_adamwdl import adamwdl

# optax's table runs adamw with its own defaults and adamw's opt_kwargs; we run adamwdl the same
# way, with optax.adamw's weight_decay (1e-4): with adamwdl's default (Paddle's 0.01) the decay
# moves the minimum of Rosenbrock's function by 0.08, beyond the suite's tolerance of 3e-2, for
# optax.adamw as for adamwdl. layerwise_decay stays 1: the suite's parameters are one array.
ADAMW_WEIGHT_DECAY = inspect.signature(optax.adamw).parameters["weight_decay"].default
CONFIGS = {
  "default": {},
  "lazy_mode": {"lazy_mode": True},
  "multi_precision": {"multi_precision": True},
  "grad_clip": {"grad_clip": optax.clip_by_global_norm(1.0)},
}
# Clipping changes Adam's path: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.1))
# itself ends 0.06 to 0.18 from Rosenbrock's complex minimum after the suite's 10,000 steps
# (measured); with learning_rate=1e-2 it ends within 0.003.
OPT_KWARGS = {"grad_clip": {"learning_rate": 1e-2}}


def _generated_cases():
  """(generated test name, original test function, its parameters) for every AliasTest case."""
  for name in sorted(dir(alias_test.AliasTest)):
    if not name.startswith("test"):
      continue
    generated = getattr(alias_test.AliasTest, name)
    # absl's generated method closes over the original function and this case's parameters.
    cells = dict(
      zip(
        generated.__code__.co_freevars,
        (cell.cell_contents for cell in generated.__closure__ or ()),
      )
    )
    yield name, cells.get("test_method"), cells.get("testcase_params")


ALL_CASES = list(_generated_cases())
ADAMW_CASES = [
  (name, method, params)
  for name, method, params in ALL_CASES
  if isinstance(params, collections.abc.Mapping) and params.get("opt_name") == "adamw"
]


def _case_id(name, params):
  described = [
    f"{key}={getattr(value, '__name__', value)}"
    for key, value in params.items()
    if key not in ("opt_name", "opt_kwargs")
  ]
  return "-".join([name.rstrip("0123456789"), *described])


class _AliasWithAdamwdl(types.ModuleType):
  """``optax._src.alias`` with ``adamw`` replaced: in case a test reads ``alias.adamw`` itself."""

  def __init__(self, factory):
    super().__init__(optax_alias.__name__)
    self._factory = factory

  def __getattr__(self, attr):
    return self._factory if attr == "adamw" else getattr(optax_alias, attr)


@functools.cache
def _fast_compile():
  """XLA:CPU options that compile these small steps about three times faster, with the same
  arithmetic: compile time is what this file spends. None where this XLA does not know them."""
  options = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
  try:
    jax.jit(lambda x: x + 1, compiler_options=options)(jax.numpy.zeros(()))
  except jax.errors.JaxRuntimeError:
    return None
  return options


class _JaxCompilingFast(types.ModuleType):
  """``jax`` whose ``jit`` passes :func:`_fast_compile`'s options."""

  def __init__(self):
    super().__init__(jax.__name__)

  def __getattr__(self, attr):
    if attr == "jit":
      return functools.partial(jax.jit, compiler_options=_fast_compile())
    return getattr(jax, attr)


def _on_adamwdl(test_method, factory):
  """The test function, reading ``factory`` wherever it looks up optax's adamw."""
  namespace = dict(test_method.__globals__)
  namespace["_get_opt"] = lambda self, opt_name: factory
  namespace["alias"] = _AliasWithAdamwdl(factory)
  namespace["jax"] = _JaxCompilingFast()
  function = types.FunctionType(
    test_method.__code__,
    namespace,
    test_method.__name__,
    test_method.__defaults__,
    test_method.__closure__,
  )
  function.__kwdefaults__ = test_method.__kwdefaults__
  return function


def test_every_aliastest_method_has_adamw_cases():
  # If an optax upgrade adds an AliasTest method that does not run for adamw, or absl changes how
  # it stores a case's parameters, this fails instead of the suite silently running less.
  assert all(method is not None for _, method, _ in ALL_CASES)
  methods = {method.__name__ for _, method, _ in ALL_CASES}
  covered = {method.__name__ for _, method, _ in ADAMW_CASES}
  assert methods and covered == methods, sorted(methods - covered)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize(
  "name, test_method, params",
  ADAMW_CASES,
  ids=[_case_id(name, params) for name, _, params in ADAMW_CASES],
)
def test_aliastest(config, name, test_method, params):
  if config == "multi_precision" and _is_low_precision_default_mu(name, params):
    pytest.skip(
      "multi_precision keeps float32 moments for bfloat16 parameters by definition (Paddle's "
      "multi_precision); test_multi_precision_moments_are_float32_unless_mu_dtype_says_otherwise"
    )
  if config != "multi_precision" and jax.numpy.dtype(params.get("dtype", "float32")) == "float16":
    pytest.skip(
      "float16 parameters without master weights are refused at init (float16 moments "
      "underflow); tests/test_differential.py::"
      "test_float16_parameters_without_master_weights_are_refused_at_init"
    )
  built = []
  configured = functools.partial(adamwdl, weight_decay=ADAMW_WEIGHT_DECAY, **CONFIGS[config])

  def factory(*args, **kwargs):
    built.append(True)
    return configured(*args, **kwargs)

  # optax.inject_hyperparams reads the factory's signature (and its defaults).
  factory.__signature__ = inspect.signature(configured)
  if "opt_kwargs" in params:
    params = {**params, "opt_kwargs": {**params["opt_kwargs"], **OPT_KWARGS.get(config, {})}}
  # Outside unittest's runner, self.subTest is a plain context (a failure propagates), and the
  # absltest.SkipTest optax raises is reported by pytest as a skip.
  case = alias_test.AliasTest(name)
  _on_adamwdl(test_method, factory)(case, **params)
  assert built, "the test did not build adamwdl"


def _is_low_precision_default_mu(name, params):
  low = params.get("params_dtype") in ("bfloat16", "float16")
  return name.startswith("test_explicit_dtype") and low and params.get("state_dtype") is None


@pytest.mark.parametrize("params_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("mu_dtype", [None, "bfloat16"])
def test_multi_precision_moments_are_float32_unless_mu_dtype_says_otherwise(params_dtype, mu_dtype):
  """The one AliasTest case multi_precision answers differently: mu's dtype with mu_dtype=None."""
  params = jax.numpy.zeros(2, params_dtype)
  state = adamwdl(0.1, mu_dtype=mu_dtype, multi_precision=True).init(params)
  assert optax.tree.get(state, "mu").dtype == jax.numpy.dtype(mu_dtype or "float32")
  assert optax.tree.get(state, "nu").dtype == jax.numpy.float32
  assert optax.tree.get(state, "master").dtype == jax.numpy.float32
