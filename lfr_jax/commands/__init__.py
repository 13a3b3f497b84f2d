"""The command-line programs: ``train.py`` / ``lfr-train`` and ``evaluate.py`` / ``lfr-evaluate``.

Each module's ``entry()`` defines its absl flags (importing a module defines
none) and runs the program through :func:`lfr_jax.cli.main` (one-line user
errors, exit status 2). The repository's ``train.py`` and ``evaluate.py`` and
the installed console scripts call the same ``entry()``::

    lfr-train --config=mnist_lfr:quick --workdir=runs/mnist_lfr_quick
    lfr-evaluate --workdir=runs/mnist_lfr_quick --config.eval.num_examples=500

Example::

    from lfr_jax.commands import evaluate, train
    train.PROG, evaluate.PROG                # ('train.py', 'evaluate.py')
"""
