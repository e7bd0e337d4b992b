"""single_pass (``_fusion``) under XLA:CPU's multi-output fusion: one loop per parameter, the same
steps bit for bit."""

import os
import pathlib
import subprocess
import sys

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adamwdl import adamwdl, single_pass
from tests import reference
from tests.conftest import problem as build_problem
from tests.steps import run_steps

ROOT = pathlib.Path(__file__).resolve().parent.parent
MULTI_OUTPUT_FUSION = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"

STEPS_SCRIPT = r"""
import re, sys
import jax
import numpy as np
import optax
from optax_adamwdl import adamwdl, single_pass
from tests.steps import run_steps
from tests.test_fusion import problem
init, grads = problem()
for name, tx in (("plain", adamwdl(1e-2, layerwise_decay=0.75)),
                 ("single_pass", single_pass(adamwdl(1e-2, layerwise_decay=0.75)))):
  params, _ = run_steps(tx, init, grads)
  np.savez(sys.argv[1] + "." + name + ".npz", **params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  hlo = step.lower(init, tx.init(init), grads[0]).compile().as_text()
  outputs = re.findall(r"= ([(][^)]*[)]|[^ ]+) fusion[(]", hlo)
  print(name, "multi-output fusions:", sum(o.startswith("(") for o in outputs))
  loops = sum(bool(re.search(r"\[[0-9]", o)) for o in outputs) / len(init)
  print(name, "array loops per parameter:", loops)
"""


def problem():
  return build_problem(reference.bert_paddle_names(3), 4)


@pytest.mark.slow
def test_multi_output_fusion_gives_bitwise_the_same_steps(tmp_path):
  env = dict(os.environ, XLA_FLAGS=MULTI_OUTPUT_FUSION, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  out = tmp_path / "params"
  result = subprocess.run(
    [sys.executable, "-c", STEPS_SCRIPT, str(out)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  if "Unknown flag" in result.stderr:
    pytest.skip(f"this jaxlib has no {MULTI_OUTPUT_FUSION}")
  assert result.returncode == 0, result.stderr
  report = dict(line.split(": ") for line in result.stdout.splitlines())
  assert int(report["single_pass multi-output fusions"]) > 0  # the flag took effect
  # One loop per parameter with single_pass: p, g, m and v are read once and written once.
  assert float(report["single_pass array loops per parameter"]) == 1.0
  assert float(report["plain array loops per parameter"]) > 1.0  # what single_pass is for
  fused = dict(np.load(f"{out}.single_pass.npz"))
  plain = dict(np.load(f"{out}.plain.npz"))
  params, _ = run_steps(adamwdl(1e-2, layerwise_decay=0.75), *problem())
  assert set(fused) == set(plain) == set(params)
  for name, value in params.items():
    np.testing.assert_array_equal(fused[name], plain[name], err_msg=name)
    np.testing.assert_array_equal(fused[name], value, err_msg=name)  # and as without the flag


def test_single_pass_is_the_same_transformation_bit_for_bit():
  # Without the flag too, single_pass changes how the step is computed, never its values.
  shapes = {"embeddings.w": (6, 3), "encoder.layers.0.w": (3, 3), "encoder.layers.1.w": (3,)}
  rng = np.random.default_rng(1)
  init = {k: jnp.asarray(rng.normal(size=s), jnp.bfloat16) for k, s in shapes.items()}
  grads = [{k: jnp.asarray(rng.normal(size=s), jnp.bfloat16) for k, s in shapes.items()}]
  grads.append({**grads[0], "embeddings.w": grads[0]["embeddings.w"].at[::2].set(0)})  # lazy rows
  tx = adamwdl(1e-2, layerwise_decay=0.75, lazy_mode=True, multi_precision=True)
  wrapped = single_pass(tx)
  assert isinstance(wrapped, optax.GradientTransformationExtraArgs)
  chex.assert_trees_all_equal(run_steps(wrapped, init, grads), run_steps(tx, init, grads))
