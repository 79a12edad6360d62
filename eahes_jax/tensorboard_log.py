"""Optional TensorBoard output of a run, written with tensorboardX.

tensorboardX is pure Python and does not need TensorFlow; install it with
``pip install -e ".[tensorboard]"``. A run's event files hold

* ``eval/test_accuracy``, ``eval/test_loss``, ``eval/train_loss``: the
  master's evaluations, mean over seeds, at every evaluated round;
* ``train/minibatch_loss``: the workers' mean minibatch loss per round;
* ``h_worker/worker_i``, ``h_master/worker_i``, ``score/worker_i``,
  ``connected/worker_i``: each worker's elastic weights, dynamic-weighting
  score and connection per round (mean over seeds), plus histograms of
  ``h_worker``, ``h_master`` and ``score`` over workers and seeds;
* the configuration as hparams (TensorBoard's HPARAMS tab), with the eval
  scalars as its metrics.

A resumed run purges the events after its checkpoint (``purge_step``), so
re-run rounds are not shown twice.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from eahes_jax import simulator

INSTALL_HINT = 'pip install -e ".[tensorboard]"'
EVAL_TAGS = ("eval/test_accuracy", "eval/test_loss", "eval/train_loss")
_PER_WORKER = ("h_worker", "h_master", "score", "connected")
_HISTOGRAMS = ("h_worker", "h_master", "score")


def available() -> bool:
  """Whether tensorboardX, the writer this module uses, is installed."""
  return importlib.util.find_spec("tensorboardX") is not None


def resolve_dir(value: str | None, out_dir: str) -> str | None:
  """The binaries' ``--tensorboard_dir``: where events go, or None.

  Args:
    value: the flag: None (the default: ``out_dir/tensorboard`` when
      tensorboardX is installed, else no events), "none" (no events), or a
      folder.
    out_dir: the run's results folder.
  """
  if value is None:
    return f"{out_dir.rstrip('/')}/tensorboard" if available() else None
  if value.lower() == "none":
    return None
  return value


def _hparam(value: Any) -> bool | int | float | str:
  """A config value as TensorBoard's hparams accept it."""
  if isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


class TensorBoardLog:
  """Writes one run's metrics as TensorBoard events."""

  def __init__(self, log_dir: str, record: dict[str, Any],
               start_round: int = 0):
    """Opens the writer and writes the configuration as hparams.

    Args:
      log_dir: where the event files go.
      record: what the run's ``config.json`` holds (``config`` and
        ``data_source``).
      start_round: rounds already done; events from an earlier process at
        or after this round are purged.

    Raises:
      ImportError: tensorboardX is not installed.
    """
    import tensorboardX  # pylint: disable=g-import-not-at-top
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(
        logdir=log_dir, purge_step=start_round or None)
    hparams = {k: _hparam(v) for k, v in record["config"].items()}
    hparams["data_source"] = record["data_source"]
    for event in summary.hparams(hparams, dict.fromkeys(EVAL_TAGS, 0.0)):
      self._writer.file_writer.add_summary(event)

  def evaluation(self, round_: int, evals: simulator.EvalMetrics) -> None:
    """The master's evaluation at ``round_``, mean over seeds."""
    for tag in EVAL_TAGS:
      values = np.asarray(getattr(evals, tag.split("/", 1)[1]))
      self._writer.add_scalar(tag, float(values.mean()), round_)

  def rounds(self, first_round: int, metrics: simulator.RoundMetrics) -> None:
    """Per-round metrics of one chunk whose first round is ``first_round``."""
    losses = np.asarray(metrics.train_loss)  # (seeds, rounds)
    per_worker = {name: np.asarray(getattr(metrics, name), np.float64)
                  for name in _PER_WORKER}  # (seeds, rounds, k)
    for r in range(losses.shape[1]):
      step = first_round + r
      self._writer.add_scalar("train/minibatch_loss",
                              float(losses[:, r].mean()), step)
      for name, values in per_worker.items():
        for i, v in enumerate(values[:, r].mean(axis=0)):
          self._writer.add_scalar(f"{name}/worker_{i}", float(v), step)
      for name in _HISTOGRAMS:
        values = per_worker[name][:, r].ravel()
        values = values[np.isfinite(values)]
        if values.size:
          self._writer.add_histogram(name, values, step)

  def close(self) -> None:
    """Flushes and closes the event file."""
    self._writer.close()
