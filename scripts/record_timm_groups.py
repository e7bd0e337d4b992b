"""Records what timm's ``param_groups_layer_decay`` gives each parameter of a few timm models.

The output, ``tests/fixtures/recipes/timm_vit.json``, lets ``tests/test_recipes.py`` check
``optax_adamwdl.recipes.timm`` against timm without timm installed. Per model it holds the
arguments given to ``param_groups_layer_decay`` and, per parameter in ``named_parameters()``
order, its name, shape, ``lr_scale`` and ``weight_decay`` (a parameter that ``no_opt_scale``
froze is in no group: it is recorded with ``lr_scale`` 0 and ``frozen`` true).

Run it in an environment with timm and torch (torchvision is not needed: see
:func:`torchvision_stand_in`)::

  python -m venv /tmp/timmvenv
  /tmp/timmvenv/bin/pip install torch timm --no-deps huggingface_hub safetensors pyyaml pillow numpy
  /tmp/timmvenv/bin/python scripts/record_timm_groups.py

The test runs :func:`record` itself when timm can be imported, and compares the recipe with it.
"""

import contextlib
import importlib.abc
import importlib.machinery
import json
import pathlib
import sys
import types

OUT = (
  pathlib.Path(__file__).resolve().parent.parent
  / "tests"
  / "fixtures"
  / "recipes"
  / "timm_vit.json"
)

# (key, timm model, create_model keyword arguments, param_groups_layer_decay arguments).
# The ViT family is what recipes.timm restates (its group_matcher); ConvNeXt and Swin nest
# blocks in stages and are recorded to compare with the default ladder.
MODELS = [
  ("vit_token_head", "vit_tiny_patch16_224", dict(depth=3), dict(layer_decay=0.75)),
  (
    "vit_avg_fc_norm_reg4",
    "vit_tiny_patch16_224",
    dict(depth=2, reg_tokens=4, global_pool="avg"),
    dict(layer_decay=0.65, min_scale=0.3),
  ),
  (
    "vit_no_opt_scale",
    "vit_tiny_patch16_224",
    dict(depth=4),
    dict(layer_decay=0.5, no_opt_scale=0.1, weight_decay=0.1),
  ),
  (
    "vit_no_head",
    "vit_tiny_patch16_224",
    dict(depth=2, num_classes=0),
    dict(layer_decay=0.75),
  ),
  (
    "vit_min_scale_above_decay",
    "vit_tiny_patch16_224",
    dict(depth=2),
    dict(layer_decay=0.2, min_scale=0.3),
  ),
  (
    "vit_all_frozen_but_head",
    "vit_tiny_patch16_224",
    dict(depth=2),
    dict(layer_decay=0.2, min_scale=0.3, no_opt_scale=0.35),
  ),
  ("deit_distilled", "deit_tiny_distilled_patch16_224", dict(depth=2), dict(layer_decay=0.75)),
  (
    "beit",
    "beit_base_patch16_224",
    dict(depth=2, embed_dim=64, num_heads=2),
    dict(layer_decay=0.8),
  ),
  ("convnext", "convnext_atto", dict(depths=(1, 1, 2, 1)), dict(layer_decay=0.8)),
  ("swin", "swin_tiny_patch4_window7_224", dict(depths=(1, 1, 2, 1)), dict(layer_decay=0.8)),
]


class _Anything(type):
  def __getattr__(cls, name):
    return _Anything(name, (), {})


class _StandIn(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Anything(name, (), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, fullname, path, target=None):
    if fullname == "torchvision" or fullname.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _StandIn(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    if module.__name__ == "torchvision.ops.misc":
      import torch

      class FrozenBatchNorm2d(torch.nn.Module):  # named at import time; never built here
        pass

      module.FrozenBatchNorm2d = FrozenBatchNorm2d


@contextlib.contextmanager
def torchvision_stand_in():
  """Lets ``import timm`` work without torchvision, inside the ``with`` block.

  timm imports torchvision at package level (``FrozenBatchNorm2d`` in its norm layers,
  transforms in ``timm.data``) but neither model creation nor ``param_groups_layer_decay``
  uses it. PyPI's torchvision wheels are built against one torch release each, so beside
  another torch they fail to import; where torchvision does not import, this stand-in answers
  every attribute with a placeholder class. On exit it is removed again (the finder and the
  stand-in modules), so that nothing imported later in the process mistakes it for
  torchvision; the timm modules already imported keep working.
  """
  try:
    import torchvision  # noqa: F401

    works = True
  except Exception:
    works = False
    _forget_torchvision()
  if works:
    yield
    return
  finder = _Finder()
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)
    _forget_torchvision()


def _forget_torchvision() -> None:
  for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
    del sys.modules[name]


def record() -> dict:
  """Builds each model of ``MODELS`` and returns what timm's parameter groups give it."""
  with torchvision_stand_in():
    import timm
    import torch
    from timm.optim._param_groups import param_groups_layer_decay

    torch.manual_seed(0)
    models = {}
    for key, name, create_kwargs, group_kwargs in MODELS:
      model = timm.create_model(name, pretrained=False, **create_kwargs)
      no_weight_decay = sorted(getattr(model, "no_weight_decay", lambda: set())())
      kwargs = {"weight_decay": 0.05, "no_weight_decay_list": no_weight_decay, **group_kwargs}
      named = list(model.named_parameters())
      groups = param_groups_layer_decay(model, **kwargs)
      by_id = {}
      for group in groups:
        for p in group["params"]:
          by_id[id(p)] = (group["lr_scale"], group["weight_decay"])
      params = []
      for pname, p in named:
        frozen = id(p) not in by_id
        lr_scale, wd = by_id.get(id(p), (0.0, 0.0))
        params.append(
          dict(
            name=pname,
            shape=list(p.shape),
            lr_scale=float(lr_scale),
            weight_decay=float(wd),
            frozen=frozen,
          )  # fmt: skip
        )
      models[key] = dict(model=name, create_model=create_kwargs, param_groups_layer_decay=kwargs,
                         params=params)  # fmt: skip
    return dict(timm=timm.__version__, torch=torch.__version__, models=models)


def main() -> None:
  data = record()
  OUT.parent.mkdir(parents=True, exist_ok=True)
  OUT.write_text(json.dumps(data, indent=1) + "\n")
  counts = {k: len(v["params"]) for k, v in data["models"].items()}
  print(f"timm {data['timm']}, torch {data['torch']}: wrote {OUT} {counts}")


if __name__ == "__main__":
  main()
