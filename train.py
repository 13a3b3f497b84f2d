"""Trains and evaluates one method of lfr_jax from a config preset.

Usage::

    python train.py --config=configs/mnist_lfr.py --workdir=runs/mnist_lfr
    python train.py --config=configs/mnist_lfr.py:quick --workdir=runs/q \\
        --config.lfr.lam=0.05 --config.optim.lr=0.1
    python train.py --workdir=runs/q     # resume (or report) a recorded run

The program lives in :mod:`lfr_jax.commands.train` (also installed as the
``lfr-train`` console script); ``--help`` lists its flags.
"""

from lfr_jax.commands.train import entry

if __name__ == "__main__":
  entry()
