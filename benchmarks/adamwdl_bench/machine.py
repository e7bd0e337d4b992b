"""The machine: its backend, device and memory, the date and the versions, for the page's header."""

import datetime
import importlib.metadata
import os
import platform

import jax

QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0"  # --quick: compile fast, measure nothing


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info() -> dict:
  """The backend, its device and memory, the date and the versions, for the table's header."""
  backend = jax.default_backend()
  cpu = f"{_cpu_model()}, {platform.machine()}, {os.cpu_count()} cores"
  if backend == "cpu":
    name = _cpu_model()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    description = f"JAX backend cpu: {cpu}, {memory / 2**30:.0f} GiB"
  else:
    device = jax.local_devices()[0]
    name = f"{device.device_kind} ({len(jax.local_devices())} visible, one used)"
    memory = (device.memory_stats() or {}).get("bytes_limit", 16 * 2**30)
    description = f"JAX backend {backend}: {name}, {memory / 2**30:.0f} GiB usable; host {cpu}"
  packages = ["jax", "jaxlib", "optax", "flax", "torch", "paddlepaddle"]
  versions = ", ".join(f"{p} {v}" for p in packages if (v := _version(p)))
  return dict(
    backend=backend,
    device_name=name,
    memory_bytes=memory,
    description=description,
    versions=f"Python {platform.python_version()}, {versions}",
    date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
  )
