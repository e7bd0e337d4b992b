"""The default ladder follows each real model family's depth (Hugging Face Flax models).

The trees and their depth annotation are in tests/model_families.py; the
annotation is written from the architectures, not from optax_adamwdl's rules.
The contract, per tower (stack), for a decay a:
- every "bottom" parameter (embeddings, stems, pre-norms) gets at most the
  smallest layer ratio of its tower; one outside every tower, at most the
  smallest layer ratio of all;
- a block's parameters share one ratio; the ratios rise with the depth, one
  ladder step a per block (per stage with stage_wise=True), and the top block
  gets a**1: each tower has its own ladder;
- every "top" parameter (final norms, poolers, heads) gets head_ratio;
- every name is recognised by some rule.
"""

import jax
import pytest

from optax_adamwdl import lr_ratios, lr_table
from tests.model_families import EXPECTED, FAMILIES, NESTED_STAGES

DECAY = 0.5
ALL = list(FAMILIES)
FLAT = [f for f in ALL if f not in NESTED_STAGES]


def _names(tree):
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(path, simple=True, separator=".") for path, _ in paths]


def _placed(family, **options):
  """(name, tower, kind, index, ratio) for every parameter of ``family``."""
  tree = FAMILIES[family]()
  ratios = jax.tree.structure(tree).flatten_up_to(lr_ratios(tree, DECAY, **options))
  return [(n, *EXPECTED[family](n), float(r)) for n, r in zip(_names(tree), ratios)]


def _towers(placed):
  return sorted({tower for _, tower, kind, _, _ in placed if kind == "layer"})


def _of(placed, kind, tower):
  """{name: ratio} of the ``kind`` parameters of ``tower``."""
  return {name: r for name, t, k, _, r in placed if k == kind and t == tower}


def _ladder(placed, tower, key=lambda index: index):
  """[(block, ratio)] in depth order, a block grouped by ``key`` of its index.

  Checks that all the parameters of a block share one ratio.
  """
  blocks = {}
  for name, t, kind, index, ratio in placed:
    if t == tower and kind == "layer":
      blocks.setdefault(key(index), {})[name] = ratio
  ladder = []
  for block, named in sorted(blocks.items()):
    assert len(set(named.values())) == 1, f"{tower!r} block {block} has several ratios: {named}"
    ladder.append((block, next(iter(named.values()))))
  return ladder


@pytest.mark.parametrize("family", ALL)
def test_annotation_covers_every_parameter(family):
  # The annotation alone (no optax_adamwdl): every name annotated, blocks numbered 0..n-1.
  annotated = [EXPECTED[family](name) for name in _names(FAMILIES[family]())]
  towers = {t for t, kind, _ in annotated if kind == "layer"}
  assert towers and None not in towers
  for tower in towers:
    indices = sorted({i for t, kind, i in annotated if t == tower and kind == "layer"})
    if family in NESTED_STAGES:
      stages = sorted({s for s, _ in indices})
      assert stages == list(range(len(stages)))
      for stage in stages:
        blocks = [b for s, b in indices if s == stage]
        assert blocks == list(range(len(blocks)))
    else:
      assert indices == list(range(len(indices)))


@pytest.mark.parametrize("family", ALL)
def test_bottom_is_below_every_layer(family):
  placed = _placed(family)
  for tower in _towers(placed):
    lowest = min(_of(placed, "layer", tower).values())
    above = {n: r for n, r in _of(placed, "bottom", tower).items() if r > lowest}
    assert not above, f"{tower!r}: bottom above the lowest layer ({lowest}): {above}"
  lowest = min(r for _, _, kind, _, r in placed if kind == "layer")
  above = {n: r for n, r in _of(placed, "bottom", None).items() if r > lowest}
  assert not above, f"outside the towers: bottom above the lowest layer ({lowest}): {above}"


@pytest.mark.parametrize("family", ALL)
def test_layers_rise_one_step_per_block_to_decay(family):
  # Nested stages: one step per block counted across stages (stage-major) by default.
  placed = _placed(family)
  for tower in _towers(placed):
    ladder = _ladder(placed, tower)
    ratios = [r for _, r in ladder]
    assert ratios == sorted(set(ratios)), f"{tower!r}: not rising with the depth: {ladder}"
    assert ratios[-1] == DECAY, f"{tower!r}: the top block is not at decay**1: {ladder}"
    steps = [DECAY ** (len(ladder) - k) for k in range(len(ladder))]
    assert ratios == steps, f"{tower!r}: not one ladder step per block: {ladder}"


@pytest.mark.parametrize("family", NESTED_STAGES)
def test_stage_wise_takes_one_step_per_stage(family):
  placed = _placed(family, stage_wise=True)
  (tower,) = _towers(placed)
  ladder = _ladder(placed, tower, key=lambda index: index[0])  # one ratio per stage
  ratios = [r for _, r in ladder]
  assert ratios == [DECAY ** (len(ladder) - s) for s in range(len(ladder))], ladder
  assert max(_of(placed, "bottom", tower).values()) <= ratios[0]
  assert set(_of(placed, "top", tower).values()) == {1.0}


@pytest.mark.parametrize("head_ratio", [1.0, 3.0])
@pytest.mark.parametrize("family", ALL)
def test_top_gets_the_head_ratio(family, head_ratio):
  placed = _placed(family, head_ratio=head_ratio)
  top = {n: r for n, _, kind, _, r in placed if kind == "top"}
  assert top
  wrong = {n: r for n, r in top.items() if r != head_ratio}
  assert not wrong, f"top parameters without head_ratio={head_ratio}: {wrong}"
  if head_ratio != 1.0:  # head_ratio moves the heads only
    default = {n: r for n, _, kind, _, r in _placed(family) if kind != "top"}
    assert {n: r for n, _, kind, _, r in placed if kind != "top"} == default


def _exact(family, decay=DECAY, n_layers=3):
  """The one-convention ladder: bottom a**(L+1), layer i a**(L-i), top 1."""
  want = {}
  for name in _names(FAMILIES[family]()):
    _, kind, index = EXPECTED[family](name)
    want[name] = {"bottom": decay ** (n_layers + 1), "top": 1.0}.get(kind)
    if kind == "layer":
      want[name] = decay ** (n_layers - index)
  return want


@pytest.mark.parametrize(
  "family", ["bert_seqcls", "bert_mlm", "bert_pretraining", "vit", "gpt2", "llama"]
)
def test_exact_ladder(family):
  got = {name: r for name, *_, r in _placed(family)}
  assert got == _exact(family)


def test_albert_shared_group_is_one_layer():
  # Its 3 hidden layers run through one shared group: a 1-layer stack.
  got = {name: r for name, *_, r in _placed("albert_mlm")}
  assert got == _exact("albert_mlm", n_layers=1)
  assert sorted(set(got.values())) == [0.25, 0.5, 1.0]


@pytest.mark.parametrize("family", ALL)
def test_every_name_is_recognised(family):
  assert lr_table(FAMILIES[family](), DECAY).unrecognised == ()


def test_the_recognised_names_page_is_generated_from_the_rule():
  """docs/_generated/recognised_names.md is what docs/names_table.py writes from the rule today."""
  import pathlib
  import runpy

  generator = runpy.run_path(str(pathlib.Path(__file__).parent.parent / "docs" / "names_table.py"))
  page = generator["PAGE"]
  assert page.read_text() == generator["render"](), (
    "docs/_generated/recognised_names.md is out of date: run python docs/names_table.py"
  )
