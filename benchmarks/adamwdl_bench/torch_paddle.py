"""What a PyTorch or Paddle worker runs: their AdamW on the same tree, ratios and decay, alone.

torch and paddle are optional: each is imported inside the job that uses it, in its own worker,
so that a missing one is a "not run" row (and the JAX processes never import them).
"""

import os

import numpy as np

from adamwdl_bench.problems import LR, TREES, WD, bert_shapes, decays, layer_ratios
from adamwdl_bench.timing import median_time, peak_rss_mib
from adamwdl_bench.workers import available


def torch_step(kind: str, tree: str, warmup: int, repeats: int, backend: str) -> dict:
  """PyTorch's AdamW, one param group per (ratio, decay) as timm builds them; CUDA on a GPU."""
  import torch  # optional: may be missing (a "not run" row)

  on_gpu = backend == "gpu"
  if on_gpu and not torch.cuda.isavailable():
    raise RuntimeError(f"torch {torch.__version__} has no CUDA")
  device = "cuda" if on_gpu else "cpu"
  if not on_gpu:
    torch.set_num_threads(os.cpu_count())
  shapes = bert_shapes(**TREES[tree])
  ratios = layer_ratios(shapes)
  gen = torch.Generator(device).manual_seed(0)
  params = {}
  for k, s in shapes.items():
    params[k] = torch.nn.Parameter(0.02 * torch.randn(s, generator=gen, device=device))
    params[k].grad = 1e-3 * torch.randn(s, generator=gen, device=device)
  groups = {}
  for k, p in params.items():
    groups.setdefault((ratios[k], WD if decays(k) else 0.0), []).append(p)
  param_groups = [dict(params=ps, lr=LR * r, weight_decay=wd) for (r, wd), ps in groups.items()]
  options = {"torch foreach": dict(foreach=True), "torch fused": dict(fused=True)}[kind]
  opt = torch.optim.AdamW(param_groups, lr=LR, **options)

  def step():
    opt.step()
    if on_gpu:
      torch.cuda.synchronize()

  seconds = median_time(step, warmup, repeats)
  n = sum(p.numel() for p in params.values())
  state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
  return dict(
    seconds=seconds,
    n=n,
    bytes_per_param=28,
    param_bytes=4 * n,
    state_bytes=sum(t.numel() * t.element_size() for t in state if t.dim()),
    state_scalars=sum(1 for t in state if not t.dim()),
    peak_rss_mib=peak_rss_mib(),
    peak_device_mib=torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
  )


def paddle_step(kind: str, tree: str, warmup: int, repeats: int, backend: str) -> dict:
  """Paddle's AdamW, each parameter's ratio as its ``learning_rate`` attribute (CPU)."""
  import paddle  # optional: may be missing (a "not run" row)

  paddle.set_device("cpu")
  shapes = bert_shapes(**TREES[tree])
  ratios = layer_ratios(shapes)
  rng = np.random.default_rng(0)
  params = []
  for k, s in shapes.items():
    attr = paddle.ParamAttr(name=k, learning_rate=ratios[k])
    p = paddle.create_parameter(list(s), "float32", attr=attr)
    p.set_value((0.02 * rng.standard_normal(s)).astype(np.float32))
    params.append(p)
  loss = sum(
    (p * paddle.to_tensor((1e-3 * rng.standard_normal(p.shape)).astype(np.float32))).sum()
    for p in params
  )
  loss.backward()  # the gradients stay in place; each timed call is one optimizer step
  opt = paddle.optimizer.AdamW(LR, parameters=params, weight_decay=WD, apply_decay_param_fun=decays)
  n = sum(int(np.prod(s)) for s in shapes.values())
  seconds = median_time(opt.step, warmup, repeats)
  return dict(seconds=seconds, n=n, bytes_per_param=28, peak_rss_mib=peak_rss_mib())


JOBS = {"torch foreach": torch_step, "torch fused": torch_step, "paddle AdamW": paddle_step}


def jobs_here(backend: str) -> list[str]:
  """The kinds that can run here: torch where it is installed, paddle on the CPU."""
  torch = ["torch foreach", "torch fused"] if available("torch") else []
  return torch + (["paddle AdamW"] if available("paddle") and backend == "cpu" else [])
