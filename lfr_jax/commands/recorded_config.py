"""A run's recorded ``config.json`` as an ml_collections config file.

``train.py --workdir=DIR`` without ``--config`` resumes with the config the
run recorded, and ``--config=DIR/config.json`` names it explicitly: both
become ``--config=<this file>:DIR/config.json``, so ``--config.a.b=value``
overrides apply to it as to any preset. JSON lists become tuples, as the
presets write them.

Example::

    import json, os, tempfile
    from lfr_jax.commands import recorded_config
    path = os.path.join(tempfile.mkdtemp(), "config.json")
    with open(path, "w") as f:
      json.dump({"seed": 0, "optim": {"decay_epochs": [90.0]}}, f)
    config = recorded_config.get_config(path)
    config.optim.decay_epochs                # (90.0,)
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath
import ml_collections


def _tuples(value: Any) -> Any:
  """JSON's lists as the tuples the presets use, recursively."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def get_config(path: str) -> ml_collections.ConfigDict:
  """The config recorded in ``path`` (a workdir's config.json).

  Raises:
    ValueError: the file is missing, is not JSON, or holds no JSON object.
  """
  if not path:
    raise ValueError("give the recorded config's path: "
                     "--config=<workdir>/config.json.")
  try:
    recorded = json.loads(epath.Path(path).read_text())
  except FileNotFoundError:
    raise ValueError(f"{path} does not exist.") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a readable JSON config "
                     f"({type(e).__name__}: {e}).") from None
  if not isinstance(recorded, dict):
    raise ValueError(f"{path} holds no JSON object.")
  return ml_collections.ConfigDict(_tuples(recorded))
