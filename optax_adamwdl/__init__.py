"""AdamW with layer-wise learning-rate decay (Paddle's AdamWDL) for optax.

The design, top down: :func:`adamwdl` (``_alias``) is an ``optax.chain`` of
optax's Adam, decay and learning-rate pieces and :func:`scale_by_layerwise_lr`
(``_scale``), whose ratios come from the ladder: ``_ladder_options`` (the
options, validated once), ``_names`` (pytree paths to dotted names),
``_layers`` (a name's site: layer, embedding, stem, head), ``_stacks`` (sites,
stacks and depths of a whole tree; ``_series``: which lists run in series) and
``_ladder`` (the pipeline from a tree to one placement and ratio per leaf). Paddle's extras are
wrappers that compose around any optax optimizer: ``_lazy``
(:func:`update_nonzero_rows`), ``_master`` (:func:`with_master_weights`),
``_clipping``; ``_fusion`` (:func:`single_pass`) is an opt-in CPU trick,
``_multipliers`` and ``_decay`` add ``lr_mults``/``wd_mults`` and the decay
mask, :mod:`optax_adamwdl.recipes` holds published recipes as configurations,
``_table`` reads the ladder (:func:`lr_table`), ``_metrics`` logs it
(:func:`layer_metrics`) and ``_check`` checks it
against the model's forward pass (:func:`check_ladder`).
"""

from optax_adamwdl import recipes
from optax_adamwdl._alias import adamwdl
from optax_adamwdl._check import check_ladder
from optax_adamwdl._clipping import clip_by_norm, clip_by_value
from optax_adamwdl._fusion import single_pass
from optax_adamwdl._ladder import Placement
from optax_adamwdl._layers import layerwise_lr_decay
from optax_adamwdl._lazy import update_nonzero_rows
from optax_adamwdl._master import MasterWeightsState, with_master_weights
from optax_adamwdl._metrics import layer_metrics
from optax_adamwdl._names import param_names
from optax_adamwdl._order import LadderCheck, LadderProblem, SharedParameter
from optax_adamwdl._scale import scale_by_layerwise_lr
from optax_adamwdl._table import LrTable, LrTableRow, lr_placements, lr_ratios, lr_table

__all__ = [
  "LadderCheck",
  "LadderProblem",
  "LrTable",
  "LrTableRow",
  "MasterWeightsState",
  "Placement",
  "SharedParameter",
  "adamwdl",
  "check_ladder",
  "clip_by_norm",
  "clip_by_value",
  "layer_metrics",
  "layerwise_lr_decay",
  "lr_placements",
  "lr_ratios",
  "lr_table",
  "param_names",
  "recipes",
  "scale_by_layerwise_lr",
  "single_pass",
  "update_nonzero_rows",
  "with_master_weights",
]

__version__ = "0.2.0"
