"""Adversarial cases (issue 12): each one once ended in a traceback or in
silent damage to a results folder.

The file grows with every defect found: a test per case, failing on the code
before its fix. Most cases run ``experiment.run_experiment`` in process on a
tiny synthetic dataset (one short compile); those about what a user sees on
the command line (one line on stderr, the exit status, signals) start the
binaries.
"""

import errno
import hashlib
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
from absl import flags
import pytest

from eahes_jax import checkpoint as checkpoint_lib
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import elastic
from eahes_jax import experiment
from eahes_jax import grid
from eahes_jax import results_folder
from eahes_jax import simulator
from experiments import benchmark
from experiments import cli
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
        log: list[str] | None = None, **kwargs) -> results_folder.RunSummary:
  kwargs.setdefault("checkpoint_every", 2)
  return experiment.run_experiment(
      config, str(out), data=DATA,
      log=(log.append if log is not None else lambda s: None), **kwargs)


def strict_rows(out: pathlib.Path) -> list[dict]:
  """The metrics rows, parsed by a reader that rejects NaN and Infinity."""

  def reject(name):
    raise ValueError(f"non-standard JSON constant {name}")

  text = (out / results_folder.METRICS_FILE).read_text()
  return [json.loads(l, parse_constant=reject) for l in text.splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished run with checkpoints at rounds 2 and 4; its metrics bytes."""
  out = tmp_path_factory.mktemp("finished") / "run"
  run(out)
  return out, (out / results_folder.METRICS_FILE).read_bytes()


def resumable_copy(finished, tmp_path: pathlib.Path) -> pathlib.Path:
  """A copy of the finished run that ``--resume`` continues (no summary)."""
  out = tmp_path / "copy"
  shutil.copytree(finished[0], out)
  (out / results_folder.SUMMARY_FILE).unlink()
  return out


# ------------------------------------------- 1: metrics vs the checkpoint --


@pytest.mark.parametrize("damage", ["shorter", "missing", "byte_changed"])
def test_resume_refuses_metrics_that_do_not_match_the_checkpoint(
    finished, tmp_path, damage):
  out = resumable_copy(finished, tmp_path)
  metrics = out / results_folder.METRICS_FILE
  data = finished[1]
  if damage == "shorter":
    metrics.write_bytes(data[:len(data) // 2])
  elif damage == "missing":
    metrics.unlink()
  else:  # Same length, same rows: a digit changed inside the first row.
    i = data.index(b'"test_accuracy": 0.') + len(b'"test_accuracy": 0.')
    digit = b"1" if data[i:i + 1] != b"1" else b"2"
    metrics.write_bytes(data[:i] + digit + data[i + 1:])
  before = _snapshot(out)
  with pytest.raises(results_folder.ResultsDirError) as e:
    run(out, resume=True)
  message = str(e.value)
  assert message.startswith(str(metrics)), message
  assert "refusing to resume" in message and "\n" not in message
  # Refused before anything was trained or written: no padding, no repair.
  assert _snapshot(out) == before


def test_progress_records_the_metrics_checksum_and_old_records_restore(
    finished, tmp_path):
  ckpt = checkpoint_lib.Checkpointer(
      str(finished[0] / results_folder.CHECKPOINT_DIR))
  like = simulator.Simulation(CFG, DATA).init_state()
  _, progress = ckpt.restore(like)
  ckpt.close()
  assert progress.metrics_sha256 == hashlib.sha256(
      finished[1][:progress.metrics_bytes]).hexdigest()
  # A checkpoint written before the checksum existed still restores.
  state = {"a": jnp.arange(4.0)}
  old = ocp.CheckpointManager(
      str(tmp_path / "old"), options=ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=False))
  old.save(3, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      progress=ocp.args.JsonSave({"rounds_done": 3, "metrics_rows": 4,
                                  "metrics_bytes": 100})))
  old.close()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "old"))
  restored, progress = ckpt.restore(state)
  ckpt.close()
  assert progress == checkpoint_lib.Progress(3, 4, 100, None)
  np.testing.assert_array_equal(restored["a"], state["a"])


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
  ckpt = checkpoint_lib.Checkpointer(str(out / results_folder.CHECKPOINT_DIR))
  assert ckpt.latest_round() is None  # No checkpoint of a non-finite state.
  ckpt.close()


def test_metrics_are_strict_json_with_null_for_infinite_values(
    tmp_path, monkeypatch):
  # A worker equal to the master has log-distance −inf.
  monkeypatch.setattr(elastic, "log_distance",
                      lambda workers, master: jnp.full((2,), -jnp.inf))
  out = tmp_path / "run"
  run(out, CFG.replace(method="EASGD"), checkpoint_every=0)
  rows = strict_rows(out)
  assert rows[-1]["round"] == 4
  for row in rows[1:]:
    assert row["log_distance_after"] == [None, None]
    assert row["minibatch_loss"] is not None


# --------------------------------------------------- 3: one writer a folder --


def test_a_locked_folder_is_refused_naming_the_holder(finished, tmp_path):
  out = resumable_copy(finished, tmp_path)
  before = _snapshot(out)
  with results_folder.lock_out_dir(str(out)):
    assert (out / results_folder.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(results_folder.ResultsDirError,
                       match=rf"in use by another process \(PID"
                             rf" {os.getpid()}\)"):
      run(out, resume=True)
    # The binary, for a new run and a resume alike: one line, nothing
    # written.
    for extra in ((), ("--resume",)):
      proc = run_binary("train", *TRAIN, f"--out_dir={out}", *extra)
      assert proc.returncode == 1
      lines = error_lines(proc.stderr)
      assert len(lines) == 1, proc.stderr
      assert f"in use by another process (PID {os.getpid()})" in lines[0]
  assert _snapshot(out) == before
  run(out, resume=True)  # The lock is released with its block.
  assert (out / results_folder.METRICS_FILE).read_bytes() == finished[1]


def test_each_run_of_the_grid_takes_its_folders_lock(tmp_path):
  preset = grid.customize(grid.PRESETS["quick"], rounds=2, num_seeds=1,
                          methods=("EASGD",), workers=(2,), periods=(1,),
                          overlap_ratios=())
  (config,) = grid.grid_configs(preset)
  run_dir = tmp_path / grid.RUNS_DIR / grid.run_name(config)
  run_dir.mkdir(parents=True)
  log = []
  with results_folder.lock_out_dir(str(run_dir)):
    # The holder is left alone: the grid goes on (two processes may share
    # one grid) and writes nothing into the held run's folder.
    assert grid.run_grid(preset, str(tmp_path), log=log.append) == []
  assert sorted(p.name for p in run_dir.iterdir()) == [results_folder.LOCK_FILE]
  assert (f"  {grid.run_name(config)}: another process is writing this run;"
          " left to it") in log
  assert log[-1].startswith("grid 0 of 1 runs complete")


# ------------------------------ 4: the config is kept with every checkpoint --


@pytest.mark.parametrize("change,fields", [
    ({"lr": 0.02}, "lr"),
    ({"num_workers": 4}, "num_workers, overlap_ratio"),
])
def test_resume_without_config_json_checks_the_checkpoints_config(
    finished, tmp_path, change, fields):
  out = resumable_copy(finished, tmp_path)
  (out / results_folder.CONFIG_FILE).unlink()
  before = _snapshot(out)
  with pytest.raises(results_folder.ResultsDirError,
                     match=f"differs in: {fields}, per the checkpoint at"
                           " round 4"):
    run(out, CFG.replace(**change), resume=True)
  assert _snapshot(out) == before
  # The same configuration resumes and puts config.json back.
  run(out, resume=True)
  assert (out / results_folder.METRICS_FILE).read_bytes() == finished[1]
  assert (out / results_folder.CONFIG_FILE).exists()


def test_a_folder_written_under_a_fields_earlier_name_resumes(
    finished, tmp_path):
  # seed_execution was called single_seed ("plain" for "map"): a folder
  # whose config.json says so holds the same run and resumes.
  out = resumable_copy(finished, tmp_path)
  record = json.loads((out / results_folder.CONFIG_FILE).read_text())
  record["config"]["single_seed"] = record["config"].pop("seed_execution")
  (out / results_folder.CONFIG_FILE).write_text(json.dumps(record))
  run(out, resume=True)
  assert (out / results_folder.METRICS_FILE).read_bytes() == finished[1]
  # Under its old name a different value is still a different run.
  record["config"]["single_seed"] = "plain"
  (out / results_folder.CONFIG_FILE).write_text(json.dumps(record))
  with pytest.raises(results_folder.ResultsDirError,
                     match=r"differs in: seed_execution"):
    run(out, resume=True)


def test_a_checkpoint_of_another_config_is_refused_despite_config_json(
    finished, tmp_path):
  out = resumable_copy(finished, tmp_path)
  record = json.loads((out / results_folder.CONFIG_FILE).read_text())
  record["config"]["lr"] = 0.02  # config.json rewritten by hand.
  (out / results_folder.CONFIG_FILE).write_text(json.dumps(record))
  with pytest.raises(results_folder.ResultsDirError,
                     match="checkpoints of a different configuration"
                           r" \(differs in: lr\)"):
    run(out, CFG.replace(lr=0.02), resume=True)


@pytest.mark.parametrize("checkpoints", [True, False])
def test_a_finished_run_is_never_overwritten_by_another_config(
    finished, tmp_path, checkpoints):
  out = tmp_path / "copy"
  shutil.copytree(finished[0], out)
  (out / results_folder.CONFIG_FILE).unlink()
  if not checkpoints:
    shutil.rmtree(out / results_folder.CHECKPOINT_DIR)
  before = _snapshot(out)
  for resume in (False, True):
    with pytest.raises(results_folder.ResultsDirError,
                       match="differs in: lr" if checkpoints
                       else "no config.json or checkpoint records"):
      run(out, CFG.replace(lr=0.02), resume=resume)
  assert _snapshot(out) == before


# ------------------------------------- 5: fall back past a corrupt checkpoint --


def _damage_checkpoint(step_dir: pathlib.Path, how: str) -> None:
  files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  if how == "garbage":
    for p in files:
      p.write_bytes(os.urandom(p.stat().st_size))
  else:  # One bit of the largest file (the arrays' data) flipped.
    p = files[-1]
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["garbage", "bit_flip"])
def test_resume_falls_back_past_a_corrupt_newest_checkpoint(
    finished, tmp_path, how):
  out = resumable_copy(finished, tmp_path)
  _damage_checkpoint(out / results_folder.CHECKPOINT_DIR / "4", how)
  log = []
  run(out, resume=True, log=log)
  warnings = [l for l in log if "corrupt" in l]
  assert len(warnings) == 1 and warnings[0].startswith(
      "warning: the checkpoint at round 4 is corrupt"), log
  assert "resumed from the checkpoint at round 2" in log
  assert (out / results_folder.METRICS_FILE).read_bytes() == finished[1]


def test_a_checkpoints_path_that_is_a_file_is_refused_before_any_write(
    finished, tmp_path):
  # Found by the sweep (round two): orbax saw no checkpoint in it, so
  # --resume restarted at round 0, cut metrics.jsonl to nothing and failed
  # at its first save.
  out = resumable_copy(finished, tmp_path)
  shutil.rmtree(out / results_folder.CHECKPOINT_DIR)
  (out / results_folder.CHECKPOINT_DIR).write_text("x")
  before = _snapshot(out)
  for resume in (True, False):
    with pytest.raises(results_folder.ResultsDirError,
                       match="holds 'checkpoints', which is not a folder"):
      run(out, resume=resume)
  assert _snapshot(out) == before


def test_no_intact_checkpoint_is_reported_as_corrupt_not_as_divergence(
    finished, tmp_path):
  out = resumable_copy(finished, tmp_path)
  for step in ("2", "4"):
    _damage_checkpoint(out / results_folder.CHECKPOINT_DIR / step, "bit_flip")
  with pytest.raises(checkpoint_lib.CorruptCheckpointError) as e:
    run(out, resume=True)
  message = str(e.value)
  assert "no checkpoint in" in message and "restores intact" in message
  assert "round 4:" in message and "round 2:" in message
  assert "\n" not in message
  assert isinstance(e.value, cli.EXPECTED_ERRORS)


# ------------------------------------------ 6: a second signal, compiling --


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_the_first_compile_exits_cleanly(
    tmp_path, sig):
  # Signals that arrive while the main thread is inside XLA reach Python
  # together, as one; so the test keeps signalling until the process ends,
  # which makes the handler run twice: the second time wherever Python
  # happens to be (tracing, compiling, saving).
  out = tmp_path / "run"
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.train", *TRAIN, "--rounds=40",
       f"--out_dir={out}"], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  lock = out / results_folder.LOCK_FILE
  deadline = time.monotonic() + 120
  try:
    # The lock holds the PID once the handlers are in place; the first
    # compile follows.
    while not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
      if proc.poll() is not None or time.monotonic() > deadline:
        pytest.fail(f"the run ended or hung before it took the lock:"
                    f" {proc.communicate()}")
      time.sleep(0.01)
    while proc.poll() is None and time.monotonic() < deadline:
      proc.send_signal(sig)
      time.sleep(0.05)
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 130, stderr
  lines = error_lines(stderr)
  assert lines == [f"error: stopped by a second {sig.name} without saving;"
                   " the last checkpoint is kept (resuming continues from"
                   " it)"], stderr


_SIGNAL_AFTER_THE_RUN = """
import os, signal, sys, time
from absl import app
from eahes_jax import config, data, experiment
from experiments import cli

def main(argv):
  cli.binary_prologue(argv[:1])  # argv[1]: the results folder.
  def log(line):  # The first signal arrives during the first chunk.
    if line.startswith("compiling"):
      os.kill(os.getpid(), signal.SIGINT)
  try:
    experiment.run_experiment(
        config.SimConfig(model="mlp", num_workers=2, rounds=4, batch_size=8,
                         eval_every=2, train_eval_size=64,
                         eval_batch_size=64),
        sys.argv[-1], data=data.synthetic_mnist(256, 128, 0), log=log)
  except experiment.Interrupted as e:
    print(cli.main_error(e))
  os.kill(os.getpid(), signal.SIGINT)  # The second, once the run has ended.
  time.sleep(60)
  print("still running")

app.run(main)
"""


def test_a_second_signal_after_the_run_has_ended_exits_in_one_line(tmp_path):
  # Found by the sweep (round two): a second SIGINT that arrived after the
  # run had raised Interrupted (its handlers restored, the process on its way
  # out) killed the process through Python's default handler.
  proc = subprocess.run(
      [sys.executable, "-c", _SIGNAL_AFTER_THE_RUN, str(tmp_path / "run")],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 130, proc.stderr
  assert "still running" not in proc.stdout
  assert error_lines(proc.stderr) == [
      "error: stopped by SIGINT after 2 rounds; checkpoint saved, continue"
      " with --resume",
      "error: stopped by SIGINT; the last checkpoint, if any, is kept"
  ], proc.stderr


# ------------------------------------------- 7, 8, 9: one line, not a trace --


def test_more_workers_than_training_examples_is_a_config_error(tmp_path):
  with pytest.raises(config_lib.ConfigError,
                     match="num_workers must leave every worker") as e:
    run(tmp_path / "run", CFG.replace(num_workers=300))
  assert e.value.field == "num_workers"


def test_a_minibatch_larger_than_the_training_set_is_a_config_error(
    tmp_path):
  # Found by the sweep (round two): --batch_size=10000000 ran out of memory
  # inside XLA (minibatches are drawn with replacement, so nothing refused
  # it).
  n_train = DATA.train_images.shape[0]
  out = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError,
                     match=f"^batch_size must be at most the training set's"
                           f" size \\({n_train}\\)") as e:
    run(out, CFG.replace(batch_size=n_train + 1))
  assert e.value.field == "batch_size"
  assert not out.exists()


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


@pytest.mark.parametrize("field", [
    "num_workers", "comm_period", "rounds", "batch_size", "hessian_samples",
    "dw_history", "num_seeds", "eval_every", "eval_batch_size",
    "train_eval_size"])
def test_counts_beyond_int32_are_a_config_error(field):
  # Found by the sweep (round two): --comm_period=2**63 passed validation
  # and overflowed inside JAX (a traceback); --rounds=2**63 hung building
  # the chunk schedule.
  if field != "dw_history":  # That many dw_coeffs would not fit in memory.
    config_lib.SimConfig(**{field: 2**31 - 1})
  for value in (2**31, 2**63):
    with pytest.raises(config_lib.ConfigError,
                       match=rf"^{field} must be an integer in") as e:
      config_lib.SimConfig(**{field: value})
    assert e.value.field == field


def test_a_tensorboard_dir_below_a_file_is_refused_before_any_write(
    tmp_path):
  # Found by the sweep (round two): tensorboardX failed with a traceback
  # after config.json and an empty metrics.jsonl had been written, so the
  # same command then said the folder "already holds this run".
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  out = tmp_path / "run"
  for tb in (a_file, a_file / "tb"):
    with pytest.raises(config_lib.ConfigError,
                       match=f"^tensorboard_dir '{tb}' ") as e:
      run(out, tensorboard_dir=str(tb))
    assert e.value.field == "tensorboard_dir"
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("args,field", [
    (["--workers="], "workers"), (["--workers=abc"], "workers"),
    (["--models="], "models"), (["--methods="], "methods"),
    (["--executions="], "executions"), (["--rounds=0"], "rounds"),
    (["--repeats=0"], "repeats"), ([f"--repeats={2**63}"], "repeats"),
    (["--skip=garbage"], "skip")])
def test_benchmark_flags_that_measure_nothing_or_forever_are_refused(
    args, field):
  # Found by the sweep (round two): empty lists and a malformed --skip were
  # taken (exit 0, nothing or everything measured), --rounds=0 silently meant
  # the default, and errors did not name their flag.
  fv = flags.FlagValues()
  benchmark.define_flags(fv)
  fv(["benchmark", "--models=mlp", "--executions=map", "--workers=1", *args])
  with pytest.raises(config_lib.ConfigError) as e:
    benchmark.cases_from_flags(fv)
  assert e.value.field == field


@pytest.mark.parametrize("case", ["out_dir_is_a_file", "out_dir_has_results",
                                  "kill_of_no_worker"])
def test_train_distributed_checks_folder_and_kills_before_ray_starts(
    tmp_path, monkeypatch, case):
  # Found by the sweep (round two): an --out_dir that is a file failed only
  # after the whole distributed run (its results lost), earlier results were
  # overwritten, and a bad --kill_worker was found once Ray had started.
  ray_runtime = pytest.importorskip("eahes_jax.ray_runtime")

  def no_ray(*args, **kwargs):
    raise AssertionError("Ray started before the checks")

  monkeypatch.setattr(ray_runtime, "connect", no_ray)
  out = tmp_path / "run"
  kills = ()
  if case == "out_dir_is_a_file":
    out.write_text("x")
    error, match = results_folder.ResultsDirError, "is a file"
  elif case == "out_dir_has_results":
    out.mkdir()
    (out / results_folder.METRICS_FILE).write_text('{"round": 0}\n')
    error, match = results_folder.ResultsDirError, "already holds results"
  else:
    kills = ((9, 1),)
    error, match = config_lib.ConfigError, "kill_worker must name workers 0..1"
  before = out.read_bytes() if out.is_file() else _snapshot(out)
  with pytest.raises(error, match=match):
    ray_runtime.train(CFG, str(out), data_source="sample", kills=kills,
                      log=lambda s: None)
  assert (out.read_bytes() if out.is_file() else _snapshot(out)) == before


def test_idx_files_with_no_records_are_a_data_error(tmp_path):
  folder = _idx_folder(tmp_path / "mnist")
  _write_idx(folder / "train-images-idx3-ubyte",
             np.zeros((0, 28, 28), np.uint8), 2051)
  _write_idx(folder / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8),
             2049)
  with pytest.raises(data_lib.DataError,
                     match="train-images-idx3-ubyte: holds 0 images"):
    data_lib.load_mnist("idx", str(folder))


@pytest.mark.parametrize("content", ["[1, 2]", '{"config": null}', "{bad"])
def test_a_config_json_that_is_no_run_record_is_refused(tmp_path, content):
  out = tmp_path / "run"
  out.mkdir()
  (out / results_folder.CONFIG_FILE).write_text(content)
  with pytest.raises(results_folder.ResultsDirError,
                     match="unreadable config.json"):
    run(out, resume=True)
  assert (out / results_folder.CONFIG_FILE).read_text() == content


@pytest.mark.parametrize("content", ["{bad", "[]", '{"method": 1}'])
def test_a_corrupt_summary_with_resume_is_a_one_line_error(
    finished, tmp_path, content):
  out = tmp_path / "copy"
  shutil.copytree(finished[0], out)
  (out / results_folder.SUMMARY_FILE).write_text(content)
  with pytest.raises(results_folder.ResultsDirError) as e:
    run(out, resume=True)
  assert str(e.value).startswith(str(out / results_folder.SUMMARY_FILE))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("where", ["metrics", "checkpoint"])
def test_a_full_disk_during_a_run_is_a_one_line_error_and_resumable(
    finished, tmp_path, monkeypatch, where):
  out = tmp_path / "run"
  real_fsync = os.fsync

  def full_fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(results_folder.METRICS_FILE):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_fsync(fd)

  def full_save(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  if where == "metrics":
    monkeypatch.setattr(os, "fsync", full_fsync)
    path = out / results_folder.METRICS_FILE
  else:
    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", full_save)
    path = out / results_folder.CHECKPOINT_DIR
  with pytest.raises(results_folder.ResultsDirError) as e:
    run(out)
  assert str(e.value).startswith(f"{path}: ")
  assert "No space left on device" in str(e.value)
  assert "`resume=True`" in str(e.value)  # the binaries show --resume
  assert "--resume" in cli.flag_text(str(e.value))
  monkeypatch.undo()
  run(out, resume=True)  # Space freed: the run completes, rows intact.
  assert (out / results_folder.METRICS_FILE).read_bytes() == finished[1]


def test_an_out_dir_that_is_a_file_is_reported_as_a_file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("x")
  with pytest.raises(results_folder.ResultsDirError, match="is a file"):
    results_folder.check_writable(str(path))


@pytest.mark.parametrize("module,args,message", [
    ("train", ["stray"], r"error: unexpected arguments: \['stray'\]"),
    ("train", ["--num_workers=5000"], "error: --num_workers must leave"),
    ("train", [f"--seed={2**63}"], "error: --seed must be"),
    ("train", [f"--seed={2**32}"], "error: --seed must be"),
    ("train", ["--out_dir={file}"], r"error: --out_dir .* is a file"),
    ("benchmark", ["--models=mlp", "--repeats=0"], "error: .*repeats"),
    ("benchmark", ["--smoke", "--json_out={file}/out.json"],
     r"error: --json_out .* cannot be created: .* is not a folder"),
    ("benchmark", ["stray"], r"error: unexpected arguments"),
    ("reproduce_paper", ["--out_dir={out}", "stray"],
     r"error: unexpected arguments"),
    ("plot", ["{bad_metrics}"], r"error: .*metrics\.jsonl: line 1"),
    ("plot", [], r"error: usage: python -m experiments.plot"),
    # Found by the sweep (round two): the whole help, or a run with NaN.
    ("crosscheck_torch", ["stray"], r"error: unexpected arguments"),
    ("crosscheck_torch", ["--report_steps=abc"],
     "error: --report_steps must be integers"),
    ("crosscheck_torch", ["--lr=nan"], "error: --lr must be a number > 0"),
    ("crosscheck_torch", ["--batch_size=0"], "error: --batch_size must be"),
    ("crosscheck_torch", [f"--seed={2**63}"], "error: --seed must be"),
    ("hessian_benchmark", ["--models="], "error: --models must not be empty"),
])
def test_bad_command_lines_are_one_line_errors(tmp_path, module, args,
                                               message):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  bad = tmp_path / "bad_run"
  bad.mkdir()
  (bad / results_folder.CONFIG_FILE).write_text(json.dumps(
      {"config": CFG.resolve().to_dict(), "data_source": "synthetic"}))
  (bad / results_folder.METRICS_FILE).write_text('{"round": 0,\n')
  out = tmp_path / "out"
  args = [a.format(file=a_file, bad_metrics=bad, out=out) for a in args]
  if module == "crosscheck_torch":  # Short, should a bad value be taken.
    args = ["--data_source=synthetic", "--steps=2", "--report_steps=1",
            "--nocontrol", *args]
  if module == "train":
    args = [*TRAIN, *args]
    if not any(a.startswith("--out_dir") for a in args):
      args.append(f"--out_dir={out}")
  proc = run_binary(module, *args)
  assert proc.returncode == 1, (proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr
  lines = error_lines(proc.stderr)
  assert len(lines) == 1, proc.stderr
  assert re.match(message, lines[0]), lines[0]
  if module == "plot" and args:
    assert str(bad / results_folder.METRICS_FILE) in lines[0]
  assert "samples/s" not in proc.stdout  # No benchmark ran.
  assert not out.exists()
