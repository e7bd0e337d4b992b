#!/usr/bin/env bash
# The GPU benchmark in one command, on a machine with one NVIDIA GPU:
#
#   bash benchmarks/run_gpu.sh [bench.py options]
#
# writes benchmarks/results-gpu.{md,json} (a copy goes to $OUT when it is set, as on a lent device
# machine, where the call is: command "bash benchmarks/run_gpu.sh", timeout_s 600). It uses the
# python3 whose jax has a GPU backend; where it has none, it installs jax[cuda13] (or jax[cuda12])
# from PyPI, and torch (PyPI's Linux wheels are CUDA builds) where torch is missing, so that the
# PyTorch rows run on CUDA. Then bench.py times, on the GPU: the BERT-base, BERT-large and (where
# memory allows) 1.3B trees, per call and device time against the copy floor, bf16 rows, peak
# device memory, compile time, and the demo model's whole step at BERT-base width. About 5 to 7
# minutes on an H100 or H200; the sections that finished are in results-gpu.partial.* if time runs out
# (BENCH_TIMEOUT, 540 s by default, stops bench.py before a 600 s call limit).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

has_gpu_jax() { "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; }
if ! has_gpu_jax; then
  "$PY" -m pip install -q -U "jax[cuda13]" || "$PY" -m pip install -q -U "jax[cuda12]"
  has_gpu_jax || { echo "run_gpu.sh: jax has no GPU backend here" >&2; exit 1; }
fi
"$PY" -c 'import torch' 2>/dev/null || "$PY" -m pip install -q torch \
  || echo "run_gpu.sh: no torch; its rows will say so" >&2
for module in optax flax; do
  "$PY" -c "import $module" 2>/dev/null || "$PY" -m pip install -q "$module"
done

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU, one at a time
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import jax, optax, flax; print("jax", jax.__version__, jax.devices(), "optax", optax.__version__, "flax", flax.__version__)'
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || true

timeout "${BENCH_TIMEOUT:-540}" "$PY" benchmarks/bench.py "$@"
status=$?
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results-gpu*.md benchmarks/results-gpu*.json "$OUT"/ 2>/dev/null || true  # .partial.* if cut short
fi
exit $status
