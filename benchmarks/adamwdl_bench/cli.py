"""The command: ``python benchmarks/bench.py [options]`` runs the sections and writes the report."""

import argparse
import os
import sys
import time

import adamwdl_bench
from adamwdl_bench.compile_time import run_compile
from adamwdl_bench.machine import QUICK_XLA_FLAGS, machine_info
from adamwdl_bench.precision import bf16_rows
from adamwdl_bench.problems import E2E_SIZES, TREES, n_params
from adamwdl_bench.report import format_results, write_results
from adamwdl_bench.step import run_tree, tree_rows
from adamwdl_bench.train_step import E2E_WHAT, run_e2e, start_e2e

SECTIONS = ["step", "compile", "e2e"]
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def parse_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=adamwdl_bench.__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps (tests)")
  parser.add_argument("--trees", nargs="*", choices=sorted(TREES), default=None)
  parser.add_argument("--sections", nargs="*", choices=SECTIONS, default=None)
  parser.add_argument("--rounds", type=int, default=None, help="rounds in turn, JAX")
  parser.add_argument("--repeats", type=int, default=None, help="timed steps, PyTorch and Paddle")
  parser.add_argument(
    "--device-time",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="also N steps inside one jit (default: on a GPU or TPU)",
  )
  parser.add_argument("--device-steps", type=int, default=None, help="steps inside one jit")
  parser.add_argument("--device-rounds", type=int, default=None)
  parser.add_argument(
    "--memory",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="each configuration alone, for its peak memory (not in --quick)",
  )
  parser.add_argument("--e2e-size", choices=sorted(E2E_SIZES), default=None)
  parser.add_argument("--e2e-rounds", type=int, default=None)
  parser.add_argument("--e2e-steps", type=int, default=None, help="steps per round")
  parser.add_argument("--compile-rounds", type=int, default=None)
  parser.add_argument("--out", default=None, help="path without suffix for .md, .json (, .png)")
  return parser.parse_args(argv)


def complete(args: argparse.Namespace, machine: dict) -> argparse.Namespace:
  """The defaults that depend on the backend (and --quick)."""
  gpu, quick = machine["backend"] != "cpu", args.quick

  def default(name, quick_value, cpu_value, gpu_value):
    if getattr(args, name) is None:
      setattr(args, name, quick_value if quick else gpu_value if gpu else cpu_value)

  big = 36 * n_params("1.3b") < 0.7 * machine["memory_bytes"]  # adamw and adamwdl held at once
  trees = ["bert-base", "bert-large"]
  default("trees", ["tiny"], trees, trees + ["1.3b"] * big)
  default("sections", SECTIONS, SECTIONS, SECTIONS)
  default("rounds", 5, 30, 15)
  default("repeats", 3, 10, 30)
  default("device_steps", 3, 20, 20)
  default("device_rounds", 2, 5, 5)
  default("memory", False, True, True)
  default("device_time", gpu, False, True)
  default("e2e_size", "tiny", "bert-mini", "bert-base")
  default("e2e_rounds", 3, 20, 12)
  default("e2e_steps", 1, 1, 5)
  default("compile_rounds", 1, 8, 5)
  suffix = ("-gpu" if gpu else "") + ("-quick" if quick else "")  # quick: git-ignored
  default("out", RESULTS + suffix, RESULTS + suffix, RESULTS + suffix)
  args.warmup = 1 if quick else 3
  args.compile_tree = "tiny" if quick else "bert-large"
  return args


def _progress(start: float, text: str) -> None:
  t = os.times()  # processes ended so far: CPU seconds, to see where a slow run went
  cpu = t.user + t.system + t.children_user + t.children_system
  print(
    f"[{time.perf_counter() - start:4.0f} s, cpu {cpu:4.0f} s] {text}", file=sys.stderr, flush=True
  )


def _begin(argv) -> tuple[argparse.Namespace, dict]:
  """The options, completed for this machine, and the results' header fields."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # processes share one GPU
  args = parse_args(argv)
  if args.quick:  # before jax starts here and in every process started from here
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_XLA_FLAGS}".strip()
  machine = machine_info()
  args = complete(args, machine)
  machine["device_time"] = args.device_time
  results = dict(machine=machine, quick=args.quick, trees=[], rows=[], bf16_rows=[])
  results |= {k: getattr(args, k) for k in ("rounds", "repeats", "device_steps", "device_rounds")}
  return args, results


def main(argv=None) -> dict:
  """Runs the sections asked for, writing the results after each; returns them."""
  start = time.perf_counter()
  args, results = _begin(argv)
  machine = results["machine"]
  _progress(start, f"{machine['description']}; writing {args.out}.*")
  e2e_worker = None
  if args.quick and "e2e" in args.sections:  # compiling beside the rest: quick, not measured
    # The optimizers only: forward + backward is one compile more.
    e2e_worker = start_e2e(args, tuple(E2E_WHAT[1:]), wait=False)
  for tree in args.trees if "step" in args.sections else []:
    _progress(start, f"optimizer steps, {tree} tree")
    result = run_tree(tree, args, machine)
    results["trees"].append(result)
    results["rows"] += tree_rows(result)
    results["bf16_rows"] += bf16_rows(result)
    write_results(args.out, results)
  if "compile" in args.sections:
    _progress(start, f"compile times, {args.compile_tree} tree")
    results["compiles"] = run_compile(args.compile_tree, args.compile_rounds)
    results["compile_tree"] = args.compile_tree
    write_results(args.out, results)
  if "e2e" in args.sections:
    _progress(start, f"whole steps, demo model at {args.e2e_size} width")
    results["e2e"] = run_e2e(args, e2e_worker)
  print(format_results(results))
  write_results(args.out, results, final=True, chart=machine["backend"] == "cpu")
  _progress(start, "done")
  return results
