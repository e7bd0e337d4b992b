"""pmap and SPMD sharding over 8 CPU devices, in a subprocess with its own XLA_FLAGS."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run_with_8_devices(*args):
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(ROOT),
  )
  result = subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def test_one_device_pmap_and_sharded_jit_agree():
  out = _run_with_8_devices("-m", "tests.distributed_check")
  assert "pmap: max |difference|" in out and "sharded jit: max |difference|" in out


def test_sharded_train_step_example_runs():
  out = _run_with_8_devices("examples/sharded_train_step.py")
  losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
  assert len(losses) >= 5 and losses[-1] < 0.8 * losses[0]
