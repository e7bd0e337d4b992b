"""lr_table, lr_placements and lr_ratios (``_table``): grouping, counts, rules and printing."""

import jax
import numpy as np

from optax_adamwdl import LrTableRow, Placement, lr_placements, lr_ratios, lr_table
from tests import model_trees, reference


def test_rows_follow_the_ladder_and_count_parameters():
  shapes = reference.bert_paddle_names(3)
  params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  table = lr_table(params, 0.5)
  assert all(isinstance(r, LrTableRow) for r in table.rows)
  assert [r.layer for r in table.rows] == ["bottom", "0", "1", "2", "top"]
  assert [r.ratio for r in table.rows] == [0.0625, 0.125, 0.25, 0.5, 1.0]
  assert [r.rule for r in table.rows] == ["embedding", "layer", "layer", "layer", "head"]
  assert {r.stack for r in table.rows} == {""}  # one stack: the whole model
  assert table.unrecognised == ()
  per_layer = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("encoder.layers.0."))
  assert table.rows[1].n_params == per_layer
  assert sum(r.n_params for r in table.rows) == sum(int(np.prod(s)) for s in shapes.values())
  assert sum(r.n_tensors for r in table.rows) == len(shapes)


def test_works_on_shapes_without_arrays():
  params, _ = model_trees.big_vision_vit(2)
  assert isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
  table = lr_table(params, 0.75)
  assert [r.layer for r in table.rows] == ["bottom", "0", "1", "top"]


def test_a_custom_rule_splits_a_group_by_ratio():
  params = {"layers": [{"w": np.zeros(2), "b": np.zeros(3)}], "head": np.zeros(1)}
  table = lr_table(params, 0.5, set_param_lr_fun=lambda d, n, name: d if name.endswith("b") else 1)
  assert [(r.layer, r.ratio, r.n_params, r.rule) for r in table.rows] == [
    ("0", 0.5, 3, "custom"),
    ("0", 1.0, 2, "custom"),
    ("top", 1.0, 1, "custom"),
  ]


def test_unrecognised_names_get_the_head_ratio_and_are_listed():
  params = {"embed": np.zeros(2), "layers": [np.zeros(2)], "head": np.zeros(2), "misc": np.zeros(3)}
  table = lr_table(params, 0.5, head_ratio=2.0)
  assert table.unrecognised == ("misc",)
  assert [(r.layer, r.ratio, r.n_params, r.rule) for r in table.rows[-2:]] == [
    ("top", 2.0, 2, "head"),
    ("top", 2.0, 3, "unrecognised"),
  ]
  assert lr_ratios(params, 0.5, head_ratio=2.0)["misc"] == 2.0


def _assert_aligned(lines):
  """Every line of the table has its columns where the dashed rule line puts them."""
  rule = lines[1]
  gaps = [i for i, c in enumerate(rule) if c == " "]
  assert set(rule) == {"-", " "} and gaps
  assert len({len(line) for line in lines}) == 1  # numbers are right-aligned to the same edge
  for line in lines:
    assert all(line[i] == " " for i in gaps), line


def test_prints_as_an_aligned_table():
  params = {"embed": np.zeros(1000), "layers": [np.zeros(5)], "head": np.zeros(2)}
  lines = str(lr_table(params, 0.5)).splitlines()
  assert lines[0].split() == ["layer", "rule", "lr", "ratio", "params", "tensors"]
  assert lines[2].split() == ["bottom", "embedding", "0.25", "1,000", "1"]
  assert lines[-1].split() == ["total", "1,007", "3"]
  _assert_aligned(lines)
  assert repr(lr_table({"layers": [np.zeros(1)]}, 0.5)) == str(
    lr_table({"layers": [np.zeros(1)]}, 0.5)
  )


def test_prints_a_stack_column_and_the_unrecognised_names():
  params = {
    "img": {"embedding": np.zeros(2), "blocks": [np.zeros(2)] * 3},
    "txt": {"token_embedding": np.zeros(2), "layers": [np.zeros(2)] * 2},
    "logit_scale": np.zeros(()),
    "misc": np.zeros(4),
  }
  lines = str(lr_table(params, 0.5)).splitlines()
  assert lines[0].split() == ["stack", "layer", "rule", "lr", "ratio", "params", "tensors"]
  assert lines[2].split() == ["img", "bottom", "embedding", "0.0625", "2", "1"]
  assert lines[-1] == "not recognised (given the head ratio): misc"
  _assert_aligned(lines[:-1])


def test_placements_say_where_and_why():
  params = {
    "img": {"embedding": np.zeros(2), "blocks": [np.zeros(2)] * 3},
    "txt": {"token_embedding": np.zeros(2), "layers": [np.zeros(2)] * 2},
    "logit_scale": np.zeros(()),
  }
  placed = lr_placements(params, 0.5)
  assert jax.tree.structure(placed, is_leaf=lambda x: isinstance(x, Placement)) == (
    jax.tree.structure(params)
  )
  # (name, stack, position on the ladder, ratio, rule)
  assert tuple(placed["img"]["embedding"])[:5] == (
    "img.embedding",
    "img",
    "bottom",
    0.0625,
    "embedding",
  )
  assert tuple(placed["img"]["blocks"][2])[:5] == ("img.blocks.2", "img", 2, 0.5, "layer")
  assert tuple(placed["txt"]["layers"][0])[:5] == ("txt.layers.0", "txt", 0, 0.25, "layer")
  assert tuple(placed["logit_scale"])[:5] == ("logit_scale", None, "top", 1.0, "head")  # outside
  ratios = jax.tree.leaves(lr_ratios(params, 0.5))
  assert [p.ratio for p in jax.tree.leaves(placed, is_leaf=lambda x: isinstance(x, Placement))] == (
    ratios
  )


def test_scanned_lists_in_series_are_labelled_by_their_steps_on_the_ladder():
  """MaxText's DeepSeek decoder: one scanned dense layer, then three scanned MoE layers (one
  ladder in series): the MoE slices are steps 1-3, in the table and in the metrics."""
  tree = {
    "decoder": {
      "dense_layers": {"mlp": {"wi": np.zeros((4, 1, 8))}, "norm": {"scale": np.zeros((4, 1))}},
      "moe_layers": {"mlp": {"wi": np.zeros((4, 3, 8))}, "norm": {"scale": np.zeros((4, 3))}},
      "decoder_norm": {"scale": np.zeros(4)},
    },
    "token_embedder": {"embedding": np.zeros((10, 4))},
  }
  scan_axes = {"dense_layers": 1, "moe_layers": 1}
  table = lr_table(tree, 0.5, scan_axes=scan_axes)
  assert [(r.layer, r.ratio) for r in table.rows] == [
    ("bottom", 0.5**5), ("0", 0.5**4), ("1", 0.5**3), ("2", 0.5**2), ("3", 0.5), ("top", 1.0)
  ]  # fmt: skip
  placed = lr_placements(tree, 0.5, scan_axes=scan_axes)
  assert placed["decoder"]["moe_layers"]["mlp"]["wi"].first_step == 1
