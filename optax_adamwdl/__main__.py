"""``python -m optax_adamwdl``: see :mod:`optax_adamwdl.demo`."""

from optax_adamwdl.demo import main

main()
