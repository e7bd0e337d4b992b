"""AdamW with layer-wise learning-rate decay (Paddle's AdamWDL) for optax."""

from optax_adamwdl.alias import adamwdl
from optax_adamwdl.clipping import clip_by_norm, clip_by_value
from optax_adamwdl.layers import layer_id, layerwise_lr_decay
from optax_adamwdl.layerwise import ScaleByLayerwiseLrState, lr_ratios, scale_by_layerwise_lr
from optax_adamwdl.lazy import update_nonzero_rows
from optax_adamwdl.names import param_names
from optax_adamwdl.precision import MasterWeightsState, with_master_weights
from optax_adamwdl.table import LrTable, lr_table

__all__ = [
  "LrTable",
  "MasterWeightsState",
  "ScaleByLayerwiseLrState",
  "adamwdl",
  "clip_by_norm",
  "clip_by_value",
  "layer_id",
  "layerwise_lr_decay",
  "lr_ratios",
  "lr_table",
  "param_names",
  "scale_by_layerwise_lr",
  "update_nonzero_rows",
  "with_master_weights",
]

__version__ = "0.1.0"
