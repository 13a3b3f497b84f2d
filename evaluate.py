"""Robustness table, gradient-masking checks and geometry figures of checkpoints.

Usage::

    python evaluate.py --workdir=runs/mnist_lfr
    python evaluate.py --workdir=runs/lfr,runs/trades --out=runs/compare
    python evaluate.py --torch_checkpoint=model.pt --model=small_cnn

The program lives in :mod:`lfr_jax.commands.evaluate` (also installed as the
``lfr-evaluate`` console script); ``--help`` lists its flags.
"""

from lfr_jax.commands.evaluate import entry

if __name__ == "__main__":
  entry()
