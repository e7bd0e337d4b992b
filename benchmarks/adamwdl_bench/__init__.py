"""Optimizer benchmarks on any JAX backend: step time, bandwidth, memory, compile time, a whole step.

  python benchmarks/bench.py           # CPU: BERT-base and BERT-large trees -> benchmarks/results.*
                                       # GPU: + a 1.3B tree and device time -> benchmarks/results-gpu.*
  python benchmarks/bench.py --quick   # tiny sizes, about a minute: a smoke test (the test suite
                                       # runs it) -> benchmarks/results-quick.* (git-ignored), or --out

Method. The JAX configurations of a table (optax.adamw, adamwdl, multi_transform,
the floor, the bf16 ones) are held warm in one worker process and timed in
turn: a round takes one jitted, donated step of each, in a rotating order, so
that all of them meet the same load from the machine's other tenants. Two
ratios are printed: the ratio of the medians in the row, and the median (with
quartiles) of the per-round ratios, paired by round. When memory allows, a
second worker holds steps compiled with XLA:CPU's multi-output fusion (CPU
only), timed in the same rounds; the ``single_pass`` rows wrap the optimizer in
``optax_adamwdl.single_pass`` explicitly. For its peak memory (RSS; device
memory where JAX reports it), each configuration also takes two steps in a
process of its own, untimed. PyTorch's ``AdamW`` (one param group per layer
ratio and decay, as timm builds them; on CUDA when JAX runs on a GPU) and
Paddle's (CPU only) are timed alone: median of a few steps after a warm-up.

Per call, a step pays its dispatch (on a GPU, ~1 ms for ~800 buffers at
BERT-base). ``--device-time`` (the default on a GPU) also runs N steps inside
one jit with ``lax.fori_loop``, so that dispatch is paid once, and compares that
device time per step with the floor: the bytes the step must move at the
bandwidth of a measured device copy (read + write). On the CPU the floor is a
triad ``a += s*b*c`` over the same tree, timed in the same rounds.

The end-to-end section times a whole fine-tuning step of the package's demo
``TransformerEncoder`` (forward, backward, optimizer) written two ways: the
demo's own pure ``jax.jit`` step over the ``nnx.split`` state with donation
(Flax's performance guidance) and ``nnx.jit`` with ``nnx.Optimizer``.

The modules: ``problems`` (the trees, the optimizers and the one step they take),
``workers`` (the processes), ``timing`` (rounds in turn, paired ratios),
``jax_steps`` and ``torch_paddle`` (what a worker runs), ``floors`` (the triad and
the device copy), one module per comparison (``step``, ``precision``,
``compile_time``, ``train_step``), ``tables`` and ``report`` (the output), and
``cli`` (the command).
"""
