"""The experiment's two figures, drawn from its results JSON (so the notebook redraws them as is)."""

import matplotlib.pyplot as plt
import numpy as np


def _decay_label(decay: float) -> str:
  return f"{decay:g}" + (" (AdamW)" if decay == 1.0 else "")


def accuracy_figure(results: dict):
  """Left: test accuracy against decay (each seed, mean ± sd). Right: the validation grid."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
  decays = [row["decay"] for row in results["table"]]
  for i, row in enumerate(results["table"]):
    accs = np.asarray(row["test_accuracy"])
    left.scatter(
      np.full(len(accs), i) + np.linspace(-0.12, 0.12, len(accs)), accs, s=14, color="0.6", zorder=2
    )
    left.errorbar(i, accs.mean(), yerr=accs.std(ddof=1), fmt="o", color="C0", capsize=5, zorder=3)
  scratch = results.get("scratch")
  if scratch:
    accs = np.asarray(scratch["test_accuracy"])
    left.axhspan(
      accs.mean() - accs.std(ddof=1), accs.mean() + accs.std(ddof=1), color="C3", alpha=0.12
    )
    left.axhline(
      accs.mean(), color="C3", ls="--", lw=1, label=f"no pre-training (lr {scratch['chosen_lr']:g})"
    )
  left.axhline(1 / len(results["config"]["packages"]), color="0.3", ls=":", lw=1, label="chance")
  left.set_xticks(range(len(decays)), [_decay_label(d) for d in decays])
  left.set_xlabel("layerwise_decay (learning rate chosen on validation for each)")
  left.set_ylabel("test accuracy")
  left.set_title(f"Test accuracy, {len(results['table'][0]['test_accuracy'])} seeds: mean ± sd")
  left.legend(loc="lower left", fontsize=8)

  grid = results["validation_grid"]
  lrs = results["config"]["peak_lrs"]
  colors = plt.cm.viridis(np.linspace(0, 0.85, len(decays)))
  for color, decay in zip(colors, decays):
    means = [np.mean(grid[f"{decay:g}"][f"{lr:g}"]) for lr in lrs]
    right.plot(lrs, means, "o-", color=color, label=_decay_label(decay))
  if scratch:
    means = [np.mean(grid["scratch"][f"{lr:g}"]) for lr in lrs]
    right.plot(lrs, means, "s--", color="C3", label="no pre-training")
  right.set_xscale("log")
  right.set_xlabel("peak learning rate")
  right.set_ylabel("validation accuracy (mean over seeds)")
  right.set_title("The learning-rate grid, on validation")
  right.legend(fontsize=8, title="layerwise_decay", title_fontsize=8)
  fig.tight_layout()
  return fig


def layer_curves_figure(results: dict):
  """Per-row learning rate (top) and update-to-parameter norm ratio (bottom), one column per decay.

  The rows and curves are those ``optax_adamwdl.layer_metrics`` logged in the train step (``bottom``,
  ``layer_0``, ..., ``top``), drawn in that order.
  """
  curves = results["layer_curves"]
  decays = [row["decay"] for row in results["table"]]
  fig, axes = plt.subplots(
    2, len(decays), figsize=(3.1 * len(decays), 5.6), sharex=True, sharey="row"
  )
  rows = curves["rows"]
  colors = plt.cm.plasma(np.linspace(0, 0.85, len(rows)))
  for j, decay in enumerate(decays):
    run = curves["runs"][f"{decay:g}"]
    steps = np.arange(1, len(run["lr"][rows[0]]) + 1)
    for color, row in zip(colors, rows):
      axes[0, j].plot(steps, run["lr"][row], color=color, label=row)
      ratio = np.asarray(run["update_ratio"][row], float)
      # The first step's learning rate is 0 (the warm-up starts there): nothing to draw on a log scale.
      axes[1, j].plot(steps, np.where(ratio > 0, ratio, np.nan), color=color, label=row)
    axes[0, j].set_title(f"decay {_decay_label(decay)}, lr {run['peak_lr']:g}", fontsize=10)
    axes[1, j].set_xlabel("fine-tuning step")
    axes[1, j].set_yscale("log")
  axes[0, 0].set_ylabel("learning rate")
  axes[1, 0].set_ylabel("||update|| / ||param||")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(rows), fontsize=8, frameon=False)
  fig.suptitle(
    f"Per-layer learning rate and update size during fine-tuning (seed {curves['seed']})",
    fontsize=11,
  )
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  return fig
