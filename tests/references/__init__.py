"""Independent float64 references for the attack and regularizer tests.

Nothing here imports ``lfr_jax``. :mod:`tiny_models` holds three small models
(linear, a softplus MLP, a ReLU CNN) written in NumPy with their input
gradients and Hessian-vector products by hand, plus the same forward in
``jax.numpy`` for the code under test. :mod:`maths` holds the losses and
their logit gradients; :mod:`attacks_np` and :mod:`auto_pgd_np` restate the
attacks' update rules, :mod:`regularizers_np` the regularizers' formulas,
each citing its source; :mod:`torch_peers` runs torchattacks and advertorch's
DDN rules on the same models with the same random draws.
"""
