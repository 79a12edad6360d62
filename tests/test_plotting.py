"""Figures: comparable panels, methods told apart, a caption, no backend."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from eahes_jax import config as config_lib
from eahes_jax import grid
from eahes_jax import plotting
from eahes_jax import results_folder

_METHODS = ("EASGD", "EAHES-O", "DEAHES-O")


def _write_run(root, method, k, tau, seeds=3, rounds=20, eval_every=5,
               seconds_per_round=None):
  """A results folder with made-up evaluations (no training); with
  ``seconds_per_round``, a ``wall_time_s`` column as the Ray runtime's."""
  config = config_lib.SimConfig(method=method, num_workers=k, comm_period=tau,
                                rounds=rounds, eval_every=eval_every,
                                num_seeds=seeds, model="mlp")
  run_dir = os.path.join(root, grid.run_name(config))
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, results_folder.CONFIG_FILE), "w") as f:
    json.dump({"config": config.resolve().to_dict(),
               "data_source": "sample"}, f)
  rng = np.random.default_rng(k * 10 + tau)
  with open(os.path.join(run_dir, results_folder.METRICS_FILE), "w") as f:
    for r in range(0, rounds + 1, eval_every):
      for s in range(seeds):
        row = dict.fromkeys(results_folder.METRIC_COLUMNS)
        row.update(round=r, seed=s,
                   test_accuracy=float(min(1, 0.1 + r / 30 * k / 4
                                           + 0.02 * rng.random())),
                   train_loss=float(2.3 / (1 + r * tau) + 0.01 * rng.random()))
        if seconds_per_round is not None:
          row["wall_time_s"] = r * seconds_per_round
        f.write(json.dumps(row) + "\n")
  return run_dir


@pytest.fixture
def grid_runs(tmp_path):
  for k in (4, 8):
    for tau in (1, 2):
      for m in _METHODS:
        _write_run(str(tmp_path), m, k, tau)
  return plotting.load_results(str(tmp_path))


def test_panels_of_a_row_share_their_y_axis(grid_runs):
  fig = plotting.methods_figure(grid_runs, "test_accuracy")
  axes = [ax for ax in fig.axes]
  assert len(axes) == 4  # k ∈ {4, 8} × τ ∈ {1, 2}.
  (a, b), (c, d) = axes[:2], axes[2:]
  assert a.get_shared_y_axes().joined(a, b)
  assert c.get_shared_y_axes().joined(c, d)
  assert not a.get_shared_y_axes().joined(a, c)  # Rows keep their own.
  assert a.get_ylim() == b.get_ylim()


def test_methods_differ_in_line_style_and_marker(grid_runs):
  fig = plotting.methods_figure(grid_runs, "train_loss")
  ax = fig.axes[0]
  mains = {l.get_label(): (l.get_linestyle(), l.get_marker(), l.get_color())
           for l in ax.get_lines() if not l.get_label().startswith("_")}
  assert set(mains) == set(_METHODS)
  for i, field in enumerate(("line style", "marker", "colour")):
    assert len({v[i] for v in mains.values()}) == len(_METHODS), field


def test_bands_are_edged_in_their_method_colour(grid_runs):
  fig = plotting.methods_figure(grid_runs, "test_accuracy")
  ax = fig.axes[0]
  lines = ax.get_lines()
  for main in (l for l in lines if not l.get_label().startswith("_")):
    edges = [l for l in lines if l.get_label().startswith("_")
             and l.get_color() == main.get_color()]
    assert len(edges) == 2, main.get_label()  # mean − std and mean + std.
    assert all(e.get_linestyle() == main.get_linestyle() for e in edges)


def test_caption_names_model_data_rounds_and_seeds(grid_runs):
  fig = plotting.methods_figure(grid_runs, "test_accuracy")
  texts = [t.get_text() for t in fig.texts]
  assert len(texts) == 1
  assert texts[0] == plotting.caption(grid_runs)
  for part in ("model mlp", "data sample", "20 rounds", "3 seeds",
               "evaluated every 5 rounds"):
    assert part in texts[0], part


def test_caption_lists_every_value_where_runs_differ(tmp_path):
  _write_run(str(tmp_path / "a"), "EASGD", 4, 1, seeds=1, rounds=10)
  _write_run(str(tmp_path / "b"), "EASGD", 4, 2, seeds=2, rounds=20)
  text = plotting.caption(plotting.load_results(str(tmp_path)))
  assert "10/20 rounds" in text and "1/2 seeds" in text


def test_make_figures_writes_pngs(grid_runs, tmp_path):
  del grid_runs
  written = plotting.make_figures(str(tmp_path), str(tmp_path / "figs"))
  names = sorted(os.path.basename(p) for p in written)
  assert names == ["figure4_test_accuracy.png", "figure5_training_loss.png",
                   "results.md"]


def test_accuracy_against_seconds_only_for_runs_with_seconds(tmp_path):
  timed, untimed = tmp_path / "timed", tmp_path / "untimed"
  for m, per_round in (("EASGD", 0.5), ("DEAHES-O", 2.0)):
    _write_run(str(timed), m, 4, 1, seeds=1, seconds_per_round=per_round)
    _write_run(str(untimed), m, 4, 1, seeds=1)
  written = plotting.make_figures(str(timed), str(tmp_path / "f1"))
  assert str(tmp_path / "f1" / plotting.TIME_FIGURE) in written
  assert (tmp_path / "f1" / plotting.TIME_FIGURE).stat().st_size > 0
  # The per-round figures are there as before.
  assert str(tmp_path / "f1" / "figure4_test_accuracy.png") in written
  written = plotting.make_figures(str(untimed), str(tmp_path / "f2"))
  assert not any(plotting.TIME_FIGURE in p for p in written)
  assert not (tmp_path / "f2" / plotting.TIME_FIGURE).exists()


def test_time_figure_puts_each_run_at_its_own_seconds(tmp_path):
  for m, per_round in (("EASGD", 0.5), ("DEAHES-O", 2.0)):
    _write_run(str(tmp_path), m, 4, 1, seeds=1, seconds_per_round=per_round)
  runs = plotting.load_results(str(tmp_path))
  fig = plotting.time_figure(runs)
  ax = fig.axes[0]
  lines = {l.get_label(): l for l in ax.get_lines()}
  assert set(lines) == {"EASGD", "DEAHES-O"}
  for run in runs:
    line = lines[run.key[0]]
    per_round = 0.5 if run.key[0] == "EASGD" else 2.0
    np.testing.assert_allclose(line.get_xdata(), run.eval_rounds * per_round)
    np.testing.assert_allclose(line.get_ydata(), run.test_accuracy[0])
  assert ax.get_xlabel() == "wall-clock seconds"


def test_importing_plotting_leaves_the_backend_alone():
  code = ("import matplotlib; matplotlib.use('svg'); "
          "import eahes_jax.plotting; "
          "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
