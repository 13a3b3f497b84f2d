"""Learning-rate schedules and validation-based early stopping."""

import json
import os
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from lfr_jax import config_check
from lfr_jax import train_state
from lfr_jax import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _optim(**overrides):
  base = {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": False,
          "weight_decay": 0.0, "decay_epochs": (3.0,), "decay_factor": 0.1,
          "schedule": "step", "peak_fraction": 0.5}
  return ConfigDict(dict(base, **overrides))


def test_step_schedule_decays_at_the_decay_epoch():
  schedule = train_state.learning_rate_schedule(_optim(), steps_per_epoch=10)
  assert float(schedule(29)) == pytest.approx(0.2)
  assert float(schedule(30)) == pytest.approx(0.02)


def test_one_cycle_schedule_is_the_triangle_of_wong_et_al():
  total, peak = 100, 40
  schedule = train_state.learning_rate_schedule(
      _optim(schedule="one_cycle", peak_fraction=0.4), steps_per_epoch=10,
      total_steps=total)
  # Reference: piecewise linear through (0, 0), (peak, lr), (total, 0).
  steps = np.arange(total + 1)
  want = np.interp(steps, [0, peak, total], [0.0, 0.2, 0.0])
  got = np.array([float(schedule(s)) for s in steps])
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_one_cycle_needs_the_run_length():
  with pytest.raises(ValueError, match="needs the run's total_steps"):
    train_state.make_optimizer(_optim(schedule="one_cycle"), 10)


@pytest.mark.parametrize("field, value, message", [
    ("optim.schedule", "cosine", "config.optim.schedule 'cosine' is unknown"),
    ("optim.peak_fraction", 1.0, "config.optim.peak_fraction must be < 1"),
    ("eval.select_on", "val", "config.eval.select_on 'val' is unknown"),
    ("eval.patience", -1, "config.eval.patience must be >= 0"),
])
def test_bad_schedule_settings_are_one_line(field, value, message):
  from configs import mnist_standard  # pylint: disable=g-import-not-at-top
  config = mnist_standard.get_config("smoke")
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(config_check.ConfigError, match=message):
    config_check.validate(config)


def _early_stop_config():
  from configs import mnist_ds_natural  # pylint: disable=g-import-not-at-top
  config = mnist_ds_natural.get_config("smoke")
  config.train.num_epochs = 6.0
  config.optim.decay_epochs = ()
  # Adam steps of 1e-12 are below the weights' float32 resolution, and the
  # network's logits start apart (SmallCNN's zero last layer would leave
  # them tied, their argmax at the mercy of rounding): validation accuracy
  # is the same every epoch, so it never improves after epoch 1.
  config.optim.lr = 1e-12
  config.eval.update({"select_on": "clean", "patience": 2, "val_examples": 16,
                      "test_examples": 16, "batch_size": 16,
                      "test_checkpoint": "best"})
  return config


@pytest.mark.mnist
def test_patience_stops_the_run_and_a_rerun_keeps_it_stopped(tmp_path):
  workdir = str(tmp_path / "run")
  summary = training.train_and_evaluate(_early_stop_config(), workdir)
  steps_per_epoch = summary["step"] // 3
  # Best at epoch 1, no improvement at epochs 2 and 3: stop after epoch 3.
  assert summary["early_stop_epoch"] == 3 and summary["completed"]
  assert summary["best_val"]["epoch"] == 1
  assert summary["epochs"] == pytest.approx(3.0)
  assert summary["test_checkpoint"] == f"best (step {steps_per_epoch})"
  again = training.train_and_evaluate(_early_stop_config(), workdir)
  assert again["step"] == summary["step"] and again["early_stop_epoch"] == 3
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    val = [json.loads(l) for l in f if '"split": "val"' in l]
  assert len(val) == 3


@pytest.mark.mnist
def test_patience_counts_from_the_last_learning_rate_decay(tmp_path):
  config = _early_stop_config()
  config.train.num_epochs = 8.0
  config.optim.decay_epochs = (4.0,)
  summary = training.train_and_evaluate(config, str(tmp_path / "run"))
  # Best at epoch 1; without the decay patience 2 would stop after epoch 3,
  # with it the count starts at epoch 4: stop after epoch 6.
  assert summary["early_stop_epoch"] == 6
  assert summary["best_val"]["epoch"] == 1
