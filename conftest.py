"""One JAX compilation cache for the test session: its workers and the processes they start.

The suite is bound by XLA:CPU compile time, and its two xdist workers and its subprocesses (the demo,
the notebooks, the docs examples, the benchmark) compile many of the same small programs. The cache
lives in a temporary directory that the controlling process creates before any JAX import and removes
at the end; the environment carries it to every process started from here.
"""

import os
import shutil
import tempfile

import pytest

_CACHE = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
  if _CACHE in os.environ:  # a worker (inherited) or a caller's own cache
    return
  path = tempfile.mkdtemp(prefix="optax-adamwdl-jax-cache-")
  config.stash[_OWN_CACHE] = path
  os.environ[_CACHE] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
  if _OWN_CACHE in config.stash:
    shutil.rmtree(config.stash[_OWN_CACHE], ignore_errors=True)
