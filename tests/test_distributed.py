"""Many devices and many processes, in subprocesses with their own XLA_FLAGS.

pmap and SPMD sharding over 8 CPU devices in one process; and two processes joined by
``jax.distributed`` on this machine (loopback only) that train, checkpoint and restore with orbax.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import multihost_check

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


@pytest.mark.slow
def test_one_device_pmap_and_sharded_jit_agree():
  out = _run_with_8_devices("-m", "tests.distributed_check")
  assert "pmap: max |difference|" in out and "sharded jit: max |difference|" in out


@pytest.mark.slow
def test_sharded_train_step_example_runs():
  out = _run_with_8_devices("examples/sharded_train_step.py")
  losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
  assert len(losses) >= 5 and losses[-1] < 0.8 * losses[0]


def _free_loopback_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(directory, n, timeout=300):
  """Runs tests.multihost_check in n processes; kills them all if one fails or time runs out."""
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(ROOT),
  )
  coordinator = f"127.0.0.1:{_free_loopback_port()}"
  logs = [directory / f"process_{i}.log" for i in range(n)]
  processes = []
  try:
    for i, log in enumerate(logs):
      with log.open("w") as out:
        command = [sys.executable, "-m", "tests.multihost_check", coordinator, str(n), str(i)]
        processes.append(
          subprocess.Popen(
            [*command, str(directory)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
          )
        )
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
      if any(p.poll() for p in processes):
        break  # one failed: the others would wait for it
      time.sleep(0.1)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
      p.wait()
  report = "\n".join(f"--- process {i}:\n{log.read_text()[-4000:]}" for i, log in enumerate(logs))
  codes = [p.returncode for p in processes]
  report += f"\nreturn codes {codes} (-9: killed, as another had failed or past {timeout} s)"
  assert codes == [0] * n, report


@pytest.mark.slow
def test_two_processes_train_save_restore_and_match_one_process(tmp_path):
  _run_processes(tmp_path, 2)
  results = [dict(np.load(tmp_path / f"result_{i}.npz")) for i in range(2)]
  reference = multihost_check.one_process()  # the same steps on one device, uninterrupted

  # Each process gathered the same global values.
  assert results[0].keys() == results[1].keys()
  for name, value in results[0].items():
    np.testing.assert_array_equal(results[1][name], value, err_msg=name)
  got = {kind: {} for kind in ("saved", "restored", "final")}
  for name, value in results[0].items():
    kind, leaf = name.split("/", 1)
    got[kind][leaf] = value
  # The restored state is the saved one, and both are the single process's state at that step.
  assert got["restored"].keys() == got["saved"].keys()
  for name, value in got["saved"].items():
    np.testing.assert_array_equal(got["restored"][name], value, err_msg=name)
  # The gradients are exact whatever the sharding and the update is element-wise: the two runs
  # agree bit for bit, the step count and every moment and master copy included.
  assert reference.keys() == {f"{kind}/{leaf}" for kind in ("saved", "final") for leaf in got[kind]}
  for name, value in reference.items():
    kind, leaf = name.split("/", 1)
    np.testing.assert_array_equal(got[kind][leaf], value, err_msg=name)

  # The state holds MaskedNodes where the case is hard: no master for the float32 leaves, no
  # moments for the frozen ones (layer 0 and the embeddings), and those did not move.
  master, mu = ".master['", ".inner_state.mu['"
  names = "\n".join(reference)
  assert f"{master}embeddings']['weight']" in names and f"{master}head']" not in names
  assert f"{mu}head']['w']" in names and f"{mu}embeddings']" not in names
  assert "mu['encoder']['layers'][0]" not in names and "mu['encoder']['layers'][1]" in names
  start = multihost_check.named({"params": multihost_check.init_params()})
  for name, value in start.items():
    moved = float(np.max(np.abs(got["final"][name] - value)))
    frozen = "embeddings" in name or "['layers'][0]" in name
    assert moved == 0 if frozen else moved > 1e-2, (name, moved)
