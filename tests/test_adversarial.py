"""Adversarial cases (issue 12): each one once ended in a traceback or in
silent damage to a results folder.

The file grows with every defect found: a test per case, failing on the code
before its fix. Most cases run ``experiment.run_experiment`` in process on a
tiny synthetic dataset (one short compile); those about what a user sees on
the command line (one line on stderr, the exit status, signals) start the
binaries.
"""

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from eahes_jax import checkpoint as checkpoint_lib
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import elastic
from eahes_jax import experiment
from eahes_jax import grid
from eahes_jax import simulator
from tests.conftest import tiny_mnist
from tests.test_experiments import error_lines
from tests.test_experiments import run_binary
from tests.test_reliability import _idx_folder
from tests.test_reliability import _snapshot
from tests.test_reliability import _write_idx

REPO = pathlib.Path(__file__).resolve().parent.parent

# Two chunks of two rounds, a checkpoint after each (rounds 2 and 4).
CFG = config_lib.SimConfig(model="mlp", method="DEAHES-O", num_workers=2,
                           rounds=4, batch_size=8, eval_every=2,
                           train_eval_size=64, eval_batch_size=64)
DATA = tiny_mnist()
# The command line of a tiny run of the train binary.
TRAIN = ("--model=mlp", "--data_source=sample", "--train_eval_size=200",
         "--num_workers=2", "--rounds=4", "--eval_every=2")


def run(out: pathlib.Path, config: config_lib.SimConfig = CFG,
        log: list[str] | None = None, **kwargs) -> experiment.RunSummary:
  kwargs.setdefault("checkpoint_every", 2)
  return experiment.run_experiment(
      config, str(out), data=DATA,
      log=(log.append if log is not None else lambda s: None), **kwargs)


def strict_rows(out: pathlib.Path) -> list[dict]:
  """The metrics rows, parsed by a reader that rejects NaN and Infinity."""

  def reject(name):
    raise ValueError(f"non-standard JSON constant {name}")

  text = (out / experiment.METRICS_FILE).read_text()
  return [json.loads(l, parse_constant=reject) for l in text.splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished run with checkpoints at rounds 2 and 4; its metrics bytes."""
  out = tmp_path_factory.mktemp("finished") / "run"
  run(out)
  return out, (out / experiment.METRICS_FILE).read_bytes()


def resumable_copy(finished, tmp_path: pathlib.Path) -> pathlib.Path:
  """A copy of the finished run that ``--resume`` continues (no summary)."""
  out = tmp_path / "copy"
  shutil.copytree(finished[0], out)
  (out / experiment.SUMMARY_FILE).unlink()
  return out


# ------------------------------------------- 2: the guard and strict JSON --


def test_nonfinite_exchange_output_stops_the_run_before_any_row_or_save(
    tmp_path, monkeypatch):
  real = elastic.exchange

  def poisoned(*args, **kwargs):  # The master overflows in the exchange.
    workers, master = real(*args, **kwargs)
    return workers, jax.tree_util.tree_map(lambda x: x * jnp.inf, master)

  monkeypatch.setattr(elastic, "exchange", poisoned)
  out = tmp_path / "run"
  with pytest.raises(simulator.NonFiniteError,
                     match="master parameters after the exchange in round 1"):
    run(out, checkpoint_every=1)
  assert [r["round"] for r in strict_rows(out)] == [0]  # Round 0 only.
  ckpt = checkpoint_lib.Checkpointer(str(out / experiment.CHECKPOINT_DIR))
  assert ckpt.latest_round() is None  # No checkpoint of a non-finite state.
  ckpt.close()


# ------------------------------------------- 7, 8, 9: one line, not a trace --


def test_more_workers_than_training_examples_is_a_config_error(tmp_path):
  with pytest.raises(config_lib.ConfigError,
                     match="num_workers must leave every worker") as e:
    run(tmp_path / "run", CFG.replace(num_workers=300))
  assert e.value.field == "num_workers"


@pytest.mark.parametrize("seed,num_seeds,ok", [
    (2**32 - 1, 1, True), (2**32 - 2, 2, True), (2**32, 1, False),
    (2**32 - 1, 2, False), (2**63, 1, False), (2**64 + 5, 1, False)])
def test_seeds_must_fit_in_32_bits(seed, num_seeds, ok):
  if ok:
    config_lib.SimConfig(seed=seed, num_seeds=num_seeds)
    return
  with pytest.raises(config_lib.ConfigError, match="^seed must be") as e:
    config_lib.SimConfig(seed=seed, num_seeds=num_seeds)
  assert e.value.field == "seed"


def test_idx_files_with_no_records_are_a_data_error(tmp_path):
  folder = _idx_folder(tmp_path / "mnist")
  _write_idx(folder / "train-images-idx3-ubyte",
             np.zeros((0, 28, 28), np.uint8), 2051)
  _write_idx(folder / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8),
             2049)
  with pytest.raises(data_lib.DataError,
                     match="train-images-idx3-ubyte: holds 0 images"):
    data_lib.load_mnist("idx", str(folder))
