"""A fixed-seed run's metrics file, byte for byte, against a stored golden copy.

Refactors must keep the simulator's numerics: this run covers AdaHessian with
Hutchinson probes, overlap shards, Bernoulli failures, the dynamic weighting
and the sequential exchange, two seeds side by side. It runs under the test
suite's XLA flags (tests/conftest.py) on this project's CPU machines. A change
that is *meant* to change the numerics regenerates the file with

  EAHES_REGENERATE_GOLDEN=1 python -m pytest -q tests/test_golden.py

and says so in its commit; anything else that breaks this test is a bug.
"""

import os
import pathlib

import flax.linen as nn
import pytest

from eahes_jax import config as config_lib
from eahes_jax import experiment
from eahes_jax import models
from eahes_jax import results_folder
from tests.conftest import tiny_mnist

GOLDEN = pathlib.Path(__file__).parent / "golden" / "deahes_o_mlp.jsonl"

CONFIG = config_lib.SimConfig(
    method="DEAHES-O", model="mlp", num_workers=3, comm_period=2, rounds=6,
    batch_size=16, num_seeds=2, seed=7, eval_every=3, train_eval_size=64,
    eval_batch_size=64, execution="map", dw_threshold=-0.1)


def test_fixed_seed_metrics_are_byte_identical_to_the_golden_file(tmp_path):
  experiment.run_experiment(CONFIG, str(tmp_path / "run"),
                            data=tiny_mnist(seed=3), log=lambda s: None)
  produced = (tmp_path / "run" / results_folder.METRICS_FILE).read_bytes()
  if os.environ.get("EAHES_REGENERATE_GOLDEN") == "1":
    GOLDEN.write_bytes(produced)
  assert produced == GOLDEN.read_bytes(), (
      "metrics.jsonl of the fixed-seed run changed; if the numerics are"
      " meant to change, regenerate tests/golden (see this file's docstring)")


# The CNNs on real digits (constant backgrounds, so max-pool windows tie):
# max-pooling's formulation (models.max_pool2 against nn.max_pool's
# reduce_window) must not move a bit of a run. Compared within one process
# rather than against a stored file, because the CNNs' matmuls round
# differently with the number of cores XLA's CPU backend is given.
CNN_CONFIGS = {
    "eahes_o_small_cnn": config_lib.SimConfig(
        method="EAHES-O", model="small_cnn", num_workers=2, comm_period=2,
        rounds=2, batch_size=16, num_seeds=1, seed=3, eval_every=1,
        train_eval_size=64, eval_batch_size=64, execution="map"),
    "eahes_cnn": config_lib.SimConfig(
        method="EAHES", model="cnn", num_workers=2, comm_period=1,
        rounds=2, batch_size=8, num_seeds=1, seed=3, eval_every=1,
        train_eval_size=32, eval_batch_size=32, execution="map"),
}


def _reduce_window_pool(x):
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


@pytest.mark.parametrize("name", sorted(CNN_CONFIGS))
def test_cnn_runs_are_byte_identical_under_either_max_pool(
    name, tmp_path, sample_mnist, monkeypatch):
  def metrics(out):
    experiment.run_experiment(CNN_CONFIGS[name], str(tmp_path / out),
                              data=sample_mnist, log=lambda s: None)
    return (tmp_path / out / results_folder.METRICS_FILE).read_bytes()
  produced = metrics("max_pool2")
  monkeypatch.setattr(models, "max_pool2", _reduce_window_pool)
  assert metrics("reduce_window") == produced
