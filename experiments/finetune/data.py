"""Offline data: the Python standard library's own source, as word tokens.

Tokens: runs of letters, runs of digits, and single punctuation characters (``get_event_loop`` is
``get event loop``); the vocabulary is the most frequent tokens of the pre-training text, the rest is
``UNK``.

Pre-training text: every ``.py`` file of the standard library outside its test suites, except the files
that the downstream task validates or tests on. Downstream task: name the standard-library package a
snippet of source comes from (``asyncio``, ``email``, ...), learned from a few labelled snippets per
package. Each package's files are split into train, validation and test *by file*, so no evaluation
snippet shares a file with a training snippet or with the pre-training text.

Everything is deterministic: files are listed sorted, assigned to splits by a hash of their path, and
snippets are drawn with fixed NumPy seeds. The stdlib differs between Python versions, so the results
record the version and a fingerprint of the file lists.
"""

import collections
import dataclasses
import functools
import hashlib
import pathlib
import re
import sys
import sysconfig

import numpy as np

PAD, MASK, UNK = 0, 1, 2  # then the vocabulary, most frequent first
_TOKEN = re.compile(rb"[A-Za-z]+|\d+|[^\sA-Za-z0-9_]")
PACKAGES = ("asyncio", "email", "importlib", "multiprocessing", "unittest", "xml")
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
SHARES = {"train": 0.5, "val": 0.25, "test": 0.25}  # of each package's bytes


def stdlib_root() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: pathlib.Path | None = None) -> list[str]:
  """Paths (relative to the stdlib, sorted) of its ``.py`` files outside test suites."""
  root = root or stdlib_root()
  files = []
  for path in root.rglob("*.py"):
    rel = path.relative_to(root)
    if not _SKIP_PARTS & set(rel.parts):
      files.append(rel.as_posix())
  return sorted(files)


def _hash(text: str) -> int:
  return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")


def split_package_files(files: list[str], sizes: dict[str, int]) -> dict[str, list[str]]:
  """Assigns one package's files to train / val / test: about half, a quarter, a quarter of its bytes.

  Each file, in the order of a hash of its path, goes to the split furthest below its share of the
  package's bytes. Deterministic, and independent of the order ``files`` comes in.
  """
  total = sum(sizes[f] for f in files)
  got = {name: 0 for name in SHARES}
  out = {name: [] for name in SHARES}
  for f in sorted(files, key=lambda f: (_hash(f), f)):
    name = max(SHARES, key=lambda n: SHARES[n] * total - got[n])  # ties: the first of SHARES
    out[name].append(f)
    got[name] += sizes[f]
  return {name: sorted(v) for name, v in out.items()}


@dataclasses.dataclass
class Corpus:
  """The pre-training tokens and the downstream task's snippets."""

  pretrain: np.ndarray  # int32 token ids, all pre-training files concatenated
  pretrain_offsets: np.ndarray  # (files, 2): each file's start and length in ``pretrain``
  pretrain_files: list  # the files of ``pretrain``, in its order
  vocab: list  # the vocabulary's tokens (bytes), id 3 onwards
  splits: dict  # package -> {"train"|"val"|"test": [relative paths]}
  snippets: dict  # "train"|"val"|"test" -> (tokens int32 (n, length), labels int32 (n,), files)
  fingerprint: str
  python: str


def _windows(ids: np.ndarray, length: int) -> np.ndarray:
  n = len(ids) // length
  return ids[: n * length].reshape(n, length)


@functools.lru_cache(maxsize=2)
def _tokenized(root: pathlib.Path) -> tuple[tuple[str, ...], dict, dict]:
  """The stdlib's files, their sizes and their tokens (read once per process)."""
  files = tuple(stdlib_files(root))
  tokens = {}
  sizes = {}
  for f in files:
    raw = (root / f).read_bytes()
    sizes[f] = len(raw)
    tokens[f] = _TOKEN.findall(raw)
  return files, sizes, tokens


def load(
  length: int,
  *,
  vocab_size: int,
  val_per_class: int,
  test_per_class: int,
  packages: tuple[str, ...] = PACKAGES,
  root: pathlib.Path | None = None,
) -> Corpus:
  """Reads the stdlib and builds the corpus; the same arguments give the same arrays."""
  root = root or stdlib_root()
  files, sizes, tokenized = _tokenized(root)
  splits = {}
  for package in packages:
    own = [f for f in files if f.split("/")[0] == package]
    if len(own) < 3:
      raise ValueError(f"package {package!r} has {len(own)} files; the split needs at least 3")
    splits[package] = split_package_files(own, sizes)
  held_out = {f for s in splits.values() for f in s["val"] + s["test"]}
  pretrain_files = [f for f in files if f not in held_out]
  counts = collections.Counter(t for f in pretrain_files for t in tokenized[f])
  vocab = sorted(counts, key=lambda t: (-counts[t], t))[: vocab_size - 3]
  index = {t: i + 3 for i, t in enumerate(vocab)}

  def ids(f):
    return np.asarray([index.get(t, UNK) for t in tokenized[f]], np.int32)

  pieces = [ids(f) for f in pretrain_files]
  pretrain = np.concatenate(pieces)
  lengths = np.asarray([len(p) for p in pieces])
  offsets = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1)
  raw = {f: ids(f) for s in splits.values() for fs in s.values() for f in fs}

  snippets = {}
  per_class = {"train": None, "val": val_per_class, "test": test_per_class}
  for k, split in enumerate(("train", "val", "test")):
    rng = np.random.default_rng(1000 + k)
    tokens, labels, sources = [], [], []
    for label, package in enumerate(packages):
      windows, names = [], []
      for f in splits[package][split]:
        w = _windows(raw[f], length)
        windows.append(w)
        names += [f] * len(w)
      windows = np.concatenate(windows)
      take = per_class[split]
      if take is not None:
        if len(windows) < take:
          raise ValueError(f"{package} {split}: {len(windows)} snippets, {take} wanted")
        idx = np.sort(rng.choice(len(windows), take, replace=False))
        windows, names = windows[idx], [names[i] for i in idx]
      tokens.append(windows)
      labels.append(np.full(len(windows), label))
      sources += names
    snippets[split] = (
      np.concatenate(tokens).astype(np.int32),
      np.concatenate(labels).astype(np.int32),
      sources,
    )
  fingerprint = hashlib.sha1(
    repr((files, sizes, splits, length, vocab_size, val_per_class, test_per_class)).encode()
  ).hexdigest()[:12]
  return Corpus(
    pretrain, offsets, pretrain_files, vocab, splits, snippets, fingerprint, sys.version.split()[0]
  )


def labelled_subset(corpus: Corpus, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``per_class`` labelled training snippets of each package, drawn with ``seed``."""
  tokens, labels, _ = corpus.snippets["train"]
  rng = np.random.default_rng(seed)
  idx = np.concatenate(
    [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
  )
  return tokens[idx], labels[idx]


def mask_tokens(
  rng: np.random.Generator, original: np.ndarray, vocab_size: int, mask_rate: float = 0.15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """BERT's masking (80% MASK, 10% a random token, 10% kept) of ``round(mask_rate * length)`` positions.

  The same number of positions is chosen in every window, so the loss is computed on a fixed-shape
  gather. Returns the corrupted tokens, the chosen positions and the original tokens there.
  """
  batch, length = original.shape
  k = max(round(mask_rate * length), 1)
  positions = np.argsort(rng.random((batch, length)), axis=1)[:, :k].astype(np.int32)
  targets = np.take_along_axis(original, positions, axis=1)
  roll = rng.random((batch, k))
  random_tokens = rng.integers(3, vocab_size, (batch, k))
  replace = np.where(roll < 0.8, MASK, np.where(roll < 0.9, random_tokens, targets))
  tokens = original.copy()
  np.put_along_axis(tokens, positions, replace.astype(np.int32), axis=1)
  return tokens, positions, targets


def pretrain_batch(
  rng: np.random.Generator, corpus: "Corpus", pairs: int, length: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Two non-overlapping windows from each of ``pairs`` distinct pre-training files, then masked.

  Rows ``2i`` and ``2i + 1`` come from the same file (the contrastive objective's positive pair).
  """
  starts, lengths = corpus.pretrain_offsets.T
  eligible = np.flatnonzero(lengths >= 2 * length)
  files = rng.choice(eligible, pairs, replace=False)
  n = lengths[files]
  a = (rng.random(pairs) * (n - 2 * length + 1)).astype(np.int64)
  b = a + length + (rng.random(pairs) * (n - a - 2 * length + 1)).astype(np.int64)
  swap = rng.random(pairs) < 0.5
  a, b = np.where(swap, b, a), np.where(swap, a, b)
  first = np.stack([starts[files] + a, starts[files] + b], axis=1).reshape(-1)
  original = corpus.pretrain[first[:, None] + np.arange(length)].astype(np.int32)
  return mask_tokens(rng, original, vocab_size)
