"""The paper's Figures 3-5 and the results table, from stored results alone.

Figures are drawn on `matplotlib.figure.Figure` objects, never through
pyplot's global state, so importing this module leaves matplotlib's backend
alone (inline plots in a notebook keep working) and the binaries need no
display. Every method has its own colour, line style and marker; a seed band
(mean ± std) is a light fill edged by thin lines in the method's style, so
overlapping bands stay apart; panels of a row share their y-axis; a caption
line under each figure says which model, data, rounds and seeds it shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from matplotlib import figure as figure_lib
import numpy as np

from eahes_jax import methods
from eahes_jax import stats
from eahes_jax import results_folder

_STYLE = {  # Method -> matplotlib style, stable across figures.
    "EASGD": dict(color="tab:gray", ls="--", marker="o"),
    "EAMSGD": dict(color="tab:brown", ls="-.", marker="s"),
    "EAHES": dict(color="tab:blue", ls="-", marker="^"),
    "EAHES-O": dict(color="tab:green", ls=":", marker="v"),
    "EAHES-OM": dict(color="tab:red", ls=(0, (6, 2, 1, 2)), marker="D"),
    "DEAHES-O": dict(color="tab:purple", ls="-", marker="*", lw=2),
}
# Styles of curves that are not methods (e.g. the overlap ratios), by index.
_CYCLE = [
    dict(color="tab:blue", ls="-", marker="o"),
    dict(color="tab:orange", ls="--", marker="s"),
    dict(color="tab:green", ls="-.", marker="^"),
    dict(color="tab:red", ls=":", marker="v"),
    dict(color="tab:purple", ls=(0, (6, 2, 1, 2)), marker="D"),
    dict(color="tab:brown", ls=(0, (1, 1)), marker="P"),
]
# About this many markers per curve, whatever the number of evaluations.
_MARKERS_PER_CURVE = 8


def style(label: str, index: int = 0) -> dict[str, Any]:
  """The line style of a method (by name), else the index-th of a cycle."""
  if label in _STYLE:
    return dict(_STYLE[label])
  return dict(_CYCLE[index % len(_CYCLE)])


@dataclasses.dataclass
class RunCurves:
  """One stored run's evaluation curves.

  Attributes:
    name: the run's folder name.
    config: its config.json ``config`` record.
    data_source: where its MNIST came from.
    seeds: (S,) the seeds, in the order of the rows below.
    eval_rounds: (E,) evaluated rounds.
    test_accuracy: (S, E) per seed.
    train_loss: (S, E) per seed (master's loss on the training subset).
    complete: whether the run finished.
    wall_time_s: (S, E) seconds at each evaluation, for runs whose metrics
      have the ``wall_time_s`` column (the Ray runtime's); else None.
  """

  name: str
  config: dict[str, Any]
  data_source: str
  seeds: np.ndarray
  eval_rounds: np.ndarray
  test_accuracy: np.ndarray
  train_loss: np.ndarray
  complete: bool
  wall_time_s: np.ndarray | None = None

  @property
  def key(self) -> tuple[str, int, int, float]:
    c = self.config
    return (c["method"], c["num_workers"], c["comm_period"],
            c["overlap_ratio"])


def load_run(run_dir: str) -> RunCurves | None:
  """Reads one results folder; None if it holds no evaluated rounds."""
  cfg_path = os.path.join(run_dir, results_folder.CONFIG_FILE)
  if not os.path.exists(cfg_path) or not os.path.exists(
      os.path.join(run_dir, results_folder.METRICS_FILE)):
    return None
  try:
    with open(cfg_path) as f:
      record = json.load(f)
    record["config"]["method"]  # pylint: disable=pointless-statement
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{cfg_path}: not a run record ({e!r})") from None
  metrics_path = os.path.join(run_dir, results_folder.METRICS_FILE)
  try:
    rows = [r for r in results_folder.read_metrics(run_dir)
            if r["test_accuracy"] is not None]
    if not rows:
      return None
    seeds = sorted({r["seed"] for r in rows})
    rounds = sorted({r["round"] for r in rows})
    # Keep the rounds every seed has reached (a partial chunk has all seeds).
    acc = np.full((len(seeds), len(rounds)), np.nan)
    loss = np.full_like(acc, np.nan)
    wall = np.full_like(acc, np.nan)
    si = {s: i for i, s in enumerate(seeds)}
    ri = {r: i for i, r in enumerate(rounds)}
    for r in rows:
      acc[si[r["seed"]], ri[r["round"]]] = r["test_accuracy"]
      loss[si[r["seed"]], ri[r["round"]]] = r["train_loss"]
      if r.get("wall_time_s") is not None:
        wall[si[r["seed"]], ri[r["round"]]] = r["wall_time_s"]
  except (KeyError, TypeError) as e:  # Rows that are not ours.
    what = f"a row lacks {e}" if isinstance(e, KeyError) else str(e)
    raise ValueError(f"{metrics_path}: not a metrics file ({what})") from None
  return RunCurves(os.path.basename(os.path.normpath(run_dir)),
                   record["config"], record.get("data_source", "?"),
                   np.asarray(seeds), np.asarray(rounds), acc, loss,
                   results_folder.is_complete(run_dir),
                   # Seconds only where every evaluation has them.
                   None if np.isnan(wall).any() else wall)


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


def band(ax, run: RunCurves, values: np.ndarray, label: str,
         index: int = 0, **overrides) -> None:
  """Mean over seeds as a line, ± sample std (ddof = 1) as a band edged in
  the line's style.

  Args:
    ax: the matplotlib axes.
    run: the run (its evaluated rounds are the x values).
    values: (seeds, evaluations) values to draw.
    label: the legend label; a method's name selects its style.
    index: the curve's index, for labels without a style of their own.
    **overrides: matplotlib style keywords that replace the defaults.
  """
  kw = style(label, index)
  kw.update(overrides)
  mean = np.nanmean(values, axis=0)
  std = (np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1
         else np.zeros_like(mean))
  n = len(run.eval_rounds)
  step = max(1, n // _MARKERS_PER_CURVE)
  # Markers of different curves fall on different evaluations.
  kw.setdefault("markevery", (index % step, step))
  kw.setdefault("markersize", 5)
  line, = ax.plot(run.eval_rounds, mean, label=label, **kw)
  if values.shape[0] > 1:
    color = line.get_color()
    ax.fill_between(run.eval_rounds, mean - std, mean + std, color=color,
                    alpha=0.10, lw=0)
    for edge in (mean - std, mean + std):
      ax.plot(run.eval_rounds, edge, color=color, ls=line.get_linestyle(),
              lw=0.6, alpha=0.6)


_band = band  # The name before band was public.


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


def order_runs(runs: list[RunCurves]) -> list[RunCurves]:
  """Runs in the paper's method order (unknown methods last, by name)."""
  known = list(methods.PAPER_METHODS)
  return sorted(runs, key=lambda r: (known.index(r.key[0])
                                     if r.key[0] in known else len(known),
                                     r.key[0]))


_order = order_runs  # The name before order_runs was public.


def _values(runs: list[RunCurves], field: str) -> str:
  found = sorted({str(run.config.get(field)) for run in runs})
  return "/".join(found)


def caption(runs: list[RunCurves]) -> str:
  """One line saying what the runs are: model, data, rounds, seeds, ...

  E.g. ``model small_cnn · data idx (60,000 train) · 40 rounds · 3 seeds ·
  failure rate 0.33 · evaluated every 10 rounds``. A field on which the runs
  differ lists every value, separated by "/".
  """
  seeds = sorted({str(run.test_accuracy.shape[0]) for run in runs})
  sources = sorted({run.data_source for run in runs})
  rates = sorted({f"{run.config.get('failure_rate', float('nan')):.2f}"
                  for run in runs})
  return (f"model {_values(runs, 'model')} · data {'/'.join(sources)} ·"
          f" {_values(runs, 'rounds')} rounds · {'/'.join(seeds)} seeds"
          f" (mean ± std) · failure rate {'/'.join(rates)} · evaluated every"
          f" {_values(runs, 'eval_every')} rounds")


def _new_figure(width: float, height: float) -> figure_lib.Figure:
  # A Figure of its own: no pyplot state, no backend switch.
  return figure_lib.Figure(figsize=(width, height))


def plot_methods(runs: list[RunCurves], metric: str, path: str) -> bool:
  """Figure 4 (metric='test_accuracy') or 5 ('train_loss'): a panel per (k, τ).

  Returns:
    Whether a figure was written (False when no grid runs are present).
  """
  fig = methods_figure(runs, metric)
  if fig is None:
    return False
  fig.savefig(path, dpi=110)
  return True


def methods_figure(runs: list[RunCurves], metric: str
                   ) -> figure_lib.Figure | None:
  """The figure `plot_methods` writes; None without grid runs.

  Rows are k, columns τ; the panels of a row share their y-axis, every panel
  the x-axis. A caption line under the panels says what the runs are.
  """
  panels = _grid_runs(runs)
  if not panels:
    return None
  ks = sorted({k for k, _ in panels})
  taus = sorted({t for _, t in panels})
  # Wide enough for the one-row legend and the caption under one panel too.
  fig = _new_figure(max(4.2 * len(taus), 8.5), 3.4 * len(ks) + 0.6)
  axes = fig.subplots(len(ks), len(taus), squeeze=False, sharex=True,
                      sharey="row")
  shown = [run for group in panels.values() for run in group]
  for i, k in enumerate(ks):
    for j, tau in enumerate(taus):
      ax = axes[i][j]
      for n, run in enumerate(order_runs(panels.get((k, tau), []))):
        band(ax, run, getattr(run, metric), run.key[0], index=n)
      if (k, tau) not in panels:  # A panel of the grid with no runs yet.
        ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center",
                va="center", color="0.5")
      ax.set_title(f"k = {k}, τ = {tau}")
      ax.grid(alpha=0.3)
      if metric == "train_loss":
        ax.set_yscale("log")
      if i == len(ks) - 1:
        ax.set_xlabel("communication round")
      if j == 0:
        ax.set_ylabel("test accuracy" if metric == "test_accuracy"
                      else "training loss")
  handles, labels = {}, []
  for ax in axes.flat:  # Every method once, whichever panel has it.
    for h, l in zip(*ax.get_legend_handles_labels()):
      if l not in handles:
        handles[l] = h
        labels.append(l)
  fig.legend([handles[l] for l in labels], labels, loc="lower center",
             ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 0.035))
  fig.text(0.5, 0.005, caption(shown), ha="center", va="bottom",
           fontsize=8, color="0.3")
  fig.tight_layout(rect=(0, 0.09, 1, 1))
  return fig


def plot_overlap(runs: list[RunCurves], path: str, method: str = "EAHES-O",
                 num_workers: int = 4, comm_period: int = 1) -> bool:
  """Figure 3: test accuracy against rounds, one curve per overlap ratio.

  Returns:
    Whether a figure was written (False without two or more ratios).
  """
  fig = overlap_figure(runs, method, num_workers, comm_period)
  if fig is None:
    return False
  fig.savefig(path, dpi=110)
  return True


def overlap_figure(runs: list[RunCurves], method: str = "EAHES-O",
                   num_workers: int = 4, comm_period: int = 1
                   ) -> figure_lib.Figure | None:
  """The figure `plot_overlap` writes; None without two or more ratios."""
  sweep = sorted((r for r in runs
                  if r.key[:3] == (method, num_workers, comm_period)),
                 key=lambda r: r.key[3])
  if len(sweep) < 2:
    return None
  fig = _new_figure(5.5, 4.4)
  ax = fig.subplots()
  for i, run in enumerate(sweep):
    band(ax, run, run.test_accuracy, f"r = {100 * run.key[3]:g} %", index=i)
  ax.set_title(f"{method}, k = {num_workers}, τ = {comm_period}")
  ax.set_xlabel("communication round")
  ax.set_ylabel("test accuracy")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.text(0.5, 0.005, caption(sweep), ha="center", va="bottom",
           fontsize=6.5, color="0.3", wrap=True)
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  return fig


def plot_time(runs: list[RunCurves], path: str) -> bool:
  """Test accuracy against wall-clock seconds, one line per run.

  Returns:
    Whether a figure was written (False when no run has ``wall_time_s``).
  """
  fig = time_figure(runs)
  if fig is None:
    return False
  fig.savefig(path, dpi=110)
  return True


def time_figure(runs: list[RunCurves]) -> figure_lib.Figure | None:
  """The figure `plot_time` writes; None when no run has seconds.

  Each run is a line (mean over its seeds of accuracy and of seconds at each
  evaluation), labelled by its method, and by its folder too where methods
  repeat; the x-axis is the run's own clock (the Ray runtime's master clock,
  from the moment every worker was up).
  """
  timed = [run for run in order_runs(runs) if run.wall_time_s is not None]
  if not timed:
    return None
  fig = _new_figure(6.5, 4.6)
  ax = fig.subplots()
  names = [run.key[0] for run in timed]
  for i, run in enumerate(timed):
    label = run.key[0] if names.count(run.key[0]) == 1 else (
        f"{run.key[0]} ({run.name})")
    kw = style(run.key[0], i)
    step = max(1, len(run.eval_rounds) // _MARKERS_PER_CURVE)
    kw.setdefault("markevery", (i % step, step))
    kw.setdefault("markersize", 5)
    ax.plot(np.nanmean(run.wall_time_s, axis=0),
            np.nanmean(run.test_accuracy, axis=0), label=label, **kw)
  ax.set_xlabel("wall-clock seconds")
  ax.set_ylabel("test accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.text(0.5, 0.005, caption(timed), ha="center", va="bottom",
           fontsize=6.5, color="0.3", wrap=True)
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  return fig


def results_table(runs: list[RunCurves]) -> str:
  """Markdown: final test accuracy and training loss, mean ± sample std
  (ddof = 1) over seeds."""
  lines = ["| method | k | τ | r | rounds | seeds | test accuracy |"
           " training loss |", "|---|---|---|---|---|---|---|---|"]
  ordered = sorted(order_runs(runs), key=lambda r: (r.key[1], r.key[2]))
  for run in ordered:
    acc = stats.describe(run.test_accuracy[:, -1])
    loss = stats.describe(run.train_loss[:, -1])
    flag = "" if run.complete else " (incomplete)"
    lines.append(
        f"| {run.key[0]} | {run.key[1]} | {run.key[2]} |"
        f" {100 * run.key[3]:g} % | {int(run.eval_rounds[-1])}{flag} |"
        f" {acc.n} | {acc.format()} | {loss.format()} |")
  return "\n".join(lines) + "\n"


TIME_FIGURE = "accuracy_vs_seconds.png"


def make_figures(results_dir: str, out_dir: str | None = None) -> list[str]:
  """Writes Figures 3, 4, 5 (PNG) and results.md; returns the paths written.

  Runs with wall-clock seconds (``wall_time_s``) also get ``TIME_FIGURE``,
  test accuracy against seconds.

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
       lambda p: plot_methods(runs, "train_loss", p)),
      (TIME_FIGURE, lambda p: plot_time(runs, p))):
    path = os.path.join(out_dir, name)
    if ok(path):
      written.append(path)
  path = os.path.join(out_dir, "results.md")
  with open(path, "w") as f:
    f.write(results_table(runs))
  written.append(path)
  return written
