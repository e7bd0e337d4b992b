"""XLA:CPU's multi-output fusion (the faster CPU setting): one loop per parameter, same results."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from optax_adamwdl import adamwdl
from tests import reference
from tests.steps import run_steps

ROOT = pathlib.Path(__file__).resolve().parent.parent
MULTI_OUTPUT_FUSION = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"

STEPS_SCRIPT = """
import re, sys
import jax
import numpy as np
import optax
from optax_adamwdl import adamwdl
from tests.steps import run_steps
from tests.test_xla_flags import problem
tx = adamwdl(1e-2, layerwise_decay=0.75)
init, grads = problem()
params, _ = run_steps(tx, init, grads)
np.savez(sys.argv[1], **params)

def step(params, state, grads):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state

hlo = jax.jit(step, donate_argnums=(0, 1)).lower(init, tx.init(init), grads[0]).compile().as_text()
outputs = re.findall(r"= ([(][^)]*[)]|[^ ]+) fusion[(]", hlo)
print("multi-output fusions:", sum(o.startswith("(") for o in outputs))
print("array loops per parameter:", sum(bool(re.search(r"[[][0-9]", o)) for o in outputs) / len(init))
"""


def problem():
  shapes = reference.bert_paddle_names(3)
  rng = np.random.default_rng(0)
  init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(4)]
  return init, grads


def test_multi_output_fusion_gives_bitwise_the_same_steps(tmp_path):
  env = dict(os.environ, XLA_FLAGS=MULTI_OUTPUT_FUSION, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  out = tmp_path / "params.npz"
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
  assert int(report["multi-output fusions"]) > 0  # the flag took effect
  # One loop per parameter (single_pass): p, g, m and v are read once and written once.
  assert float(report["array loops per parameter"]) == 1.0
  fused = np.load(out)
  params, _ = run_steps(adamwdl(1e-2, layerwise_decay=0.75), *problem())
  assert set(fused) == set(params)
  for name, value in params.items():
    np.testing.assert_array_equal(fused[name], value, err_msg=name)
