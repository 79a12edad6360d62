"""Checkpoint and resume, determinism, numerical guards, bad input (issue 8).

Every scenario runs ``python -m experiments.train`` in a subprocess, as a
preempted Colab run would meet it: killed with SIGKILL at an arbitrary moment,
stopped with SIGTERM, blown up by a huge learning rate, or pointed at bad
files. A run that is interrupted and resumed must write exactly the metrics
rows of an uninterrupted run of the same configuration (compared as parsed
JSON, i.e. bit for bit: the floats are float32 values printed exactly); that
reference run is made once for the module. A refused run must exit non-zero
with a one-line message and write nothing.

Run as root (as on most CI machines), ``chmod`` does not stop writes; the
read-only ``--out_dir`` case therefore uses a folder below a regular file,
which no user can create, and the ``chmod 0o500`` case only runs as non-root.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import types

import jax
import numpy as np
import pytest

from eahes_jax import checkpoint as checkpoint_lib
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import experiment
from eahes_jax import simulator
from eahes_jax import results_folder
from tests.conftest import tiny_mnist

REPO = pathlib.Path(__file__).resolve().parent.parent

# Five chunks of two rounds; a checkpoint after each; two seeds side by side.
RUN = ("--model=mlp", "--data_source=sample", "--train_eval_size=200",
       "--num_workers=2", "--rounds=10", "--eval_every=2",
       "--checkpoint_every=2", "--num_seeds=2")
_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def train_cmd(*args: str) -> list[str]:
  return [sys.executable, "-m", "experiments.train", *args]


def run_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(train_cmd(*args), cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines()
          if l.strip() and not _LOG_LINE.match(l)]


def last_round_written(out: pathlib.Path) -> int:
  """The highest round with a complete row in the metrics file (-1: none)."""
  try:
    text = (out / results_folder.METRICS_FILE).read_text()
  except FileNotFoundError:
    return -1
  complete = text.split("\n")[:-1]  # The last piece may be a cut row.
  return max((json.loads(l)["round"] for l in complete if l), default=-1)


def signal_after(out: pathlib.Path, sig: int, after_round: int,
                 *args: str) -> subprocess.CompletedProcess:
  """Starts a run, sends ``sig`` once rows past ``after_round`` are written."""
  proc = subprocess.Popen(train_cmd(*RUN, f"--out_dir={out}", *args),
                          cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 240
  try:
    while last_round_written(out) <= after_round:
      if proc.poll() is not None or time.monotonic() > deadline:
        out_, err = proc.communicate()
        pytest.fail(f"the run ended (rc {proc.returncode}) before round"
                    f" {after_round + 1}:\n{out_}\n{err}")
      time.sleep(0.005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  # Interrupted before the end, or the test proved nothing.
  assert not results_folder.is_complete(str(out)), (
      "the run finished before the signal arrived; the machine is too fast"
      " for this test's timing")
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                     stderr)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
  """An uninterrupted run: its folder and its metrics rows."""
  out = tmp_path_factory.mktemp("baseline") / "run"
  proc = run_train(*RUN, f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  rows = results_folder.read_metrics(str(out))
  assert [(r["round"], r["seed"]) for r in rows] == [
      (t, s) for t in range(11) for s in (0, 1)]
  return out, rows


# ------------------------------------------------------------ determinism --


def test_same_config_and_seed_are_bit_identical(baseline, tmp_path):
  base_dir, rows = baseline
  proc = run_train(*RUN, f"--out_dir={tmp_path / 'again'}")
  assert proc.returncode == 0, proc.stderr
  assert results_folder.read_metrics(str(tmp_path / "again")) == rows
  # Not vacuous: the seeds' own rows differ from each other.
  last = [r for r in rows if r["round"] == 10]
  assert last[0]["log_distance"] != last[1]["log_distance"]


def test_execution_strategies_agree_only_to_float_tolerance():
  # map and vmap compile different programs: the random draws (batches,
  # failures) are the same, the float results agree to rounding, not bits.
  cfg = config_lib.SimConfig(model="mlp", method="DEAHES-O", num_workers=2,
                             comm_period=2, rounds=4, batch_size=8,
                             eval_every=2, train_eval_size=64,
                             eval_batch_size=64)
  runs = [simulator.run(cfg.replace(execution=e), tiny_mnist())
          for e in ("map", "vmap")]
  a, b = (r.metrics for r in runs)
  np.testing.assert_array_equal(a.connected, b.connected)
  np.testing.assert_array_equal(a.local_steps, b.local_steps)
  for name in ("train_loss", "worker_loss", "log_distance", "h_worker",
               "h_master"):
    np.testing.assert_allclose(getattr(a, name), getattr(b, name),
                               rtol=1e-4, atol=1e-5, err_msg=name)
  for name in simulator.EvalMetrics._fields:
    np.testing.assert_allclose(getattr(runs[0].evals, name),
                               getattr(runs[1].evals, name),
                               rtol=1e-4, atol=1e-5, err_msg=name)


# ------------------------------------------------------ kill and resume --


def test_sigkill_then_resume_matches_an_uninterrupted_run(baseline, tmp_path):
  _, rows = baseline
  out = tmp_path / "killed"
  killed = signal_after(out, signal.SIGKILL, 2)
  assert killed.returncode == -signal.SIGKILL
  ckpt = checkpoint_lib.Checkpointer(str(out / results_folder.CHECKPOINT_DIR))
  kept = ckpt.latest_round()
  ckpt.close()
  assert kept is not None and 2 <= kept <= 10
  resumed = run_train(*RUN, f"--out_dir={out}", "--resume")
  assert resumed.returncode == 0, resumed.stderr
  assert f"resumed from the checkpoint at round {kept}" in resumed.stdout
  # Same rows, none missing, none repeated, nothing cut.
  assert results_folder.read_metrics(str(out)) == rows
  assert (out / results_folder.METRICS_FILE).read_text().endswith("}\n")
  assert results_folder.is_complete(str(out))


def test_sigterm_saves_a_checkpoint_and_resume_completes(baseline, tmp_path):
  _, rows = baseline
  out = tmp_path / "terminated"
  stopped = signal_after(out, signal.SIGTERM, 1)
  assert stopped.returncode == 130
  assert "Traceback" not in stopped.stderr
  lines = error_lines(stopped.stderr)
  assert len(lines) == 1, stopped.stderr
  match = re.fullmatch(r"error: stopped by SIGTERM after (\d+) rounds;"
                       r" checkpoint saved, continue with --resume", lines[0])
  assert match, lines[0]
  done = int(match.group(1))
  ckpt = checkpoint_lib.Checkpointer(str(out / results_folder.CHECKPOINT_DIR))
  assert ckpt.latest_round() == done
  ckpt.close()
  # The rows on disk are exactly those of the rounds the checkpoint holds.
  assert results_folder.read_metrics(str(out)) == [
      r for r in rows if r["round"] <= done]
  resumed = run_train(*RUN, f"--out_dir={out}", "--resume")
  assert resumed.returncode == 0, resumed.stderr
  assert results_folder.read_metrics(str(out)) == rows


def test_sigterm_saves_even_without_periodic_checkpoints(baseline, tmp_path):
  _, rows = baseline
  out = tmp_path / "no_periodic"
  stopped = signal_after(out, signal.SIGTERM, 1, "--checkpoint_every=0")
  assert stopped.returncode == 130
  assert "checkpoint saved" in stopped.stderr
  ckpt = checkpoint_lib.Checkpointer(str(out / results_folder.CHECKPOINT_DIR))
  assert ckpt.latest_round() is not None
  ckpt.close()
  resumed = run_train(*RUN, f"--out_dir={out}", "--checkpoint_every=0",
                      "--resume")
  assert resumed.returncode == 0, resumed.stderr
  assert results_folder.read_metrics(str(out)) == rows


# -------------------------------------------------------- numerical guard --


def test_nonfinite_stops_the_run_and_keeps_the_last_checkpoint(
    tmp_path, sample_mnist):
  out = tmp_path / "nan"
  args = ("--model=mlp", "--data_source=sample", "--train_eval_size=200",
          "--num_workers=2", "--rounds=6", "--eval_every=1",
          "--checkpoint_every=1", "--lr=1e30", f"--out_dir={out}")
  proc = run_train(*args)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  lines = error_lines(proc.stderr)
  assert len(lines) == 1, proc.stderr
  name = (r"(?:loss|gradient|Hessian diagonal|parameters"
          r"|(?:master )?parameters after the exchange)")
  match = re.fullmatch(
      rf"error: non-finite ({name}(?:, {name})*) in round"
      r" (\d+), worker (\d+) \(seed 0\); .*", lines[0])
  assert match, lines[0]
  bad_round, worker = int(match.group(2)), int(match.group(3))
  assert bad_round >= 2 and worker in (0, 1)
  assert not results_folder.is_complete(str(out))
  # Metrics stop at the last good round; the checkpoint there restores to a
  # finite state.
  assert max(r["round"] for r in results_folder.read_metrics(str(out))) == (
      bad_round - 1)
  record = json.loads((out / results_folder.CONFIG_FILE).read_text())
  config = config_lib.SimConfig.from_dict(record["config"])
  ckpt = checkpoint_lib.Checkpointer(str(out / results_folder.CHECKPOINT_DIR))
  assert ckpt.latest_round() == bad_round - 1
  like = simulator.Simulation(config, sample_mnist).init_state()
  state, progress = ckpt.restore(like)
  ckpt.close()
  assert progress.rounds_done == bad_round - 1
  assert int(state.round[0]) == bad_round - 1
  for leaf in jax.tree_util.tree_leaves((state.workers, state.master)):
    assert np.all(np.isfinite(np.asarray(leaf)))


# -------------------------------------------------------------- bad input --


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_another_configuration_is_refused(baseline, tmp_path):
  base_dir, _ = baseline
  out = tmp_path / "other"
  shutil.copytree(base_dir, out)
  before = _snapshot(out)
  other = run_train(*RUN, f"--out_dir={out}", "--lr=0.02", "--alpha=0.2",
                    "--resume")
  same_without_resume = run_train(*RUN, f"--out_dir={out}")
  complete_resumed = run_train(*RUN, f"--out_dir={out}", "--resume")
  for proc in (other, same_without_resume):
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1, proc.stderr
  assert "differs in: alpha, lr" in other.stderr
  assert "refusing to mix" in other.stderr
  assert "already holds this run; pass --resume" in (
      same_without_resume.stderr)
  # Resuming a finished run reports it and recomputes nothing.
  assert complete_resumed.returncode == 0, complete_resumed.stderr
  assert complete_resumed.stdout.startswith("already complete: ")
  assert _snapshot(out) == before  # Nothing rewritten, nothing added.


def _unwritable(tmp_path: pathlib.Path, how: str) -> pathlib.Path:
  if how == "below_a_file":
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "out"
  if os.geteuid() == 0:
    pytest.skip("root writes into a chmod 0o500 folder anyway")
  ro = tmp_path / "read_only"
  ro.mkdir()
  ro.chmod(0o500)
  return ro / "out"


@pytest.mark.parametrize("how", ["below_a_file", "chmod_0o500"])
def test_an_unwritable_out_dir_fails_before_training(tmp_path, how):
  out = _unwritable(tmp_path, how)
  try:
    proc = run_train(*RUN, f"--out_dir={out}")
  finally:
    if how == "chmod_0o500":
      out.parent.chmod(0o700)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  lines = error_lines(proc.stderr)
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"error: --out_dir {str(out)!r} is not"
                             " writable")
  assert "round" not in proc.stdout  # No training started.
  assert not out.exists()


def test_no_free_space_fails_before_anything_compiles(tmp_path, monkeypatch):
  def no_compile(*a, **k):
    raise AssertionError("a simulation was built for a refused run")

  monkeypatch.setattr(simulator, "Simulation", no_compile)
  monkeypatch.setattr(results_folder.shutil, "disk_usage",
                      lambda p: types.SimpleNamespace(
                          total=10 << 30, used=10 << 30, free=1 << 20))
  out = tmp_path / "full"
  config = config_lib.SimConfig(model="mlp", num_workers=2, rounds=2,
                                batch_size=8)  # No larger than the data.
  tiny = data_lib.MNIST(*(np.zeros(s, dt) for s, dt in (
      ((8, 28, 28, 1), np.float32), ((8,), np.int32),
      ((4, 28, 28, 1), np.float32), ((4,), np.int32))), source="synthetic")
  with pytest.raises(results_folder.ResultsDirError, match=r"1\.0 MiB free"):
    experiment.run_experiment(config, str(out), data=tiny)
  assert not (out / results_folder.CONFIG_FILE).exists()
  assert not (out / results_folder.METRICS_FILE).exists()


def _write_idx(path: pathlib.Path, array: np.ndarray, magic: int) -> None:
  header = struct.pack(">I", magic) + b"".join(
      struct.pack(">I", d) for d in array.shape)
  path.write_bytes(header + array.astype(np.uint8).tobytes())


def _idx_folder(folder: pathlib.Path) -> pathlib.Path:
  """A small, valid IDX MNIST (random digits) in ``folder``."""
  folder.mkdir()
  rng = np.random.default_rng(0)
  for split, n in (("train", 64), ("t10k", 32)):
    _write_idx(folder / f"{split}-images-idx3-ubyte",
               rng.integers(0, 256, (n, 28, 28)), 2051)
    _write_idx(folder / f"{split}-labels-idx1-ubyte",
               rng.integers(0, 10, n), 2049)
  return folder


@pytest.mark.parametrize("defect,message", [
    ("truncated", r"train-images-idx3-ubyte: truncated: the header announces"
                  r" 64 images"),
    ("corrupt_gzip", r"train-images-idx3-ubyte\.gz: cannot read gzip file"),
])
def test_a_bad_dataset_file_is_a_one_line_error(tmp_path, defect, message):
  data_dir = _idx_folder(tmp_path / "mnist")
  images = data_dir / "train-images-idx3-ubyte"
  if defect == "truncated":
    images.write_bytes(images.read_bytes()[:5000])
  else:
    images.unlink()
    (data_dir / "train-images-idx3-ubyte.gz").write_bytes(
        b"\x1f\x8b\x08\x00" + os.urandom(400))
  out = tmp_path / "out"
  proc = run_train("--model=mlp", "--data_source=idx",
                   f"--mnist_dir={data_dir}", f"--out_dir={out}")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  lines = error_lines(proc.stderr)
  assert len(lines) == 1, proc.stderr
  assert re.search(message, lines[0]), lines[0]
  assert not out.exists()  # Nothing written for a refused run.


def _two_at_once(monkeypatch, name, call):
  """Runs ``call`` in two threads, ``os.<name>`` held at a barrier so that
  both have written their file before either renames or removes it (as two
  processes started together can); returns the errors raised."""
  real = getattr(os, name)
  gate, order, errors = threading.Barrier(2), threading.Lock(), []

  def gated(*args):
    gate.wait(timeout=30)
    with order:
      return real(*args)

  monkeypatch.setattr(os, name, gated)

  def worker():
    try:
      call()
    except Exception as e:  # pylint: disable=broad-except
      errors.append(repr(e))

  threads = [threading.Thread(target=worker) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return errors


def test_two_processes_write_one_record_at_once(tmp_path, monkeypatch):
  # Two processes starting one grid both write its grid.json/study.json: a
  # shared temporary name made the later rename fail.
  path = tmp_path / "study.json"
  assert _two_at_once(monkeypatch, "replace", lambda: results_folder.write_json(
      str(path), {"study": "x"})) == []
  assert json.loads(path.read_text()) == {"study": "x"}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["study.json"]
  assert (path.stat().st_mode & 0o777) == 0o644


def test_two_processes_probe_one_folder_at_once(tmp_path, monkeypatch):
  # check_writable's probe file, shared, was removed under the other's feet.
  assert _two_at_once(monkeypatch, "remove", lambda: (
      results_folder.check_writable(str(tmp_path)))) == []
  assert list(tmp_path.iterdir()) == []
