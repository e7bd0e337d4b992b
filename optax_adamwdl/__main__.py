"""``python -m optax_adamwdl``: see :mod:`optax_adamwdl.demo`."""

if __name__ == "__main__":
  from optax_adamwdl.demo import main

  main()
