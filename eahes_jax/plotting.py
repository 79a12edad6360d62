"""The paper's Figures 3-5 and the results table, from stored results alone."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from eahes_jax import experiment
from eahes_jax import methods

_STYLE = {  # Method -> matplotlib style, stable across figures.
    "EASGD": dict(color="tab:gray", ls="--"),
    "EAMSGD": dict(color="tab:brown", ls="--"),
    "EAHES": dict(color="tab:blue"),
    "EAHES-O": dict(color="tab:green"),
    "EAHES-OM": dict(color="tab:red"),
    "DEAHES-O": dict(color="tab:purple", lw=2),
}


@dataclasses.dataclass
class RunCurves:
  """One stored run's evaluation curves.

  Attributes:
    name: the run's folder name.
    config: its config.json ``config`` record.
    data_source: where its MNIST came from.
    eval_rounds: (E,) evaluated rounds.
    test_accuracy: (S, E) per seed.
    train_loss: (S, E) per seed (master's loss on the training subset).
    complete: whether the run finished.
  """

  name: str
  config: dict[str, Any]
  data_source: str
  eval_rounds: np.ndarray
  test_accuracy: np.ndarray
  train_loss: np.ndarray
  complete: bool

  @property
  def key(self) -> tuple[str, int, int, float]:
    c = self.config
    return (c["method"], c["num_workers"], c["comm_period"],
            c["overlap_ratio"])


def load_run(run_dir: str) -> RunCurves | None:
  """Reads one results folder; None if it holds no evaluated rounds."""
  cfg_path = os.path.join(run_dir, experiment.CONFIG_FILE)
  if not os.path.exists(cfg_path) or not os.path.exists(
      os.path.join(run_dir, experiment.METRICS_FILE)):
    return None
  try:
    with open(cfg_path) as f:
      record = json.load(f)
    record["config"]["method"]  # pylint: disable=pointless-statement
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{cfg_path}: not a run record ({e!r})") from None
  metrics_path = os.path.join(run_dir, experiment.METRICS_FILE)
  try:
    rows = [r for r in experiment.read_metrics(run_dir)
            if r["test_accuracy"] is not None]
    if not rows:
      return None
    seeds = sorted({r["seed"] for r in rows})
    rounds = sorted({r["round"] for r in rows})
    # Keep the rounds every seed has reached (a partial chunk has all seeds).
    acc = np.full((len(seeds), len(rounds)), np.nan)
    loss = np.full_like(acc, np.nan)
    si = {s: i for i, s in enumerate(seeds)}
    ri = {r: i for i, r in enumerate(rounds)}
    for r in rows:
      acc[si[r["seed"]], ri[r["round"]]] = r["test_accuracy"]
      loss[si[r["seed"]], ri[r["round"]]] = r["train_loss"]
  except (KeyError, TypeError) as e:  # Rows that are not ours.
    what = f"a row lacks {e}" if isinstance(e, KeyError) else str(e)
    raise ValueError(f"{metrics_path}: not a metrics file ({what})") from None
  return RunCurves(os.path.basename(os.path.normpath(run_dir)),
                   record["config"], record.get("data_source", "?"),
                   np.asarray(rounds), acc, loss,
                   experiment.is_complete(run_dir))


def load_results(results_dir: str) -> list[RunCurves]:
  """Every run under ``results_dir`` (a grid folder or one run's folder)."""
  single = load_run(results_dir)
  if single is not None:
    return [single]
  runs = []
  for root, dirs, _ in os.walk(results_dir):
    dirs.sort()
    for d in dirs:
      run = load_run(os.path.join(root, d))
      if run is not None:
        runs.append(run)
  return runs


def _band(ax, run: RunCurves, values: np.ndarray, label: str,
          **style) -> None:
  mean = np.nanmean(values, axis=0)
  std = np.nanstd(values, axis=0)
  line, = ax.plot(run.eval_rounds, mean, label=label, **style)
  if values.shape[0] > 1:
    ax.fill_between(run.eval_rounds, mean - std, mean + std,
                    color=line.get_color(), alpha=0.15, lw=0)


def _grid_runs(runs: list[RunCurves]) -> dict[tuple[int, int], list[RunCurves]]:
  """Runs of the main grid (each method at its default overlap) by (k, τ)."""
  panels: dict[tuple[int, int], list[RunCurves]] = {}
  for run in runs:
    method, k, tau, r = run.key
    spec = methods.methods().get(method)
    if spec is None:
      continue
    default_r = methods.default_overlap_ratio(spec, k)
    if abs(r - default_r) > 1e-9:
      continue
    panels.setdefault((k, tau), []).append(run)
  return panels


def _order(runs: list[RunCurves]) -> list[RunCurves]:
  known = list(methods.PAPER_METHODS)
  return sorted(runs, key=lambda r: (known.index(r.key[0])
                                     if r.key[0] in known else len(known),
                                     r.key[0]))


def plot_methods(runs: list[RunCurves], metric: str, path: str) -> bool:
  """Figure 4 (metric='test_accuracy') or 5 ('train_loss'): a panel per (k, τ).

  Returns:
    Whether a figure was written (False when no grid runs are present).
  """
  panels = _grid_runs(runs)
  if not panels:
    return False
  ks = sorted({k for k, _ in panels})
  taus = sorted({t for _, t in panels})
  fig, axes = plt.subplots(len(ks), len(taus), squeeze=False,
                           figsize=(4.2 * len(taus), 3.4 * len(ks)),
                           sharex=True)
  for i, k in enumerate(ks):
    for j, tau in enumerate(taus):
      ax = axes[i][j]
      for run in _order(panels.get((k, tau), [])):
        _band(ax, run, getattr(run, metric), run.key[0],
              **_STYLE.get(run.key[0], {}))
      ax.set_title(f"k = {k}, τ = {tau}")
      ax.grid(alpha=0.3)
      if metric == "train_loss":
        ax.set_yscale("log")
      if i == len(ks) - 1:
        ax.set_xlabel("communication round")
      if j == 0:
        ax.set_ylabel("test accuracy" if metric == "test_accuracy"
                      else "training loss")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels),
             frameon=False)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_overlap(runs: list[RunCurves], path: str, method: str = "EAHES-O",
                 num_workers: int = 4, comm_period: int = 1) -> bool:
  """Figure 3: test accuracy against rounds, one curve per overlap ratio."""
  sweep = sorted((r for r in runs
                  if r.key[:3] == (method, num_workers, comm_period)),
                 key=lambda r: r.key[3])
  if len(sweep) < 2:
    return False
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for run in sweep:
    _band(ax, run, run.test_accuracy, f"r = {100 * run.key[3]:g} %")
  ax.set_title(f"{method}, k = {num_workers}, τ = {comm_period}")
  ax.set_xlabel("communication round")
  ax.set_ylabel("test accuracy")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def results_table(runs: list[RunCurves]) -> str:
  """Markdown: final test accuracy and training loss, mean ± std over seeds."""
  lines = ["| method | k | τ | r | rounds | seeds | test accuracy |"
           " training loss |", "|---|---|---|---|---|---|---|---|"]
  ordered = sorted(_order(runs), key=lambda r: (r.key[1], r.key[2]))
  for run in ordered:
    acc = run.test_accuracy[:, -1]
    loss = run.train_loss[:, -1]
    flag = "" if run.complete else " (incomplete)"
    lines.append(
        f"| {run.key[0]} | {run.key[1]} | {run.key[2]} |"
        f" {100 * run.key[3]:g} % | {int(run.eval_rounds[-1])}{flag} |"
        f" {acc.size} | {acc.mean():.4f} ± {acc.std():.4f} |"
        f" {loss.mean():.4f} ± {loss.std():.4f} |")
  return "\n".join(lines) + "\n"


def make_figures(results_dir: str, out_dir: str | None = None) -> list[str]:
  """Writes Figures 3, 4, 5 (PNG) and results.md; returns the paths written.

  Raises:
    FileNotFoundError: if ``results_dir`` holds no evaluated runs.
  """
  runs = load_results(results_dir)
  if not runs:
    raise FileNotFoundError(f"no results with evaluations in {results_dir!r}")
  out_dir = out_dir or results_dir
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name, ok in (
      ("figure3_overlap.png",
       lambda p: plot_overlap(runs, p)),
      ("figure4_test_accuracy.png",
       lambda p: plot_methods(runs, "test_accuracy", p)),
      ("figure5_training_loss.png",
       lambda p: plot_methods(runs, "train_loss", p))):
    path = os.path.join(out_dir, name)
    if ok(path):
      written.append(path)
  path = os.path.join(out_dir, "results.md")
  with open(path, "w") as f:
    f.write(results_table(runs))
  written.append(path)
  return written
