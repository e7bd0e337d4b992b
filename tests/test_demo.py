"""The main job, ``python -m optax_adamwdl``, runs, prints the table and learns, with the fast step."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optax_adamwdl import adamwdl
from optax_adamwdl.demo import TransformerEncoder, make_train_step, most_frequent_token_task


@pytest.mark.slow
def test_demo_prints_the_table_and_learns_the_task():
  result = subprocess.run(
    [sys.executable, "-m", "optax_adamwdl", "--steps", "40"],
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  )
  out = result.stdout
  assert re.search(r"^bottom\s+embedding\s+0\.237305\s", out, flags=re.M)  # 0.75 ** 5
  assert re.search(r"^3\s+layer\s+0\.75\s", out, flags=re.M)  # the top layer: 0.75 ** 1
  assert re.search(r"^top\s+head\s+1\s", out, flags=re.M)
  losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
  assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0]
  accuracy = float(re.search(r"Held-out accuracy: (\d\.\d+)", out).group(1))
  assert accuracy > 0.6  # chance is 0.125


def test_demo_step_is_a_pure_jitted_function_that_donates_params_and_state():
  model = TransformerEncoder(8, 16, 8, dim=8, heads=2, n_layers=2, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = adamwdl(1e-2, layerwise_decay=0.75)
  opt_state = tx.init(params)
  old_param = jax.tree.leaves(params)[0]
  old_mu = jax.tree.leaves(optax.tree.get(opt_state, "mu"))[0]
  batch = most_frequent_token_task(np.random.default_rng(0), 4)
  params, opt_state, loss = make_train_step(graphdef, tx)(params, opt_state, rest, *batch)
  assert old_param.is_deleted() and old_mu.is_deleted()  # updated in place: no second copy
  assert jnp.isfinite(loss)
