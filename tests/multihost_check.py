"""Train, checkpoint and restore adamwdl in several processes joined by ``jax.distributed``.

Run by test_distributed.py, in two processes on one machine (loopback only), each with two CPU devices:

  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 \
    python -m tests.multihost_check 127.0.0.1:PORT 2 PROCESS_ID DIRECTORY

Every process runs the same program over a global 2 x 2 mesh ("data" across the processes, "model"
within each): SPLIT steps, an orbax checkpoint of the parameters and the optimizer state in DIRECTORY,
a restore into a fresh abstract target with the same shardings, and STEPS - SPLIT more steps. Each
process writes the gathered values to DIRECTORY/result_PROCESS_ID.npz; the test compares them with
:func:`one_process`, the same steps on one device. The optimizer has float32 master weights for the
bfloat16 leaves and freezes the lowest layers, so its state holds ``optax.MaskedNode`` s (the float32
leaves' masters, the frozen leaves' moments): the hard case for building a restore target.

The gradients are exact whatever the sharding (a mean of small integers over the batch, which is split
across the processes, plus an element-wise term), and the update is element-wise: the runs must agree
bit for bit.
"""

import os
import pathlib
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_adamwdl import adamwdl

STEPS, SPLIT, BATCH, DEPTH = 6, 3, 8, 3


def make_tx():
  # Ratios 1 (head), 0.5, 0.25, 0.125 (layers 2, 1, 0), 0.0625 (embeddings): freeze_below=0.2 freezes
  # layer 0 and the embeddings, which keep no moments; the float32 leaves keep no master copy.
  return adamwdl(
    0.05, weight_decay=0.1, layerwise_decay=0.5, freeze_below=0.2, multi_precision=True
  )


def init_params():
  """Host (numpy) values, the same in every process."""
  rng = np.random.default_rng(0)
  bf16 = lambda *shape: rng.normal(size=shape).astype(jnp.bfloat16)
  f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return {
    "embeddings": {"weight": bf16(16, 8)},
    "encoder": {"layers": [{"w": bf16(8, 8), "b": f32(8)} for _ in range(DEPTH)]},
    "head": {"w": f32(8, 4), "b": f32(4)},
  }


def batch(t, params):
  """Step t's inputs: for each parameter, BATCH small integers per entry."""
  rng = np.random.default_rng(100 + t)
  return jax.tree.map(
    lambda p: rng.integers(-3, 4, size=(BATCH, *p.shape)).astype(np.float32), params
  )


def loss_fn(params, inputs):
  def term(p, x):
    p = p.astype(jnp.float32)
    linear = jnp.mean(jnp.sum(x * p, axis=tuple(range(1, x.ndim))))  # gradient: mean of x, exact
    return linear + 0.5 * jnp.sum(jnp.square(p - 0.5))

  return sum(jax.tree.leaves(jax.tree.map(term, params, inputs)))


def make_step(tx, **jit_kwargs):
  def step(params, state, inputs):
    updates, state = tx.update(jax.grad(loss_fn)(params, inputs), state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1), **jit_kwargs)


def named(tree):
  """{key path: float32 numpy array} for the leaves of a pytree of host arrays."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(x, np.float32) for path, x in flat}


def one_process():
  """The reference: all steps on one device, uninterrupted. {'saved/...': step SPLIT, 'final/...'}."""
  tx = make_tx()
  step = make_step(tx)
  params = jax.tree.map(jnp.asarray, init_params())
  state = tx.init(params)
  out = {}
  for t in range(STEPS):
    if t == SPLIT:
      out |= {f"saved/{k}": v for k, v in named({"params": params, "opt_state": state}).items()}
    params, state = step(params, state, batch(t, params))
  out |= {f"final/{k}": v for k, v in named({"params": params, "opt_state": state}).items()}
  return out


def param_spec(x):
  """Matrices over both axes (rows over "data", so across the processes), vectors over "model"."""
  return P("data", "model") if x.ndim == 2 else P("model")


def input_spec(x):
  """The batch axis over "data" (across the processes), a parameter's last axis over "model"."""
  return P("data", *[None] * (x.ndim - 2), "model")


def abstract_of(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def global_array(x, sharding):
  """A global jax.Array from a host value that every process holds in full."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def state_shardings(tx, params, param_sharding, mesh):
  """The moments and master copies like their parameters, the step count replicated."""
  return optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    jax.eval_shape(tx.init, params),
    param_sharding,
    transform_non_params=lambda _: NamedSharding(mesh, P()),
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )


def restore_target(tx, params, param_sharding, state_sharding):
  """The abstract {"params", "opt_state"}: shapes, dtypes and shardings, and the state's MaskedNodes.

  `params` may be arrays or jax.ShapeDtypeStruct; nothing is allocated.
  """
  abstract_params = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, param_sharding
  )
  init = jax.jit(tx.init, out_shardings=state_sharding)
  return {"params": abstract_params, "opt_state": jax.eval_shape(init, abstract_params)}


def restore_target_by_hand(tx, params, param_sharding, mesh):
  """The same target, built leaf by leaf: MaskedNodes are kept as they are."""
  masked = lambda x: isinstance(x, optax.MaskedNode)
  abstract = lambda x, s: x if masked(x) else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  abstract_params = jax.tree.map(abstract, abstract_of(params), param_sharding)
  opt_state = optax.tree_map_params(
    tx,
    abstract,
    jax.eval_shape(tx.init, abstract_params),
    param_sharding,
    transform_non_params=lambda x: abstract(x, NamedSharding(mesh, P())),
    is_leaf=masked,
  )
  return {"params": abstract_params, "opt_state": opt_state}


def gathered(tree):
  """Every process gets the global values (a collective: all processes must call it)."""
  from jax.experimental import multihost_utils

  return named(multihost_utils.process_allgather(tree, tiled=True))


def several_processes(coordinator, num_processes, process_id, directory):
  # Gloo carries the collectives between the processes' CPU devices (the default in jax 0.10), on
  # the address of the host name (127.0.0.1 where it maps there). The coordinator listens on its
  # own address only (jax's default binds every interface).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator,
    num_processes,
    process_id,
    cluster_detection_method="deactivate",  # no SLURM / MPI environment is read
    initialization_timeout=120,
    heartbeat_timeout_seconds=30,
    coordinator_bind_address=coordinator,
  )
  assert jax.process_count() == num_processes, jax.process_count()
  assert jax.device_count() == 2 * num_processes == 2 * jax.local_device_count(), jax.devices()
  mesh = Mesh(np.array(jax.devices()).reshape(num_processes, 2), ("data", "model"))
  tx = make_tx()

  host_params = init_params()
  param_sharding = jax.tree.map(lambda x: NamedSharding(mesh, param_spec(x)), host_params)
  params = jax.tree.map(global_array, host_params, param_sharding)
  state_sharding = state_shardings(tx, params, param_sharding, mesh)
  state = jax.jit(tx.init, out_shardings=state_sharding)(params)
  step = make_step(tx, out_shardings=(param_sharding, state_sharding))

  def train(params, state, steps):
    for t in steps:
      inputs = jax.tree.map(
        lambda x: global_array(x, NamedSharding(mesh, input_spec(x))), batch(t, host_params)
      )
      params, state = step(params, state, inputs)
    return params, state

  params, state = train(params, state, range(SPLIT))
  saved = gathered({"params": params, "opt_state": state})

  # Every process saves (its own shards) to the same path; orbax waits for all of them.
  path = pathlib.Path(directory) / f"step{SPLIT}"
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {"params": params, "opt_state": state})
  del params, state

  # A fresh target, as a restarted job builds it: shapes, dtypes and shardings, no arrays.
  target = restore_target(tx, abstract_of(host_params), param_sharding, state_sharding)
  by_hand = restore_target_by_hand(tx, host_params, param_sharding, mesh)
  assert jax.tree.structure(by_hand) == jax.tree.structure(target)
  assert jax.tree.leaves(by_hand) == jax.tree.leaves(target)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, target)
  assert jax.tree.structure(restored) == jax.tree.structure(target)
  for array, abstract in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert array.dtype == abstract.dtype and array.sharding == abstract.sharding, (array, abstract)
  params, state = restored["params"], restored["opt_state"]
  restored = gathered(restored)

  params, state = train(params, state, range(SPLIT, STEPS))
  final = gathered({"params": params, "opt_state": state})
  np.savez(
    pathlib.Path(directory) / f"result_{process_id}.npz",
    **{f"saved/{k}": v for k, v in saved.items()},
    **{f"restored/{k}": v for k, v in restored.items()},
    **{f"final/{k}": v for k, v in final.items()},
  )
  jax.distributed.shutdown()


if __name__ == "__main__":
  coordinator, num_processes, process_id, directory = sys.argv[1:]
  try:
    several_processes(coordinator, int(num_processes), int(process_id), directory)
  except BaseException:
    # Exit now: a normal exit would wait in jax.distributed's shutdown barrier for the others.
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
