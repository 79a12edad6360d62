"""Figures and tables of the fidelity studies, from stored results alone.

``write_report(results_dir, out_dir)`` reads a study folder written by
``studies.run_study`` (or the paper's grid folder) and writes what the README
shows: the claims table for the grid, the readings table, the learning-rate
table and figure, the weighting sweep's table and figure, and the mechanism's
event-aligned curves, ROC curves and table.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib.figure
import matplotlib.ticker
import numpy as np

from eahes_jax import claims
from eahes_jax import mechanism
from eahes_jax import plotting
from eahes_jax import stats
from eahes_jax import studies


def _save(fig: matplotlib.figure.Figure, path: str) -> str:
  fig.savefig(path, dpi=110)
  return path


def plot_mechanism(analyses: dict[str, mechanism.Analysis], path: str,
                   caption: str) -> str:
  """Event-aligned u and a (mean and ± 1 std band, the median dotted), one
  column a setting.

  Args:
    analyses: setting name -> its analysis.
    path: the PNG to write.
    caption: a line naming model, data, rounds and seeds.

  Returns:
    ``path``.
  """
  names = list(analyses)
  # Object API, not pyplot: no global backend, inline plots keep working.
  fig = matplotlib.figure.Figure(figsize=(3.6 * len(names), 5.6))
  axes = fig.subplots(2, len(names), squeeze=False, sharex=True,
                      sharey="row")
  x = mechanism.OFFSETS
  for j, name in enumerate(names):
    an = analyses[name]
    for i, (values, label, color) in enumerate((
        (an.u, "u − u(t₀ − 1)", "tab:blue"),
        (an.a, "raw score a", "tab:purple"))):
      ax = axes[i][j]
      mean = np.nanmean(values, axis=0)
      std = np.nanstd(values, axis=0, ddof=1)
      ax.plot(x, mean, color=color, marker="o", ms=3,
              label="before exchange, mean")
      ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2,
                      lw=0)
      # The median too: a few large moves can carry the mean.
      ax.plot(x, np.nanmedian(values, axis=0), color=color, ls=":", lw=1,
              label="median")
      if i == 1 and np.isfinite(an.a_after).any():
        ax.plot(x, np.nanmean(an.a_after, axis=0), color="tab:orange",
                ls="--", marker="s", ms=3, label="after exchange, mean")
      ax.axvline(0, color="k", lw=0.8, ls=":")
      ax.axhline(0, color="k", lw=0.5)
      ax.grid(alpha=0.3)
      if j == 0:
        ax.set_ylabel(label)
      if i == 0:
        ax.set_title(f"{name}\n({an.events} outage ends)", fontsize=9)
      else:
        ax.set_xlabel("rounds from the outage's end t₀")
  axes[1][0].legend(fontsize=8)
  fig.suptitle("Around a worker's return: mean ± 1 std over events (dotted:"
               " median)",
               fontsize=10)
  fig.text(0.5, 0.005, caption, ha="center", fontsize=8)
  fig.tight_layout(rect=(0, 0.03, 1, 0.96))
  return _save(fig, path)


def plot_roc(analyses: dict[str, mechanism.Analysis], path: str,
             caption: str) -> str:
  """ROC of "a low ⇒ rejoined within r rounds", before and after readings."""
  fig = matplotlib.figure.Figure(figsize=(5.4, 5.0))
  ax = fig.subplots()
  styles = ["-", "--", "-.", ":"]
  for i, (name, an) in enumerate(analyses.items()):
    if an.roc_before is None:
      continue
    line, = ax.plot(an.roc_before.fpr, an.roc_before.tpr,
                    ls=styles[i % len(styles)],
                    label=f"{name}: AUC {an.roc_before.auc:.2f}")
    if an.roc_after is not None:
      ax.plot(an.roc_after.fpr, an.roc_after.tpr, color=line.get_color(),
              ls=styles[i % len(styles)], alpha=0.45,
              label=f"  after-exchange reading: {an.roc_after.auc:.2f}")
  ax.plot([0, 1], [0, 1], color="k", lw=0.6)
  window = next(iter(analyses.values())).window
  ax.set_title(f"Does a separate rejoin rounds (t − t₀ < {window}) from"
               " healthy ones?", fontsize=9)
  ax.set_xlabel("healthy rounds flagged (false-positive rate)")
  ax.set_ylabel("rejoin rounds flagged (true-positive rate)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  fig.text(0.5, 0.005, caption, ha="center", fontsize=7)
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  return _save(fig, path)


def write_report(results_dir: str, out_dir: str | None = None) -> list[str]:
  """Writes a study folder's tables and figures; returns the paths written.

  For a grid folder (no study.json) it writes ``claims.md`` (complete runs
  only), ``paired_differences.png``, ``mechanism_events.md`` (the score
  around outage ends in its EAHES-O and DEAHES-O runs) and
  ``adahessian_over_rounds.md`` (EAHES − EASGD at every evaluation); for a
  study,
  ``<study>.md`` (its readings or sweep table), and ``lr_sweep.png`` for the
  learning-rate sweep, ``dw_sweep.png`` for the weighting sweep,
  ``label_skew_figure3.png`` (Figure 3 on the skewed shards) for the
  label-skew study, and
  ``mechanism_curves.png``, ``mechanism_roc.png`` and ``mechanism_events.md``
  for the mechanism study.

  Raises:
    FileNotFoundError: the folder holds no evaluated runs.
  """
  out_dir = out_dir or results_dir
  os.makedirs(out_dir, exist_ok=True)
  study = studies.read_study(results_dir)
  written = []

  def write(file: str, text: str) -> None:
    path = os.path.join(out_dir, file)
    with open(path, "w") as f:
      f.write(text)
    written.append(path)

  if study is None:
    runs = plotting.load_results(results_dir)
    if not runs:
      raise FileNotFoundError(
          f"no results with evaluations in {results_dir!r}")
    # A run still training would be judged at whatever round it reached.
    complete = [r for r in runs if r.complete]
    unfinished = sorted(r.name for r in runs if not r.complete)
    note = (f"\nNot finished, left out: {', '.join(unfinished)}.\n"
            if unfinished else "")
    write("claims.md", "## Final test accuracy\n\n"
          + claims.claims_table(complete, "final")
          + "\n## Test accuracy over the last third of the rounds\n\n"
          + claims.claims_table(complete, "late") + note)
    path = plot_paired_differences(
        runs, "EAHES-O", os.path.join(out_dir, "paired_differences.png"))
    if path is not None:
      written.append(path)
    # The score around outage ends in the grid's own EAHES-O and DEAHES-O
    # runs (the mechanism of §9, at the grid's length).
    analyses = mechanism.study_analyses(
        results_dir, sorted(r.name for r in complete
                            if r.key[0] in ("EAHES-O", "DEAHES-O")))
    if analyses:
      write("mechanism_events.md", mechanism.summary_table(analyses))
    # How AdaHessian's lead over SGD grows and fades (the claim's history).
    write("adahessian_over_rounds.md",
          claims.over_rounds_table(complete, "EAHES", "EASGD"))
    return written
  name = study.name
  stored = [plotting.load_run(os.path.join(results_dir, "runs", n))
            for n, _ in study.runs]
  stored = [r for r in stored if r is not None]
  if not stored:
    raise FileNotFoundError(f"no results with evaluations in {results_dir!r}")
  c = stored[0].config
  caption = (f"{c['model']}, MNIST ({stored[0].data_source}),"
             f" k = {c['num_workers']}, {c['rounds']} rounds,"
             f" {len(stored[0].seeds)} seeds, failure rate"
             f" {c['failure_rate']:.3g}")
  if name == "dw_sweep":
    write("dw_sweep.md", "## Test accuracy over the last third of the rounds"
          "\n\n" + studies.dw_sweep_table(study, results_dir, "late")
          + "\n## Final test accuracy\n\n"
          + studies.dw_sweep_table(study, results_dir, "final"))
    points, _ = studies.dw_sweep_results(study, results_dir)
    if points:
      written.append(plot_dw_sweep(
          points, os.path.join(out_dir, "dw_sweep.png"), caption))
  elif name == "lr_sweep":
    write("lr_sweep.md", studies.lr_sweep_table(results_dir))
    by_family, _ = studies.lr_sweep_results(results_dir)
    if by_family:
      written.append(plot_lr_sweep(
          by_family, os.path.join(out_dir, "lr_sweep.png"), caption))
  elif study.readings:
    write(f"{name}.md", "## Final test accuracy\n\n"
          + studies.readings_table(study, results_dir, "final")
          + "\n## Test accuracy over the last third of the rounds\n\n"
          + studies.readings_table(study, results_dir, "late"))
  if name == "label_skew":
    # Figure 3 on the skewed shards: a curve per overlap ratio.
    c0 = stored[0].config
    path = os.path.join(out_dir, "label_skew_figure3.png")
    if plotting.plot_overlap(stored, path, "EAHES-O", c0["num_workers"],
                             c0["comm_period"]):
      written.append(path)
  if name == "mechanism":
    analyses = mechanism.study_analyses(results_dir,
                                        [n for n, _ in study.runs])
    natural = {n: a for n, a in analyses.items() if n.startswith("EAHES-O")}
    if natural:
      written.append(plot_mechanism(
          natural, os.path.join(out_dir, "mechanism_curves.png"), caption))
      written.append(plot_roc(
          natural, os.path.join(out_dir, "mechanism_roc.png"), caption))
    write("mechanism_events.md", mechanism.summary_table(analyses))
  return written


def lr_sweep_points(by_family: dict[str, dict[float, dict[int, float]]]
                    ) -> dict[str, tuple[list[float], np.ndarray, np.ndarray]]:
  """What ``plot_lr_sweep`` draws: per family, its rates (ascending), the
  mean over seeds at each, and the half-width of the mean's 95 % Student-t
  interval, t_{0.975, n−1} · s / √n (0 for a single seed)."""
  points = {}
  for method, by_lr in sorted(by_family.items()):
    rates = sorted(by_lr)
    summaries = [stats.describe(list(by_lr[lr].values())) for lr in rates]
    means = np.array([d.mean for d in summaries])
    half = np.array([stats.t_quantile(0.95, d.n - 1) * d.std / np.sqrt(d.n)
                     if d.n > 1 else 0.0 for d in summaries])
    points[method] = (rates, means, half)
  return points


def plot_lr_sweep(by_family: dict[str, dict[float, dict[int, float]]],
                  path: str, caption: str = "") -> str:
  """Each family's test accuracy (last third of the rounds) against its
  learning rate (``lr_sweep_points``): the mean over seeds with a 95 %
  Student-t interval of the mean, on a log rate axis."""
  fig = matplotlib.figure.Figure(figsize=(6.4, 4.2))
  ax = fig.add_subplot()
  for method, (rates, means, half) in lr_sweep_points(by_family).items():
    ax.errorbar(rates, means, yerr=half, marker="o", capsize=3, label=method)
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("test accuracy, last third of the rounds")
  ax.set_title("Each family over its learning rate (mean, 95 % CI)")
  ax.grid(True, alpha=0.3)
  ax.legend()
  if caption:
    fig.subplots_adjust(bottom=0.2)  # room for the caption under the label
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7)
  return _save(fig, path)


def dw_sweep_series(points: Sequence[studies.DwPoint]
                    ) -> dict[tuple[str, int], list[studies.DwPoint]]:
  """What each line of ``plot_dw_sweep`` joins: the points of one failure
  setting and one p, by threshold from the most eager (k nearest 0)."""
  series: dict[tuple[str, int], list[studies.DwPoint]] = {}
  for p in points:
    series.setdefault((p.failures, p.history), []).append(p)
  return {key: sorted(ps, key=lambda p: -p.threshold)
          for key, ps in sorted(series.items())}


def plot_dw_sweep(points: Sequence[studies.DwPoint], path: str,
                  caption: str = "") -> str:
  """The weighting sweep in two panels: DEAHES-O − EAHES-O (paired, 95 %
  t interval) against the threshold |k|, a line per failure setting and p;
  and the same differences against the mean pull over all connected
  exchanges (``mechanism.Activity``), which is what the threshold sets."""
  fig = matplotlib.figure.Figure(figsize=(11, 4.4))
  left, right = fig.subplots(1, 2, sharey=True)
  colors = {}
  markers = {1: "o", 2: "s", 3: "^"}
  for (failures, history), ps in dw_sweep_series(points).items():
    color = colors.setdefault(failures, f"C{len(colors)}")
    mean = np.array([p.difference.mean for p in ps])
    err = np.array([[p.difference.mean - p.difference.low for p in ps],
                    [p.difference.high - p.difference.mean for p in ps]])
    kw = dict(color=color, marker=markers.get(history, "D"), capsize=3,
              label=f"{failures}, p = {history}")
    left.errorbar([-p.threshold for p in ps], mean, yerr=err, **kw)
    pull = np.array([p.activity.mean_pull for p in ps])
    # A run that stored no weights has no pull to place.
    has = np.isfinite(pull)
    right.errorbar(pull[has], mean[has], yerr=err[:, has], ls="none", **kw)
  for ax in (left, right):
    ax.axhline(0, color="k", lw=0.8)
    ax.grid(True, alpha=0.3)
  # Thresholds span decades; the pull may be 0 (a run that never pulled), so
  # its axis stays linear.
  left.set_xscale("log")
  # Labels on the decades only: minor ones collide over a short range.
  left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  left.set_xlabel("threshold |k| (smaller: pulls sooner)")
  left.set_ylabel("DEAHES-O − EAHES-O, same seed")
  left.set_title("Against the threshold")
  right.set_xlabel("mean pull s over connected exchanges")
  right.set_title("Against how hard it pulled")
  left.legend(fontsize=7)
  if caption:
    fig.text(0.5, 0.005, caption, ha="center", fontsize=8, color="0.3")
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  return _save(fig, path)


def plot_paired_differences(runs, reference: str, path: str) -> str | None:
  """Each method minus ``reference`` on the same seeds, against rounds.

  The line is the mean paired difference at every evaluation, the band its
  two-sided 95 % t interval: what the overlapping seed bands of Figure 4
  cannot show. One panel per (k, τ) that holds the reference.

  Args:
    runs: stored runs (``plotting.load_results``).
    reference: the method every other is paired against.
    path: the PNG to write.

  Returns:
    ``path``, or None when no panel holds the reference and another method.
  """
  panels = {key: p for key, p in claims.panels(runs).items()
            if reference in p and len(p) > 1}
  if not panels:
    return None
  keys = sorted(panels)
  fig = matplotlib.figure.Figure(figsize=(max(4.6 * len(keys), 8.5), 4.4))
  axes = fig.subplots(1, len(keys), squeeze=False, sharey=True)[0]
  for ax, key in zip(axes, keys):
    ref = panels[key][reference]
    for i, run in enumerate(plotting.order_runs(list(panels[key].values()))):
      if run.key[0] == reference:
        continue
      over = claims.differences_over_rounds(run, ref)
      rounds = [r for r, _ in over]
      diffs = [d for _, d in over]
      mean = np.array([d.mean for d in diffs])
      kw = plotting.style(run.key[0], i)
      line, = ax.plot(rounds, mean, label=run.key[0], **kw)
      ax.fill_between(rounds, [d.low for d in diffs], [d.high for d in diffs],
                      color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title(f"k = {key[0]}, τ = {key[1]}")
    ax.set_xlabel("communication round")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(f"test accuracy − {reference}'s, same seed")
  axes[0].legend(fontsize=8)
  fig.text(0.5, 0.005, plotting.caption(runs).replace("(mean ± std)",
                                                       "(paired, 95 % t)"),
           ha="center", fontsize=8, color="0.3")
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  return _save(fig, path)
