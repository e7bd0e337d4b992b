"""Optimizer benchmarks: ``python benchmarks/bench.py [--quick] [options]`` (``--help``).

The benchmark is the package ``adamwdl_bench`` beside this file; its docstring gives the method.
"""

import importlib.util
import os
import sys

if __name__ == "__main__":  # not in the worker processes, which import this file again
  if importlib.util.find_spec("optax_adamwdl") is None:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from adamwdl_bench.cli import main

  main()
