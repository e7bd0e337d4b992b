"""The fine-tuning experiment (experiments/finetune): its data split, and its quick version end to end.

The quick run checks structure and sanity only (pre-training lowers its loss, fine-tuning beats chance,
the results hold every field the notebook and the docs read); the numbers of the full run are in
experiments/finetune/results/results.json, which the last test checks for shape, not for values.
"""

import json
import math
import pathlib

import numpy as np
import pytest

from experiments.finetune import data, run

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "experiments" / "finetune" / "results"


def test_the_split_is_by_file_deterministic_and_disjoint():
  files = data.stdlib_files()
  assert files == sorted(files) and files
  a = data.load(32, vocab_size=512, val_per_class=8, test_per_class=8)
  b = data.load(32, vocab_size=512, val_per_class=8, test_per_class=8)
  assert a.fingerprint == b.fingerprint
  for split in ("train", "val", "test"):
    np.testing.assert_array_equal(a.snippets[split][0], b.snippets[split][0])
    np.testing.assert_array_equal(a.snippets[split][1], b.snippets[split][1])
  for package, splits in a.splits.items():
    train, val, test = (set(splits[k]) for k in ("train", "val", "test"))
    assert train and val and test, package
    assert not (train & val or train & test or val & test), package
    assert all(f.split("/")[0] == package for f in train | val | test)
  # Snippets come from the files of their own split; the split does not depend on the listing order.
  for split in ("train", "val", "test"):
    allowed = {f for s in a.splits.values() for f in s[split]}
    assert set(a.snippets[split][2]) <= allowed
  package = data.PACKAGES[0]
  own = [f for f in files if f.startswith(package + "/")]
  sizes = {f: len(f) for f in own}
  assert data.split_package_files(own[::-1], sizes) == data.split_package_files(own, sizes)


def test_pretraining_text_holds_no_evaluation_file():
  corpus = data.load(32, vocab_size=512, val_per_class=8, test_per_class=8)
  held_out = {f for s in corpus.splits.values() for f in s["val"] + s["test"]}
  assert held_out and not held_out & set(corpus.pretrain_files)
  assert set(corpus.pretrain_files) | held_out == set(data.stdlib_files())
  starts, lengths = corpus.pretrain_offsets.T
  assert len(starts) == len(corpus.pretrain_files) and lengths.sum() == len(corpus.pretrain)
  # A long held-out file's middle stretch of tokens is nowhere in the pre-training text.
  val_tokens, _, val_files = corpus.snippets["val"]
  text = corpus.pretrain
  for row in val_tokens[:: len(val_tokens) // 6]:
    n = len(text) - len(row)
    near = np.flatnonzero((text[:n] == row[0]) & (text[1 : n + 1] == row[1]))
    assert not any((text[s : s + len(row)] == row).all() for s in near)


def test_labelled_subset_is_balanced_and_seeded():
  corpus = data.load(32, vocab_size=512, val_per_class=8, test_per_class=8)
  x0, y0 = data.labelled_subset(corpus, 4, seed=0)
  x1, y1 = data.labelled_subset(corpus, 4, seed=0)
  x2, _ = data.labelled_subset(corpus, 4, seed=1)
  np.testing.assert_array_equal(x0, x1)
  assert not np.array_equal(x0, x2)
  assert np.bincount(y0).tolist() == [4] * len(data.PACKAGES)


def test_pretrain_batch_pairs_windows_of_one_file_and_masks_fifteen_percent():
  corpus = data.load(32, vocab_size=512, val_per_class=8, test_per_class=8)
  rng = np.random.default_rng(0)
  tokens, positions, targets = data.pretrain_batch(rng, corpus, 16, 32, 512)
  assert tokens.shape == (32, 32) and positions.shape == targets.shape == (32, 5)
  original = tokens.copy()
  np.put_along_axis(original, positions, targets, axis=1)
  starts, lengths = corpus.pretrain_offsets.T
  text = corpus.pretrain
  file_of = lambda at: np.searchsorted(starts, at, side="right") - 1
  n = len(text) - 32
  for i in range(0, 32, 2):  # both windows of a pair lie in one file, without overlapping
    found = []
    # Where each window occurs (the stdlib repeats itself: maybe in several places).
    for row in (original[i], original[i + 1]):
      near = np.flatnonzero(
        (text[:n] == row[0]) & (text[1 : n + 1] == row[1]) & (text[2 : n + 2] == row[2])
      )
      found.append([s for s in near if (text[s : s + 32] == row).all()])
    assert any(
      file_of(a) == file_of(b)
      and abs(a - b) >= 32
      and file_of(a + 31) == file_of(a)
      and file_of(b + 31) == file_of(b)
      for a in found[0]
      for b in found[1]
    )
  changed = (tokens != original).mean()
  # 15% chosen, of which 90% changed (a random token may equal the old one).
  assert 0.08 < changed < 0.16
  assert (tokens == data.MASK).mean() > 0.08


def test_quick_run_end_to_end(tmp_path):
  """The quick version of the whole experiment, once (one test: pytest-xdist would run a shared
  fixture once per worker): about 40 s on 2 CPU cores."""
  results = run.run(run.QUICK, tmp_path, cache=None, log=lambda *_: None)

  # It writes the results and the two plots.
  assert (tmp_path / "accuracy.png").stat().st_size > 0
  assert (tmp_path / "layer_curves.png").stat().st_size > 0
  assert json.loads((tmp_path / "results.json").read_text())["table"] == results["table"]
  _check_shape(results, run.QUICK.decays, len(run.QUICK.seeds))

  # Pre-training lowers both of its losses, from about a uniform guess.
  curve = results["pretrain"]["loss_curve"]  # [step, masked-token loss, contrastive loss]
  assert curve[0][1] > math.log(run.QUICK.vocab_size) - 1.5
  assert curve[-1][1] < curve[0][1] - 0.5
  assert curve[-1][2] < curve[0][2] - 0.2

  # Fine-tuning beats chance (6 packages).
  chance = 1 / len(results["config"]["packages"])
  assert max(row["mean"] for row in results["table"]) > chance + 0.05, results["table"]

  # The logged learning rates follow the ladder; every logged update is a move.
  curves = results["layer_curves"]
  rows = curves["rows"]
  assert rows == ["bottom"] + [f"layer_{i}" for i in range(run.QUICK.n_layers)] + ["top"]
  for decay, run_curves in curves["runs"].items():
    peak = [max(run_curves["lr"][row]) for row in rows]
    assert peak[-1] == pytest.approx(run_curves["peak_lr"], rel=1e-3)
    expected = [peak[-1] * float(decay) ** (len(rows) - 1)]
    expected += [peak[-1] * float(decay) ** (len(rows) - 2 - i) for i in range(run.QUICK.n_layers)]
    assert peak == pytest.approx(expected + [peak[-1]], rel=2e-3)
    for row in rows:
      assert all(r > 0 for r in run_curves["update_ratio"][row][1:])  # step 1: lr 0, warm-up


def _check_shape(results, decays, n_seeds):
  assert [row["decay"] for row in results["table"]] == list(decays)
  for row in results["table"]:
    assert row["chosen_lr"] in results["config"]["peak_lrs"]
    assert len(row["test_accuracy"]) == row["n_seeds"] == n_seeds
    assert all(0 <= a <= 1 for a in row["test_accuracy"])
    assert row["mean"] == pytest.approx(np.mean(row["test_accuracy"]), abs=1e-3)
    assert row["sd"] == pytest.approx(np.std(row["test_accuracy"], ddof=1), abs=1e-3)
    # the chosen learning rate is the best of the grid on validation
    grid = results["validation_grid"][f"{row['decay']:g}"]
    best = max(grid, key=lambda lr: np.mean(grid[lr]))
    assert np.mean(grid[best]) == pytest.approx(np.mean(grid[f"{row['chosen_lr']:g}"]))
  assert set(results["layer_curves"]["runs"]) == {f"{d:g}" for d in decays}


def test_committed_full_run_has_the_documented_shape():
  path = COMMITTED / "results.json"
  if not path.exists():
    pytest.skip("the full run's results are not committed yet")
  results = json.loads(path.read_text())
  config = results["config"]
  assert config["decays"] == [1.0, 0.9, 0.75, 0.65]
  assert len(config["seeds"]) >= 5
  _check_shape(results, config["decays"], len(config["seeds"]))
  for name in ("accuracy.png", "layer_curves.png"):
    assert (COMMITTED / name).stat().st_size < 200_000


def test_the_train_step_logs_layer_metrics_curves():
  """The curves are what optax_adamwdl.layer_metrics logs inside the jitted, vmapped train step: its
  row names, and at each step each run's schedule(step) x the row's ratio from lr_ratios."""
  import dataclasses

  import jax
  from flax import nnx

  import optax_adamwdl
  from experiments.finetune import finetune
  from experiments.finetune.pretrain import new_model

  cfg = dataclasses.replace(run.QUICK, finetune_steps=8)
  corpus = data.load(cfg.length, vocab_size=cfg.vocab_size, val_per_class=8, test_per_class=8)
  encoder = nnx.state(new_model(cfg, len(cfg.packages), 5), nnx.Param)  # stands in for pre-trained
  trainer = finetune.Trainer(cfg, encoder)
  runs = [
    {"decay": 0.5, "peak_lr": 1e-2, "from_scratch": False},
    {"decay": 1.0, "peak_lr": 3e-3, "from_scratch": False},
    {"decay": 0.75, "peak_lr": 3e-2, "from_scratch": True},
  ]
  _, _, logged = trainer.train(0, runs, corpus)

  rows = ["bottom"] + [f"layer_{i}" for i in range(cfg.n_layers)] + ["top"]
  assert list(logged) == [f"{kind}/{row}" for kind in ("lr", "update_ratio") for row in rows]
  params = finetune.start_params(cfg, encoder, 0, from_scratch=False)
  ladder = dict(
    weight_decay=cfg.weight_decay, apply_decay_param_fun=finetune.no_decay_for_bias_and_scale
  )
  config = dict(learning_rate=1e-3, layerwise_decay=0.5, **ladder)
  tx = optax_adamwdl.adamwdl(**config)
  updates, opt_state = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
  assert list(optax_adamwdl.layer_metrics(**config)(params, updates, opt_state)) == list(logged)

  for i, r in enumerate(runs):
    ratios = optax_adamwdl.lr_ratios(params, r["decay"], **ladder)
    subtrees = {"bottom": ratios["embeddings"], "top": ratios["head"]}
    subtrees |= {f"layer_{j}": ratios["layers"][j] for j in range(cfg.n_layers)}
    sched = finetune.schedule(cfg, r["peak_lr"])
    for row in rows:
      (ratio,) = set(jax.tree.leaves(subtrees[row]))
      expected = [float(sched(t)) * ratio for t in range(cfg.finetune_steps)]
      assert logged[f"lr/{row}"][:, i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-12)
      moves = logged[f"update_ratio/{row}"][:, i]
      assert moves[0] == 0 and np.all(np.isfinite(moves)) and np.all(moves[1:] > 0)
