"""lr_table: grouping, counts and printing."""

import jax
import numpy as np

from optax_adamwdl import lr_table
from tests import model_trees, reference


def test_rows_follow_the_ladder_and_count_parameters():
  shapes = reference.bert_paddle_names(3)
  params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  table = lr_table(params, 0.5)
  assert [r.layer for r in table.rows] == ["embedding", "0", "1", "2", "other"]
  assert [r.ratio for r in table.rows] == [0.0625, 0.125, 0.25, 0.5, 1.0]
  per_layer = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("encoder.layers.0."))
  assert table.rows[1].n_params == per_layer
  assert sum(r.n_params for r in table.rows) == sum(int(np.prod(s)) for s in shapes.values())
  assert sum(r.n_tensors for r in table.rows) == len(shapes)


def test_works_on_shapes_without_arrays():
  params, _ = model_trees.big_vision_vit(2)
  assert isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
  table = lr_table(params, 0.75)
  assert [r.layer for r in table.rows] == ["embedding", "0", "1", "other"]


def test_a_custom_rule_splits_a_group_by_ratio():
  params = {"layers": [{"w": np.zeros(2), "b": np.zeros(3)}], "head": np.zeros(1)}
  table = lr_table(params, 0.5, set_param_lr_fun=lambda d, n, name: d if name.endswith("b") else 1)
  assert [(r.layer, r.ratio, r.n_params) for r in table.rows] == [
    ("0", 0.5, 3),
    ("0", 1.0, 2),
    ("other", 1.0, 1),
  ]


def test_prints_as_an_aligned_table():
  text = str(lr_table({"embed": np.zeros(1000), "layers": [np.zeros(5)], "head": np.zeros(2)}, 0.5))
  lines = text.splitlines()
  assert lines[0].split() == ["layer", "lr", "ratio", "params", "tensors"]
  assert lines[2].split() == ["embedding", "0.25", "1,000", "1"]
  assert lines[-1].split() == ["total", "1,007", "3"]
  assert len({len(line) for line in lines}) == 1
  assert repr(lr_table({"layers": [np.zeros(1)]}, 0.5)) == str(
    lr_table({"layers": [np.zeros(1)]}, 0.5)
  )
