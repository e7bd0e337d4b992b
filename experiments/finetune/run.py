"""Pre-train a byte-level encoder on the stdlib's source, then fine-tune it with adamwdl at each decay.

    python -m experiments.finetune.run            # the full run (about 11 min on 2 CPU cores)
    python -m experiments.finetune.run --quick    # a small version of every step (the tests run it)

Protocol: for each ``layerwise_decay`` (1.0 is plain AdamW), fine-tune at every peak learning rate of the
grid with every seed; choose the learning rate by the mean validation accuracy over the seeds; report
the test accuracy of that learning rate over the seeds (mean ± sample sd). A baseline without
pre-training (decay 1.0, its own chosen learning rate) says how much pre-training brings. Results:
``results.json`` and two PNGs in ``--out`` (default: ``experiments/finetune/results``).
"""

import argparse
import dataclasses
import json
import pathlib
import platform
import time

import jax
import numpy as np

from experiments.finetune import data, plots
from experiments.finetune.finetune import Trainer
from experiments.finetune.pretrain import CACHE, pretrain

HERE = pathlib.Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Config:
  packages: tuple = data.PACKAGES
  length: int = 32  # tokens per sequence
  vocab_size: int = 2048
  dim: int = 64
  heads: int = 4
  n_layers: int = 4
  pretrain_steps: int = 1500
  pretrain_batch: int = 64
  pretrain_lr: float = 2e-3
  pretrain_seed: int = 0
  temperature: float = 0.1  # of the contrastive pre-training objective
  labels_per_class: int = 32
  val_per_class: int = 64
  test_per_class: int = 200
  finetune_steps: int = 60
  finetune_batch: int = 16
  warmup_fraction: float = 0.1
  weight_decay: float = 0.01
  decays: tuple = (1.0, 0.9, 0.75, 0.65)
  peak_lrs: tuple = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
  seeds: tuple = tuple(range(10))
  scratch_baseline: bool = True


QUICK = Config(
  vocab_size=512,
  dim=32,
  heads=2,
  n_layers=2,
  pretrain_steps=60,
  pretrain_batch=32,
  val_per_class=16,
  test_per_class=32,
  finetune_steps=80,
  peak_lrs=(3e-3, 1e-2),
  seeds=(0, 1),
  scratch_baseline=False,
)


def _r(x, digits=4):
  return float(f"{float(x):.{digits}g}")


def run(cfg: Config, out: pathlib.Path | None, *, cache: pathlib.Path | None = CACHE, log=print):
  """Runs the experiment; writes results.json and the plots into ``out`` (unless None); returns them."""
  start = time.time()
  corpus = data.load(
    cfg.length,
    vocab_size=cfg.vocab_size,
    val_per_class=cfg.val_per_class,
    test_per_class=cfg.test_per_class,
    packages=cfg.packages,
  )
  log(
    f"stdlib of Python {corpus.python}: {len(corpus.pretrain) / 1e6:.2f} M pre-training tokens;"
    f" snippets: " + ", ".join(f"{k} {len(v[1])}" for k, v in corpus.snippets.items())
  )
  pretrained, pretrain_record = pretrain(cfg, corpus, cache=cache, log=log)
  pretrain_seconds = time.time() - start

  runs = [
    {"decay": d, "peak_lr": lr, "from_scratch": False} for d in cfg.decays for lr in cfg.peak_lrs
  ]
  if cfg.scratch_baseline:
    runs += [{"decay": 1.0, "peak_lr": lr, "from_scratch": True} for lr in cfg.peak_lrs]
  trainer = Trainer(cfg, pretrained)
  val_x, val_y, _ = corpus.snippets["val"]
  test_x, test_y, _ = corpus.snippets["test"]
  final, val_acc, train_loss = {}, {}, {}
  curves_seed = cfg.seeds[0]
  metric_log = None  # what layer_metrics logged at every step of the curves' seed
  for seed in cfg.seeds:
    t = time.time()
    params, losses, metrics = trainer.train(seed, runs, corpus)
    val_acc[seed] = trainer.accuracy(params, val_x, val_y)
    final[seed] = jax.device_get(params)
    train_loss[seed] = losses
    if seed == curves_seed:
      metric_log = metrics
    best = int(np.argmax(val_acc[seed]))
    log(
      f"  seed {seed}: {len(runs)} runs x {cfg.finetune_steps} steps in {time.time() - t:.0f} s;"
      f" best validation accuracy {val_acc[seed][best]:.3f} ({runs[best]})"
    )

  def key(r):
    return "scratch" if r["from_scratch"] else f"{r['decay']:g}"

  grid = {}
  for i, r in enumerate(runs):
    grid.setdefault(key(r), {})[f"{r['peak_lr']:g}"] = [_r(val_acc[s][i]) for s in cfg.seeds]
  chosen = {}  # key -> run index with the best mean validation accuracy
  for i, r in enumerate(runs):
    mean = np.mean([val_acc[s][i] for s in cfg.seeds])
    if key(r) not in chosen or mean > chosen[key(r)][1]:
      chosen[key(r)] = (i, mean)

  def test_row(k):
    i = chosen[k][0]
    stacked = jax.tree.map(lambda *xs: np.stack([x[i] for x in xs]), *[final[s] for s in cfg.seeds])
    accs = trainer.accuracy(stacked, test_x, test_y)
    return {
      "chosen_lr": runs[i]["peak_lr"],
      "validation_mean": _r(chosen[k][1]),
      "test_accuracy": [_r(a) for a in accs],
      "mean": _r(accs.mean()),
      "sd": _r(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
      "n_seeds": len(accs),
      "final_train_loss_mean": _r(np.mean([train_loss[s][-1, i] for s in cfg.seeds])),
    }

  table = []
  for d in cfg.decays:
    row = {"decay": d, **test_row(f"{d:g}")}
    table.append(row)
  # The paired differences, seed by seed, to plain AdamW (decay 1.0; the first decay if it is absent).
  adamw = next((row for row in table if row["decay"] == 1.0), table[0])
  base = np.asarray(adamw["test_accuracy"])
  for row in table:
    diff = np.asarray(row["test_accuracy"]) - base
    row["minus_adamw_mean"] = _r(diff.mean())
    row["minus_adamw_sd"] = _r(diff.std(ddof=1)) if len(diff) > 1 else 0.0
  scratch = test_row("scratch") if cfg.scratch_baseline else None

  # layer_metrics' rows, in its (sorted) order: bottom, layer_0, ..., top.
  rows = [k.removeprefix("lr/") for k in metric_log if k.startswith("lr/")]
  curves = {"seed": curves_seed, "rows": rows, "runs": {}}
  for d in cfg.decays:
    i = chosen[f"{d:g}"][0]
    curves["runs"][f"{d:g}"] = {
      "peak_lr": runs[i]["peak_lr"],
      **{
        kind: {row: [_r(v, 3) for v in metric_log[f"{kind}/{row}"][:, i]] for row in rows}
        for kind in ("lr", "update_ratio")
      },
    }

  results = {
    "config": {
      k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()
    },
    "python": corpus.python,
    "data_fingerprint": corpus.fingerprint,
    "splits": {p: {k: len(v) for k, v in s.items()} for p, s in corpus.splits.items()},
    "snippets": {k: len(v[1]) for k, v in corpus.snippets.items()},
    "pretrain_tokens": int(len(corpus.pretrain)),
    "unk_rate_pretrain": _r((corpus.pretrain == data.UNK).mean()),
    "pretrain": pretrain_record,
    "validation_grid": grid,
    "table": table,
    "scratch": scratch,
    "layer_curves": curves,
    "seconds": {"pretrain": round(pretrain_seconds, 1), "total": round(time.time() - start, 1)},
    "platform": {
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "machine": platform.machine(),
    },
  }
  if out is not None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_plots(results, out)
  return results


def write_plots(results: dict, out: pathlib.Path) -> None:
  for name, draw in (
    ("accuracy.png", plots.accuracy_figure),
    ("layer_curves.png", plots.layer_curves_figure),
  ):
    fig = draw(results)
    fig.savefig(out / name, dpi=80)
    plots.plt.close(fig)


def summary(results: dict) -> str:
  lines = [
    f"{'decay':>8}  {'chosen lr':>9}  {'test accuracy':>16}  {'minus AdamW (paired)':>21}  n"
  ]
  for row in results["table"]:
    lines.append(
      f"{row['decay']:>8g}  {row['chosen_lr']:>9g}  {row['mean']:.3f} ± {row['sd']:.3f}     "
      f"  {row['minus_adamw_mean']:+.3f} ± {row['minus_adamw_sd']:.3f}      {row['n_seeds']}"
    )
  if results["scratch"]:
    s = results["scratch"]
    lines.append(
      f"{'scratch':>8}  {s['chosen_lr']:>9g}  {s['mean']:.3f} ± {s['sd']:.3f}"
      "   (no pre-training, decay 1.0)"
    )
  return "\n".join(lines)


def main(argv=None):
  import matplotlib

  matplotlib.use("Agg")  # files only
  parser = argparse.ArgumentParser(
    prog="python -m experiments.finetune.run",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--quick", action="store_true", help="a small version of every step")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="where to write results.json and the plots (default: results/, or "
    "results-quick/ with --quick)",
  )
  parser.add_argument("--no-cache", action="store_true", help="pre-train even if a cached one fits")
  parser.add_argument(
    "--replot",
    action="store_true",
    help="only redraw the plots from the results.json already in --out",
  )
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else Config()
  out = args.out or HERE / ("results-quick" if args.quick else "results")
  if args.replot:
    results = json.loads((out / "results.json").read_text())
    write_plots(results, out)
    print(summary(results))
    return results
  results = run(cfg, out, cache=None if args.no_cache else CACHE)
  print(summary(results))
  print(f"written to {out} in {results['seconds']['total']:.0f} s")
  return results


if __name__ == "__main__":
  main()
