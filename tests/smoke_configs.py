"""The smoke config that the whole-loop tests shrink further.

Example::

    from smoke_configs import smoke
    config = smoke("mnist_lfr", lfr__lam=0.5)  # section__key=value overrides
"""


def smoke(preset="mnist_standard", **overrides):
  """``configs/<preset>.py:smoke`` evaluated on 16 images, with overrides.

  Args:
    preset: a preset module name under ``configs``.
    **overrides: ``section__key=value`` settings.

  Returns:
    The ConfigDict.
  """
  module = __import__(f"configs.{preset}", fromlist=["get_config"])
  config = module.get_config("smoke")
  config.eval.test_examples = config.eval.val_examples = 16
  config.eval.batch_size = 16
  for field, value in overrides.items():
    section, key = field.split("__")
    config[section][key] = value
  return config
