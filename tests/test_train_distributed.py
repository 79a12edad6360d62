"""experiments.train_distributed fails in one line without Ray or a cluster."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(*args, env=None):
  return subprocess.run(
      [sys.executable, "-m", "experiments.train_distributed", "--rounds=1",
       "--model=mlp", "--data_source=sample", *args],
      capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
      env=env)


def _one_line(proc):
  assert proc.returncode == 1, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  return lines[0]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason='Ray is not installed (pip install -e ".[ray]")')
def test_unreachable_address_exits_with_one_line():
  line = _one_line(_run("--ray_address=127.0.0.1:9"))
  assert "127.0.0.1:9" in line and line.startswith("error: ")


def test_without_ray_names_the_extra(tmp_path):
  # A `ray` package that fails to import stands in for a missing Ray.
  (tmp_path / "ray").mkdir()
  (tmp_path / "ray" / "__init__.py").write_text(
      "raise ImportError('No module named ray')\n")
  env = dict(os.environ)
  env["PYTHONPATH"] = f"{tmp_path}:{REPO}"
  line = _one_line(_run(env=env))
  assert '.[ray]' in line


def test_kill_master_without_a_checkpoint_names_the_flag(tmp_path):
  # Refused before Ray starts: a master without a checkpoint cannot recover.
  line = _one_line(_run("--kill_master=1", f"--out_dir={tmp_path}"))
  assert line.startswith("error: --kill_master") and "checkpoint_every" in line
