"""The fine-tuning experiment: pre-train an encoder on the stdlib, fine-tune it with adamwdl per decay.

Run it with ``python -m experiments.finetune.run [--quick] [--out DIR]``; see docs/experiment.md.
"""
