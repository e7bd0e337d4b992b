"""The main job, ``python -m optax_adamwdl``, runs, prints the table and learns."""

import re
import subprocess
import sys


def test_demo_prints_the_table_and_learns_the_task():
  result = subprocess.run(
    [sys.executable, "-m", "optax_adamwdl", "--steps", "80"],
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  )
  out = result.stdout
  assert re.search(r"^embedding\s+0\.237305\s", out, flags=re.M)  # 0.75 ** 5
  assert re.search(r"^3\s+0\.75\s", out, flags=re.M)
  losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
  assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0]
  accuracy = float(re.search(r"Held-out accuracy: (\d\.\d+)", out).group(1))
  assert accuracy > 0.6  # chance is 0.125
