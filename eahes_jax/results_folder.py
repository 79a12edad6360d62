"""The results folder of a run: its files, their checks and its lock.

A results folder holds:

* ``config.json``: the resolved ``SimConfig`` plus the data source (the
  run's *record*);
* ``metrics.jsonl``: one strict-JSON object per (round, seed), see
  ``METRIC_COLUMNS``;
* ``checkpoints/``: orbax checkpoints when checkpointing is on, each with the
  record and the metrics file's length and checksum;
* ``summary.json``: written last, once the run is complete;
* ``.lock``: the advisory lock of the process writing the folder.

The folder is checked before anything compiles (writable, enough free space,
not holding another configuration's results, not in use by another process);
a metrics file that does not match the checkpoint's record of it is refused,
never repaired. Every refusal is a ``ResultsDirError`` subclass whose message
names the argument to change.
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
import tempfile
from typing import Any, BinaryIO, Callable

import numpy as np

from eahes_jax import checkpoint as checkpoint_lib
from eahes_jax import config as config_lib
from eahes_jax import progress as progress_lib
from eahes_jax import simulator

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

# Free space asked of the folder beyond the checkpoints' own size.
_MIN_FREE_BYTES = 16 << 20


class ResultsDirError(RuntimeError):
  """The results folder cannot take this run; the message says why.

  Messages name the arguments of ``experiment.run_experiment`` in backticks
  (`` `out_dir` ``, `` `resume=True` ``), which the binaries turn into flags.
  """


class FolderUnusableError(ResultsDirError):
  """``out_dir`` is a file, cannot be written, or lacks free space."""


class FolderInUseError(ResultsDirError):
  """Another process holds ``out_dir``'s lock (the message names its PID)."""


class FolderMismatchError(ResultsDirError):
  """``out_dir`` holds results this run must not touch: another
  configuration's, results no record vouches for, or (without ``resume``)
  this very run."""


class UnreadableRecordError(ResultsDirError):
  """``config.json`` or ``summary.json`` is not what it should be."""


class UntrustedMetricsError(ResultsDirError):
  """``metrics.jsonl`` does not match the checkpoint's record of it."""


class WriteFailedError(ResultsDirError):
  """A write into ``out_dir`` failed (e.g. a full disk)."""


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


def run_record(config: config_lib.SimConfig, data_source: str
               ) -> dict[str, Any]:
  """What ``config.json`` (and every checkpoint) holds for a run."""
  return {"config": config.resolve().to_dict(), "data_source": data_source}


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """The fields in which two run records differ: their configs'
  (``differing_config_fields``, ``old`` being the stored one) and
  ``data_source``."""
  fields = differing_config_fields(old["config"], new["config"])
  if old.get("data_source") != new["data_source"]:
    fields.append("data_source")
  return fields


def differing_config_fields(old: dict[str, Any],
                            new: dict[str, Any]) -> list[str]:
  """The fields in which a stored config dict differs from a current one.

  A field missing from ``old`` (stored before the field existed) counts as
  its default, the value that run used; a field renamed since counts under
  its current name (``config.current_fields``).
  """
  defaults = config_lib.SimConfig().to_dict()
  stored = config_lib.current_fields(old)
  old_cfg = {**{k: defaults[k] for k in new
                if k not in stored and k in defaults}, **stored}
  return sorted(k for k in set(old_cfg) | set(new)
                if old_cfg.get(k) != new.get(k))


def is_run_record(x: Any) -> bool:
  """Whether ``x`` has the shape of ``run_record``'s output."""
  return isinstance(x, dict) and isinstance(x.get("config"), dict)


def read_record(path: str, is_valid: Callable[[Any], bool], what: str
                ) -> Any | None:
  """The JSON record at ``path`` (a run's, a grid's, a study's), or None.

  Args:
    path: the file.
    is_valid: whether a parsed value has the record's shape.
    what: the record's name for the message ("a run record").

  Returns:
    The parsed record, or None when the file does not exist.

  Raises:
    UnreadableRecordError: the file exists but is not JSON, or not ``what``;
      the message names the file.
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise UnreadableRecordError(
        f"{path}: unreadable {os.path.basename(path)} ({e}); choose another"
        " `out_dir`") from None
  if not is_valid(old):
    raise UnreadableRecordError(
        f"{path}: unreadable {os.path.basename(path)} (not {what}); choose"
        " another `out_dir`")
  return old


def stored_record(out_dir: str) -> tuple[str, dict[str, Any]] | None:
  """The record the folder's results were written under, and its file.

  ``config.json`` if present, else the record saved with the newest
  checkpoint that holds a readable one; None if there is neither.

  Raises:
    ResultsDirError: ``config.json`` exists but is not a run record.
  """
  old = read_record(os.path.join(out_dir, CONFIG_FILE), is_run_record,
                    "a run record")
  if old is not None:
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
      if is_run_record(old):
        return f"the checkpoint at round {step}", old
  finally:
    ckpt.close()
  return None


def check_writable(out_dir: str) -> None:
  """Creates ``out_dir`` if missing and checks that a file can be written.

  Raises:
    ResultsDirError: the folder is a file, or cannot be created or written
      to.
  """
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise FolderUnusableError(f"`out_dir` {out_dir!r} is a file, not a folder")
  try:
    os.makedirs(out_dir, exist_ok=True)
    # A name of its own: two processes probing one folder at once (two
    # working through one grid) must not remove each other's probe.
    fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=out_dir)
    try:
      os.write(fd, b"ok")
    finally:
      os.close(fd)
      os.remove(probe)
  except OSError as e:
    raise FolderUnusableError(
        f"`out_dir` {out_dir!r} is not writable: {e.strerror}") from None


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
    # Orbax would find no checkpoint in it: resuming would restart at round
    # 0, cutting metrics.jsonl to nothing, and fail at the first save.
    raise FolderMismatchError(
        f"`out_dir` {out_dir!r} holds {CHECKPOINT_DIR!r}, which is not a"
        " folder; refusing to touch the results, choose another `out_dir`")
  need = _MIN_FREE_BYTES + 3 * checkpoint_bytes
  free = shutil.disk_usage(out_dir).free
  if free < need:
    raise FolderUnusableError(
        f"`out_dir` {out_dir!r} has {free / 2**20:.1f} MiB free; this run"
        f" needs about {need / 2**20:.1f} MiB")
  stored = stored_record(out_dir)
  if stored is None:
    held = [name for name in (METRICS_FILE, SUMMARY_FILE)
            if os.path.exists(os.path.join(out_dir, name))]
    if held:
      raise FolderMismatchError(
          f"`out_dir` {out_dir!r} holds results ({', '.join(held)}) but no"
          f" {CONFIG_FILE} or checkpoint records their configuration;"
          " refusing to overwrite them, choose another `out_dir`")
    return
  where, old = stored
  fields = differing_fields(old, record)
  if fields:
    raise FolderMismatchError(
        f"`out_dir` {out_dir!r} holds results of a different configuration"
        f" (differs in: {', '.join(fields)}, per {where}); refusing to mix"
        " them, choose another `out_dir`")
  if not resume:
    raise FolderMismatchError(
        f"`out_dir` {out_dir!r} already holds this run; pass `resume=True` to"
        " continue it, or choose another `out_dir`")


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
    raise FolderUnusableError(
        f"`out_dir` {out_dir!r}: cannot open {LOCK_FILE}: {e.strerror}"
    ) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
      raise FolderInUseError(
          f"`out_dir` {out_dir!r} is in use by another process (PID"
          f" {holder or 'unknown'}); wait for it to end or choose another"
          " `out_dir`") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)  # No stale PID left behind.
  finally:
    os.close(fd)


def chunk_rows(first_round: int, metrics: simulator.RoundMetrics,
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


def initial_rows(evals: simulator.EvalMetrics, seeds: np.ndarray
                  ) -> list[dict[str, Any]]:
  rows = []
  for s, seed in enumerate(seeds):
    row = dict.fromkeys(METRIC_COLUMNS)
    row.update(round=0, seed=int(seed), **_eval_columns(evals, s))
    rows.append(row)
  return rows


def append_rows(f: BinaryIO, rows: list[dict[str, Any]], digest: Any) -> None:
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
    raise WriteFailedError(
        f"{f.name}: write failed ({e.strerror}); free space and continue"
        " with `resume=True` from the last checkpoint") from None
  digest.update(data)


def write_json(path: str, obj: Any, **kwargs) -> None:
  """Writes ``obj`` as strict JSON to ``path`` atomically (via a rename).

  Raises:
    ResultsDirError: the write failed (e.g. the disk is full).
  """
  tmp = None
  try:
    # A temporary name of its own, so that two processes writing the same
    # record at once (two working through one grid) each rename a whole file.
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".",
                               suffix=".tmp", dir=os.path.dirname(path) or ".")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the record from others.
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, allow_nan=False, **kwargs)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    if tmp is not None and os.path.exists(tmp):
      with contextlib.suppress(OSError):
        os.remove(tmp)
    raise WriteFailedError(f"{path}: write failed ({e.strerror})") from None


def check_metrics(path: str, progress: checkpoint_lib.Progress) -> Any:
  """Checks the metrics file against a checkpoint's record of it.

  Args:
    path: the metrics file.
    progress: the restored checkpoint's record.

  Returns:
    A ``hashlib`` SHA-256 of the file's first ``progress.metrics_bytes``
    bytes, to be continued by ``append_rows``.

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
    raise UntrustedMetricsError(
        f"{path} {problem}; the checkpoint at round {progress.rounds_done}"
        f" recorded {progress.metrics_rows} rows, {want} bytes: its rows"
        " cannot be trusted, refusing to resume (choose another `out_dir`)")
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
    raise UnreadableRecordError(
        f"{path} is not a readable run summary ({type(e).__name__}: {e});"
        " delete it to finish the run with `resume=True`") from None
  return summary


def read_config(out_dir: str) -> dict[str, Any]:
  """The resolved ``SimConfig`` fields a results folder's config.json holds."""
  with open(os.path.join(out_dir, CONFIG_FILE)) as f:
    return json.load(f)["config"]


def is_complete(out_dir: str) -> bool:
  """Whether ``out_dir`` holds a finished run."""
  return os.path.exists(os.path.join(out_dir, SUMMARY_FILE))
