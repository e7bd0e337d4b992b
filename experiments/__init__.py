"""Experiments that use optax_adamwdl; not part of the installed package."""
