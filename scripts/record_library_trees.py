"""Record the parameter trees of real gemma, MaxText and EasyDeL models as small JSON fixtures.

gemma (>= 4), MaxText and EasyDeL need Python >= 3.12 and are heavy, so the tests of this repository
do not import them: this script builds each model once, with a tiny config and abstract weights
(``jax.eval_shape``, ``nnx.eval_shape``: shapes only, nothing downloaded, nothing allocated), and
writes ``<out>/<library>_<model>.json``:

* ``tree``: the parameter pytree as the library hands it to an optimizer, as nested JSON (dicts stay
  dicts with the library's keys, lists become lists, a leaf is ``{"shape": [...], "dtype": ...}``);
* ``order``: each leaf's key path, in the order the forward pass first reads it, from
  :func:`optax_adamwdl._trace.trace` (``jax.make_jaxpr`` of the forward pass, walked into called
  functions, loops and branches); leaves the pass never reads come last and ``notes`` names them;
* ``options``: the ``adamwdl`` options a user of that library passes (``scan_axes`` for MaxText's
  scanned stacks).

Recorded with Python 3.12.1 on CPU, in two virtual environments (EasyDeL pins ``flax==0.12.3`` and
``jax>=0.9.2``; MaxText wants ``flax>=0.12.9``, ``jax>=0.11.1``), from the repository root::

  # gemma 4.0.1 and MaxText 0.2.5, with jax 0.12.0.1 and flax 0.12.12
  python3.12 -m venv /work/py312
  /work/py312/bin/pip install gemma==4.0.1 "jax[cpu]==0.12.0.1" sentencepiece==0.2.1 -e .
  /work/py312/bin/pip install --no-deps maxtext==0.2.5
  /work/py312/bin/pip install omegaconf==2.4.0 pathwaysutils==0.1.13 qwix==0.1.8 aqtp==0.9.0 \
      tokamax==0.0.17 huggingface-hub==2.4.0 transformers==5.24.0 drjax==0.2.1 tiktoken==0.14.0 \
      sympy==1.14.0
  /work/py312/bin/python scripts/record_library_trees.py --out tests/fixtures/libraries \
      --only gemma maxtext

  # EasyDeL 0.3.0, with jax 0.9.2 and flax 0.12.3
  python3.12 -m venv /work/py312e
  /work/py312e/bin/pip install easydel==0.3.0 "jax[cpu]==0.9.2" pillow==13.0.0 -e .
  /work/py312e/bin/python scripts/record_library_trees.py --out tests/fixtures/libraries \
      --only easydel

Why the extras: sentencepiece 0.2.3 (gemma's latest) is generated for protobuf 7, while xmanager (a
dependency of gemma through kauldron) requires ``protobuf<7``; MaxText's wheel declares its dependencies
only under extras (``maxtext[tpu]`` pulls libtpu and the whole training stack), so the packages its
model code imports are installed by hand; EasyDeL imports PIL without declaring it. EasyDeL also
expects PyTorch for a few import-time patches of transformers' PyTorch classes: :func:`_import_easydel`
stands empty modules in for those instead of installing torch. ``optax_adamwdl._trace`` walks both
jax versions (0.12 spells a scan's operand counts ``ft_in``; 0.9 lacks
``jax.extend.core.jaxprs_in_params``).

Each ``record_*`` function builds one model; ``--only`` picks libraries (or single models by name).
"""

import argparse
import dataclasses
import functools
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from optax_adamwdl import _trace

# ------------------------------------------------------------------------------------------------
# Common: a traced tree to JSON
# ------------------------------------------------------------------------------------------------


def _pure(tree: Any) -> Any:
  """A flax nnx ``State`` as a pure dict; any other tree as it is."""
  to_pure = getattr(tree, "to_pure_dict", None)
  return to_pure() if callable(to_pure) else tree


def _key(entry: Any) -> str | int:
  if isinstance(entry, jax.tree_util.DictKey):
    return entry.key if isinstance(entry.key, int) else str(entry.key)
  if isinstance(entry, jax.tree_util.SequenceKey):
    return entry.idx
  if isinstance(entry, jax.tree_util.GetAttrKey):
    return entry.name
  raise TypeError(f"unexpected pytree key {entry!r}")


def _is_index_dict(node: Any) -> bool:
  """nnx keeps a list of layers as a dict keyed 0..n-1: JSON writes it as a list."""
  return (
    isinstance(node, Mapping)
    and len(node) > 0
    and all(isinstance(k, int) for k in node)
    and sorted(node) == list(range(len(node)))
  )


def _to_json(node: Any) -> Any:
  if _is_index_dict(node):
    return [_to_json(node[i]) for i in range(len(node))]
  if isinstance(node, Mapping):
    assert all(isinstance(k, str) for k in node), list(node)
    return {k: _to_json(v) for k, v in node.items()}
  if isinstance(node, list | tuple):
    return [_to_json(v) for v in node]
  return {"shape": [int(d) for d in node.shape], "dtype": str(jnp.dtype(node.dtype))}


def _has_index_dicts(node: Any) -> bool:
  if isinstance(node, Mapping):
    return _is_index_dict(node) or any(_has_index_dicts(v) for v in node.values())
  if isinstance(node, list | tuple):
    return any(_has_index_dicts(v) for v in node)
  return False


def _write(
  out: str,
  library: str,
  name: str,
  model: str,
  notes: str,
  forward: Callable,
  params: Any,
  inputs: tuple,
  options: dict,
  version: str | None = None,
) -> None:
  """Traces ``forward(params, *inputs)`` and writes ``<out>/<library>_<name>.json``."""
  tree, reads = _trace.trace(forward, params, inputs)
  pure = _pure(tree)
  flat = jax.tree_util.tree_flatten_with_path(pure)[0]
  assert len(flat) == len(reads.at), (len(flat), len(reads.at))
  if pure is not tree:  # an nnx State: its leaves and the pure dict's must line up one to one
    is_box = lambda k: isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value"  # a Variable
    state_paths = [
      tuple(_key(k) for k in path if not is_box(k))
      for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    assert state_paths == [tuple(_key(k) for k in path) for path, _ in flat]
  paths = [[_key(k) for k in path] for path, _ in flat]
  first = [min(at) if at else None for at in reads.at]
  read = sorted((p, i) for i, p in enumerate(first) if p is not None)
  unread = [i for i, p in enumerate(first) if p is None]
  order = [paths[i] for _, i in read] + [paths[i] for i in unread]
  dotted = lambda i: ".".join(str(k) for k in paths[i])
  notes += (
    " Order: first read of each leaf in the jaxpr of the forward pass (optax_adamwdl._trace);"
    " leaves read first by the same equation keep their pytree order."
  )
  if _has_index_dicts(pure):
    notes += " nnx's integer-keyed layer dicts (0..n-1) are written as JSON lists."
  notes += (
    f" Never read by the forward pass ({len(unread)}, listed last): "
    + (", ".join(dotted(i) for i in unread) if unread else "none")
    + "."
  )
  from flax import version as flax_version

  notes += f" Built with jax {jax.__version__} and flax {flax_version.__version__}."
  record = {
    "library": library,
    "version": version or importlib.metadata.version(library),
    "model": model,
    "python": platform.python_version(),
    "notes": notes,
    "tree": _to_json(pure),
    "order": order,
    "options": options,
  }
  path = os.path.join(out, f"{library}_{name}.json")
  with open(path, "w") as f:
    json.dump(record, f, separators=(",", ":"))
    f.write("\n")
  print(f"{path}: {len(flat)} leaves, {len(unread)} never read, {os.path.getsize(path)} bytes")


# ------------------------------------------------------------------------------------------------
# gemma (gm.nn, Flax linen): the `params` collection of `model.init`
# ------------------------------------------------------------------------------------------------


def _gemma_params(model: Any, *args: Any, **kwargs: Any) -> Any:
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))["params"]


def record_gemma2(out: str) -> None:
  from gemma import gm

  at = gm.nn.AttentionType
  config = dataclasses.replace(
    gm.nn.Gemma2_2B.config,
    num_embed=64,
    embed_dim=32,
    hidden_dim=64,
    num_heads=2,
    head_dim=16,
    num_kv_heads=1,
    attention_types=(at.LOCAL_SLIDING, at.GLOBAL) * 2,
    sliding_window_size=4,
  )
  model = gm.nn.Gemma2_2B(config=config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  _write(
    out,
    "gemma",
    "gemma2",
    "Gemma2_2B (tiny config: 4 layers, embed_dim 32, hidden_dim 64, 2 heads of 16, 1 kv head, vocab 64)",
    "gm.nn.Gemma2_2B(config=dataclasses.replace(Gemma2_2B.config, ...)), params of"
    " jax.eval_shape(model.init); forward model.apply({'params': p}, tokens[1, 8]). Unscanned:"
    " layer_{i} at the top level.",
    lambda p, tokens: model.apply({"params": p}, tokens),
    _gemma_params(model, tokens),
    (tokens,),
    {},
  )


def record_gemma3(out: str) -> None:
  from gemma import gm

  config = dataclasses.replace(
    gm.nn.Gemma3_1B.config,
    num_embed=64,
    embed_dim=32,
    hidden_dim=64,
    num_heads=2,
    head_dim=16,
    num_kv_heads=1,
    attention_types=gm.nn.config.make_attention_layers_types(
      gm.nn.config.GEMMA3_ATTENTION_PATTERN, num_layers=4
    ),
    sliding_window_size=4,
  )
  model = gm.nn.Gemma3_1B(config=config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  _write(
    out,
    "gemma",
    "gemma3",
    "Gemma3_1B (tiny config: 4 layers, embed_dim 32, hidden_dim 64, 2 heads of 16, 1 kv head, vocab 64;"
    " text only)",
    "gm.nn.Gemma3_1B(config=dataclasses.replace(Gemma3_1B.config, ...)), params of"
    " jax.eval_shape(model.init); forward model.apply({'params': p}, tokens[1, 8]). Unscanned:"
    " layer_{i} at the top level.",
    lambda p, tokens: model.apply({"params": p}, tokens),
    _gemma_params(model, tokens),
    (tokens,),
    {},
  )


def record_gemma3_siglip(out: str) -> None:
  from gemma import gm
  from gemma.gm.nn.vision import _vision, _vision_utils

  vision = _vision.SigLiPFromPatches(
    siglip_encoder=_vision_utils.ViTModel(
      patch_size=(4, 4), width=16, depth=2, mlp_dim=32, num_heads=2
    ),
    siglip_exit=_vision.VisionExit(output_length=4),
    num_mm_tokens_per_image_prepool=16,
    num_mm_tokens_per_image=4,
    image_height=16,
    image_width=16,
  )
  config = dataclasses.replace(
    gm.nn.Gemma3_4B.config,
    num_embed=64,
    embed_dim=32,
    hidden_dim=64,
    num_heads=2,
    head_dim=16,
    num_kv_heads=1,
    attention_types=gm.nn.config.make_attention_layers_types(
      gm.nn.config.GEMMA3_ATTENTION_PATTERN, num_layers=4
    ),
    sliding_window_size=4,
    vision_encoder=vision,
  )
  model = gm.nn.Gemma3_4B(config=config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  images = jnp.zeros((1, 1, 16, 16, 3), jnp.uint8)
  _write(
    out,
    "gemma",
    "gemma3_4b_siglip",
    "Gemma3_4B (tiny config: 4 text layers, embed_dim 32, hidden_dim 64, 2 heads of 16, 1 kv head,"
    " vocab 64; SigLIP 2 blocks, width 16, 16x16 images in 4x4 patches, 4 soft tokens)",
    "gm.nn.Gemma3_4B(config=dataclasses.replace(Gemma3_4B.config, ..., vision_encoder="
    "SigLiPFromPatches(ViTModel(depth=2, width=16, ...)))), params of jax.eval_shape(model.init) with"
    " tokens[1, 8] and images[1, 1, 16, 16, 3]; forward model.apply({'params': p}, tokens,"
    " images=images). Text layers layer_{i} at the top level beside"
    " vision_encoder.siglip_encoder.Transformer.encoderblock_{i}; the text embedder holds the"
    " multimodal projection (embedder.mm_*).",
    lambda p, tokens, images: model.apply({"params": p}, tokens, images=images),
    _gemma_params(model, tokens, images=images),
    (tokens, images),
    {},
  )


def record_gemma4_moe(out: str) -> None:
  from gemma import gm

  config = dataclasses.replace(
    gm.nn.Gemma4_26B_A4B.config,
    num_embed=64,
    embed_dim=32,
    hidden_dim=64,
    num_heads=2,
    head_dim=16,
    num_kv_heads=1,
    num_global_kv_heads=1,
    global_key_size=16,
    attention_types=gm.nn.config.make_attention_layers_types(
      gm.nn.Gemma4_26B_A4B.attention_pattern, num_layers=4
    )[:2]
    + (gm.nn.AttentionType.LOCAL_SLIDING, gm.nn.AttentionType.GLOBAL),
    sliding_window_size=4,
    num_experts=4,
    expert_dim=16,
    top_k_experts=2,
    moe_dense_hidden_dim=64,
    vision_encoder=None,
    audio_encoder=None,
  )
  model = gm.nn.Gemma4_26B_A4B(config=config)
  tokens = jnp.zeros((1, 8), jnp.int32)
  _write(
    out,
    "gemma",
    "gemma4_26b_a4b_moe",
    "Gemma4_26B_A4B (tiny config: 4 layers (local, local, local, global), embed_dim 32, 4 experts of 16"
    " (top 2) beside a dense MLP of 64, 2 heads of 16, vocab 64; text only, the default)",
    "gm.nn.Gemma4_26B_A4B(config=dataclasses.replace(Gemma4_26B_A4B.config, ...)), the gemma"
    " package's Gemma 4 Mixture-of-Experts model, text_only=True (its default: no vision or audio"
    " encoder); params of jax.eval_shape(model.init); forward model.apply({'params': p},"
    " tokens[1, 8]). Unscanned: layer_{i} at the top level.",
    lambda p, tokens: model.apply({"params": p}, tokens),
    _gemma_params(model, tokens),
    (tokens,),
    {},
  )


# ------------------------------------------------------------------------------------------------
# MaxText (NNX Transformer wrapped as linen, as its trainer uses it): the `params` collection
# ------------------------------------------------------------------------------------------------

_MAXTEXT_TINY = dict(
  base_emb_dim=32,
  base_num_query_heads=2,
  base_num_kv_heads=2,
  base_mlp_dim=64,
  head_dim=16,
  vocab_size=64,
  max_target_length=8,
  per_device_batch_size=1,
  attention="dot_product",
  dtype="float32",
  weight_dtype="float32",
  enable_checkpointing=False,
  skip_jax_distributed_system=True,
  run_name="record_library_trees",
  base_output_directory=os.path.join(tempfile.gettempdir(), "record_library_trees"),
)


def _maxtext(
  out: str, name: str, model_text: str, notes: str, stacks: tuple[str, ...], **overrides: Any
) -> None:
  from flax import linen as nn
  from maxtext.common.common_types import MODEL_MODE_TRAIN
  from maxtext.configs import pyconfig
  from maxtext.models import models
  from maxtext.utils import maxtext_utils
  from maxtext.utils.globals import MAXTEXT_CONFIGS_DIR

  settings = {**_MAXTEXT_TINY, **overrides}
  config = pyconfig.initialize(
    ["record", os.path.join(MAXTEXT_CONFIGS_DIR, "base.yml")], **settings
  )
  mesh = maxtext_utils.get_mesh_from_config(config)
  model = models.transformer_as_linen(config, mesh, quant=None, model_mode=MODEL_MODE_TRAIN)
  tokens = jnp.zeros((1, 8), jnp.int32)
  positions = jnp.arange(8, dtype=jnp.int32)[None]
  segments = jnp.ones((1, 8), jnp.int32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1), "aqt": jax.random.key(2)}
  boxed = jax.eval_shape(
    lambda: model.init(rngs, tokens, positions, segments, enable_dropout=False)
  )["params"]
  params = nn.meta.unbox(boxed)  # MaxText's trainer unboxes nn.LogicallyPartitioned

  def forward(p, tokens, positions, segments):
    return model.apply({"params": p}, tokens, positions, segments, enable_dropout=False)

  scanned = settings.get("scan_layers", True)
  axis = config.param_scan_axis
  options = {"scan_axes": {s: axis for s in stacks}} if scanned else {}
  fixed = {k: v for k, v in settings.items() if k not in _MAXTEXT_TINY}
  _write(
    out,
    "maxtext",
    name,
    model_text,
    "pyconfig.initialize(base.yml, "
    + ", ".join(
      f"{k}={v!r}"
      for k, v in {**_MAXTEXT_TINY, **fixed}.items()
      if k not in ("run_name", "base_output_directory")
    )
    + "); models.transformer_as_linen(config, mesh, quant=None, model_mode='train'); params of"
    " jax.eval_shape(model.init), unboxed (nn.meta.unbox) as MaxText's trainer holds them; forward"
    " model.apply({'params': p}, tokens[1, 8], positions, segment_ids, enable_dropout=False)."
    f" param_scan_axis={axis}. " + notes,
    forward,
    params,
    (tokens, positions, segments),
    options,
  )


def record_maxtext_default(out: str, scanned: bool) -> None:
  _maxtext(
    out,
    "default_scanned" if scanned else "default_unscanned",
    f"default decoder block ({'scanned' if scanned else 'unscanned'}; tiny config: 4 layers, emb 32,"
    " mlp 64, 2 heads of 16, vocab 64)",
    (
      "Scanned: decoder.layers holds all 4 layers on axis 1 (param_scan_axis)."
      if scanned
      else "Unscanned: decoder.layers_{i}."
    ),
    ("layers",),
    decoder_block="default",
    base_num_decoder_layers=4,
    scan_layers=scanned,
  )


def record_maxtext_gemma3(out: str, scanned: bool) -> None:
  _maxtext(
    out,
    "gemma3_scanned" if scanned else "gemma3_unscanned",
    f"gemma3 decoder block ({'scanned' if scanned else 'unscanned'}; model_name gemma3-4b with a tiny"
    " config: 8 layers, emb 32, mlp 64, 2 heads of 16, vocab 64, text only)",
    (
      "Scanned: Gemma 3's attention pattern (5 local, 1 global) makes a block of 6 layers,"
      " decoder.layers holds 8 // 6 = 1 such block on axis 1 (its layers are"
      " decoder.layers.layers_{0..5}), and the 8 % 6 = 2 left over are unscanned in"
      " decoder.layers_remainder.layers_{0,1}. The embedding is tied (logits_via_embedding)."
      if scanned
      else "Unscanned: decoder.layers_{i}. The embedding is tied (logits_via_embedding)."
    ),
    ("layers",),
    model_name="gemma3-4b",
    override_model_config=True,
    base_num_decoder_layers=8,
    scan_layers=scanned,
    sliding_window_size=4,
    use_multimodal=False,
  )


def record_maxtext_deepseek(out: str, scanned: bool) -> None:
  _maxtext(
    out,
    "deepseek_scanned" if scanned else "deepseek_unscanned",
    f"deepseek decoder block ({'scanned' if scanned else 'unscanned'}; model_name deepseek3-tiny"
    " made tinier: 4 layers, the first dense, 3 MoE with 4 routed experts (top 2) and 1 shared;"
    " MLA attention; emb 32, vocab 64)",
    (
      "Scanned: decoder.dense_layers (1 layer on axis 1) then decoder.moe_layers (3 layers on axis 1)."
      if scanned
      else "Unscanned: decoder.dense_layers_0, then decoder.moe_layers_{0,1,2} (MoE layers count"
      " from 0 again)."
    ),
    ("dense_layers", "moe_layers"),
    model_name="deepseek3-tiny",
    override_model_config=True,
    base_num_decoder_layers=4,
    first_num_dense_layers=1,
    scan_layers=scanned,
    base_moe_mlp_dim=16,
    num_experts=4,
    num_experts_per_tok=2,
    q_lora_rank=16,
    kv_lora_rank=8,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=8,
  )


# ------------------------------------------------------------------------------------------------
# EasyDeL (flax nnx): nnx.state(model, nnx.Param) as a pure dict
# ------------------------------------------------------------------------------------------------


def _import_easydel() -> Any:
  """EasyDeL 0.3.0 imports all its model modules; six of them patch PyTorch classes of transformers
  at import, which without torch are transformers' placeholders that raise. Those transformers
  modules are PyTorch-only and unused by EasyDeL's JAX models: stand in empty modules for them."""
  for name in ("dbrx", "glm4v_moe", "llama4", "phimoe", "qwen3_5_moe", "qwen3_next"):
    package = importlib.import_module(f"transformers.models.{name}")
    setattr(package, f"modeling_{name}", types.ModuleType(f"modeling_{name}"))
  import easydel

  return easydel


def _easydel(
  out: str,
  name: str,
  model_text: str,
  notes: str,
  cls_name: str,
  config: Any,
  inputs: dict[str, Any],
  output: str,
  call: Callable | None = None,
) -> None:
  ed = _import_easydel()
  from flax import nnx

  cls = getattr(ed, cls_name)
  model = nnx.eval_shape(
    lambda: cls(config=config, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  )
  names = list(inputs)

  def forward(model, *arrays):
    with config.mesh:  # EasyDeL shards its activations against the config's mesh
      run = model if call is None else functools.partial(call, model)
      return getattr(run(**dict(zip(names, arrays))), output)

  _write(
    out,
    "easydel",
    name,
    model_text,
    f"easydel.{cls_name}(config, dtype=float32, param_dtype=float32, rngs=nnx.Rngs(0)) under"
    " nnx.eval_shape; tree: nnx.state(model, nnx.Param).to_pure_dict(); forward: "
    + ("model" if call is None else call.__name__)
    + "("
    + ", ".join(f"{k}={v.dtype}{list(v.shape)}" for k, v in inputs.items())
    + f").{output}, traced on nnx.split(model, nnx.Param, ...). "
    + notes,
    forward,
    model,
    tuple(inputs.values()),
    {},
  )


def record_easydel_llama(out: str) -> None:
  ed = _import_easydel()
  config = ed.LlamaConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=64,
  )
  _easydel(
    out,
    "llama",
    "LlamaForCausalLM (tiny config: 4 layers, hidden 32, intermediate 64, 2 heads of 16, 1 kv head,"
    " vocab 64, untied lm_head)",
    "Unscanned (scan_layers=False, the default): model.layers.{i} (an nnx list of layers).",
    "LlamaForCausalLM",
    config,
    {"input_ids": jnp.zeros((1, 8), jnp.int32)},
    "logits",
  )


def record_easydel_qwen3(out: str) -> None:
  ed = _import_easydel()
  config = ed.Qwen3Config(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=64,
    tie_word_embeddings=False,
  )
  _easydel(
    out,
    "qwen3",
    "Qwen3ForCausalLM (tiny config: 4 layers, hidden 32, intermediate 64, 2 heads of 16, 1 kv head,"
    " vocab 64, untied lm_head)",
    "Unscanned (the default): model.layers.{i}; q_norm/k_norm inside self_attn.",
    "Qwen3ForCausalLM",
    config,
    {"input_ids": jnp.zeros((1, 8), jnp.int32)},
    "logits",
  )


def record_easydel_clip(out: str) -> None:
  ed = _import_easydel()
  config = ed.CLIPConfig(
    text_config=dict(
      vocab_size=64,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=2,
      max_position_embeddings=8,
      projection_dim=16,
    ),
    vision_config=dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=2,
      image_size=16,
      patch_size=4,
      projection_dim=16,
    ),
    projection_dim=16,
  )
  _easydel(
    out,
    "clip",
    "CLIPModel (tiny config: text and vision towers of 2 layers each, hidden 32, 2 heads, vocab 64,"
    " 16x16 images in 4x4 patches, projection 16)",
    "A dual encoder: text_model.encoder.layers.{i} and vision_model.encoder.layers.{i}, then"
    " text_projection, visual_projection and logit_scale; forward reads the vision tower first.",
    "CLIPModel",
    config,
    {
      "input_ids": jnp.zeros((1, 8), jnp.int32),
      "pixel_values": jnp.zeros((1, 3, 16, 16), jnp.float32),
    },
    "logits_per_image",
    call=clip_forward,
  )


def clip_forward(model: Any, input_ids: Any, pixel_values: Any) -> Any:
  """``CLIPModel.__call__`` of EasyDeL 0.3.0, step for step, less the ``attention_mask`` it passes to
  ``CLIPTextTransformer.__call__``, which takes none (a TypeError there, and in
  ``get_text_features``); the text tower builds its causal mask from ``mask_info=None``."""
  from easydel.modules.clip.modeling_clip import CLIPOutput

  position_ids = jnp.ones_like(input_ids).cumsum(-1) - 1
  vision_outputs = model.vision_model(pixel_values=pixel_values)
  text_outputs = model.text_model(input_ids=input_ids, mask_info=None, position_ids=position_ids)
  image_embeds = model.visual_projection(vision_outputs[1])
  text_embeds = model.text_projection(text_outputs[1])
  image_embeds = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
  text_embeds = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
  logits_per_text = jnp.matmul(text_embeds, image_embeds.T) * jnp.exp(model.logit_scale)
  return CLIPOutput(
    logits_per_image=logits_per_text.T,
    logits_per_text=logits_per_text,
    text_embeds=text_embeds,
    image_embeds=image_embeds,
    text_model_output=text_outputs,
    vision_model_output=vision_outputs,
  )


def record_easydel_gemma3_vlm(out: str) -> None:
  ed = _import_easydel()
  image_token = 60
  config = ed.Gemma3Config(
    text_config=dict(
      vocab_size=64,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=4,
      num_attention_heads=2,
      num_key_value_heads=1,
      head_dim=16,
      max_position_embeddings=64,
      sliding_window=4,
    ),
    vision_config=dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=2,
      image_size=16,
      patch_size=4,
      vision_use_head=False,  # as in Hugging Face's Gemma 3 configs: no pooling head
    ),
    mm_tokens_per_image=4,
    boi_token_index=61,
    eoi_token_index=62,
    image_token_id=image_token,
  )
  ids = jnp.array([[2, 61, image_token, image_token, image_token, image_token, 62, 3]], jnp.int32)
  _easydel(
    out,
    "gemma3_vlm",
    "Gemma3ForConditionalGeneration (tiny config: 4 text layers, hidden 32, 2 heads of 16, 1 kv"
    " head, vocab 64; SigLIP vision tower of 2 layers, hidden 32, 16x16 images in 4x4 patches,"
    " 4 tokens per image)",
    "A vision-language model: the SigLIP tower (model.vision_tower.vision_model.encoder.layers.{i},"
    " no pooling head), model.multi_modal_projector, then the Gemma 3 text model"
    " (model.language_model.layers.{i}) and an untied lm_head; the forward pass reads them in that"
    f" order. input_ids hold 4 image tokens (id {image_token}) between begin/end-of-image ids 61"
    " and 62.",
    "Gemma3ForConditionalGeneration",
    config,
    {"input_ids": ids, "pixel_values": jnp.zeros((1, 3, 16, 16), jnp.float32)},
    "logits",
  )


RECORDERS: dict[str, tuple[str, Callable[[str], None]]] = {
  "gemma2": ("gemma", record_gemma2),
  "gemma3": ("gemma", record_gemma3),
  "gemma3_4b_siglip": ("gemma", record_gemma3_siglip),
  "gemma4_26b_a4b_moe": ("gemma", record_gemma4_moe),
  "maxtext_default_scanned": ("maxtext", lambda out: record_maxtext_default(out, True)),
  "maxtext_default_unscanned": ("maxtext", lambda out: record_maxtext_default(out, False)),
  "maxtext_gemma3_scanned": ("maxtext", lambda out: record_maxtext_gemma3(out, True)),
  "maxtext_gemma3_unscanned": ("maxtext", lambda out: record_maxtext_gemma3(out, False)),
  "maxtext_deepseek_scanned": ("maxtext", lambda out: record_maxtext_deepseek(out, True)),
  "maxtext_deepseek_unscanned": ("maxtext", lambda out: record_maxtext_deepseek(out, False)),
  "easydel_llama": ("easydel", record_easydel_llama),
  "easydel_qwen3": ("easydel", record_easydel_qwen3),
  "easydel_clip": ("easydel", record_easydel_clip),
  "easydel_gemma3_vlm": ("easydel", record_easydel_gemma3_vlm),
}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="tests/fixtures/libraries")
  parser.add_argument(
    "--only", nargs="*", help="libraries (gemma, maxtext, easydel) or model names"
  )
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  for name, (library, record) in RECORDERS.items():
    if not args.only or library in args.only or name in args.only:
      print(f"== {name}", file=sys.stderr, flush=True)
      record(args.out)


if __name__ == "__main__":
  main()
