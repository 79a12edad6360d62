"""The fidelity studies beyond the paper's grid, as resumable sets of runs.

A study is a named list of runs (each a ``SimConfig`` under its own folder
name) and the paired comparisons that answer its question. ``run_study``
runs them into ``OUT_DIR/runs/NAME`` the way ``grid.run_grid`` runs the grid:
complete runs are skipped and interrupted ones resume, so running the same
command again finishes an interrupted study. Every run of a study uses the
same seeds, so comparisons are paired per seed (``stats``).

Studies (docs/algorithms.md §9 explains each question):

* ``readings``: the readings the paper leaves open, each against EAHES-O on
  one panel (k = 4, τ = 1): failure mode (``crash``), bursty outages of
  mean 5 and 20 rounds (the latter also with crashes: stale workers), the
  oracle's variants, and elastic Adam.
* ``mechanism``: EAHES-O and DEAHES-O under ``disconnect`` and ``crash`` at
  τ = 1 and 4, whose per-round rows feed ``mechanism.py`` (does the raw score
  turn negative when a worker rejoins?).
* ``lr_sweep``: EASGD, EAMSGD and EAHES over a learning-rate grid, to compare
  the families at matched tuning.
* ``dw_sweep``: dynamic weighting's p and threshold under each failure model.
* ``label_skew``: Figure 3's overlap sweep on label-skewed shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import numpy as np

from eahes_jax import claims
from eahes_jax import config as config_lib
from eahes_jax import experiment
from eahes_jax import grid
from eahes_jax import mechanism as mechanism_lib
from eahes_jax import plotting
from eahes_jax import stats
from eahes_jax import results_folder

STUDY_FILE = "study.json"


@dataclasses.dataclass(frozen=True)
class Reading:
  """One paired comparison of a study: run ``a`` against run ``b``.

  Attributes:
    question: what it answers, e.g. "bursty outages (mean 20)".
    a: the run name of the first run.
    b: the run name of the second (usually the baseline EAHES-O).
  """

  question: str
  a: str
  b: str


@dataclasses.dataclass(frozen=True)
class Study:
  """A named set of runs and the comparisons between them.

  Attributes:
    name: the study's name (``STUDIES``' key).
    runs: (folder name, config) pairs, in the order they run (the configs
      are None in a study read back from its folder by ``read_study``).
    readings: the comparisons its table reports.
  """

  name: str
  runs: tuple[tuple[str, config_lib.SimConfig | None], ...]
  readings: tuple[Reading, ...] = ()


@dataclasses.dataclass(frozen=True)
class Scale:
  """How long and how wide every run of a study is.

  The defaults are the paper's length (300 rounds) with 5 seeds, evaluated
  every 25 rounds on the full test set (the trajectory does not depend on
  the evaluation interval, only the curves' resolution does).
  """

  model: str = "small_cnn"
  rounds: int = 300
  num_seeds: int = 5
  eval_every: int = 25
  train_eval_size: int = 2000


def _base(scale: Scale, base: config_lib.SimConfig | None
          ) -> config_lib.SimConfig:
  return (base or config_lib.SimConfig()).replace(
      model=scale.model, rounds=scale.rounds, num_seeds=scale.num_seeds,
      eval_every=scale.eval_every, train_eval_size=scale.train_eval_size,
      num_workers=4, comm_period=1)


# Failure settings of the readings at the paper's rate 1/3 (algorithms.md §6).
_FAILURES = {
    "bernoulli": dict(failure_model="bernoulli", failure_mode="disconnect"),
    "crash": dict(failure_model="bernoulli", failure_mode="crash"),
    "bursty20": dict(failure_model="bursty", mean_outage=20.0,
                     failure_mode="disconnect"),
    "bursty5": dict(failure_model="bursty", mean_outage=5.0,
                    failure_mode="disconnect"),
    # Long outages during which the worker stops computing: it returns with
    # parameters 20 rounds stale on average, the regime the paper's premise
    # (pull a returning worker onto the master, ignore it) is made for.
    "crash_bursty20": dict(failure_model="bursty", mean_outage=20.0,
                           failure_mode="crash"),
}


def readings(scale: Scale = Scale(), base: config_lib.SimConfig | None = None
             ) -> Study:
  """The readings the paper leaves open, each a paired comparison.

  Runs in order of what they decide: the baseline, the stale-worker regimes
  (bursty outages of mean 20; crashes, also with bursty outages of mean 20)
  first, then the oracle's variants and elastic Adam, then bursty outages of
  mean 5.
  """
  b = _base(scale, base)
  runs = [("EAHES-O_bernoulli", b.replace(method="EAHES-O"))]
  for failures in ("bursty20", "crash", "crash_bursty20"):
    for method in ("EAHES-O", "DEAHES-O", "EAHES-OM"):
      runs.append((f"{method}_{failures}",
                   b.replace(method=method, **_FAILURES[failures])))
  runs.append(("EAHES-OM-ignore_crash_bursty20",
               b.replace(method="EAHES-OM", oracle_variant="ignore",
                         **_FAILURES["crash_bursty20"])))
  runs += [
      ("DEAHES-O_bernoulli", b.replace(method="DEAHES-O")),
      ("EAHES-OM_bernoulli", b.replace(method="EAHES-OM")),
      ("EAHES-OM-ignore_bernoulli",
       b.replace(method="EAHES-OM", oracle_variant="ignore")),
      ("EAHES-OM-graded_bernoulli",
       b.replace(method="EAHES-OM", oracle_variant="graded")),
      ("EAADAM-O_bernoulli", b.replace(method="EAADAM-O")),
  ]
  for method in ("EAHES-O", "DEAHES-O", "EAHES-OM"):
    runs.append((f"{method}_bursty5",
                 b.replace(method=method, **_FAILURES["bursty5"])))
  # The graded oracle where outages are long enough for its maps to grade.
  runs.append(("EAHES-OM-graded_crash_bursty20",
               b.replace(method="EAHES-OM", oracle_variant="graded",
                         **_FAILURES["crash_bursty20"])))
  out = []
  for failures, label in (("bernoulli", "Bernoulli, disconnect (paper)"),
                          ("crash", "Bernoulli, crash"),
                          ("bursty5", "bursty, mean outage 5"),
                          ("bursty20", "bursty, mean outage 20"),
                          ("crash_bursty20", "bursty, mean outage 20, crash")):
    for method in ("DEAHES-O", "EAHES-OM"):
      out.append(Reading(f"failures: {label}", f"{method}_{failures}",
                         f"EAHES-O_{failures}"))
  for variant in ("ignore", "graded"):
    out.append(Reading("failures: bursty, mean outage 20, crash",
                       f"EAHES-OM-{variant}_crash_bursty20",
                       "EAHES-O_crash_bursty20"))
  out.append(Reading("failures: crash vs disconnect (EAHES-O)",
                     "EAHES-O_crash", "EAHES-O_bernoulli"))
  for variant in ("EAHES-OM", "EAHES-OM-ignore", "EAHES-OM-graded"):
    out.append(Reading("oracle variants", f"{variant}_bernoulli",
                       "EAHES-O_bernoulli"))
  out.append(Reading("second order or adaptivity", "EAHES-O_bernoulli",
                     "EAADAM-O_bernoulli"))
  return Study("readings", tuple(runs), tuple(out))


def mechanism(scale: Scale = Scale(rounds=100, num_seeds=5, eval_every=50,
                                   train_eval_size=1000),
              base: config_lib.SimConfig | None = None) -> Study:
  """Per-round rows for the mechanism analysis (``mechanism.py``).

  EAHES-O (the score is measured but not acted on: the natural signal) and
  DEAHES-O (acted on) under ``disconnect`` and ``crash``, τ = 1 and 4.
  """
  b = _base(scale, base)
  runs = []
  # τ = 4 first (the paper-length grid and readings already hold τ = 1),
  # and the natural signal (EAHES-O) before the acted-on one.
  for method in ("EAHES-O", "DEAHES-O"):
    for tau in (4, 1):
      for mode in ("disconnect", "crash"):
        runs.append((f"{method}_{mode}_tau{tau}",
                     b.replace(method=method, failure_mode=mode,
                               comm_period=tau)))
  return Study("mechanism", tuple(runs))


LR_GRID = {"EAHES": (0.005, 0.01, 0.02, 0.05, 0.1, 0.15),
           "EASGD": (0.005, 0.01, 0.02, 0.05, 0.1),
           "EAMSGD": (0.005, 0.01, 0.02, 0.05, 0.1)}


def lr_sweep(scale: Scale = Scale(), base: config_lib.SimConfig | None = None
             ) -> Study:
  """Each family over its learning-rate grid (``LR_GRID``); the table pairs
  each family's best rate (by late test accuracy) against the others'."""
  b = _base(scale, base)
  # Rates in order of what they decide, the families interleaved, so that a
  # sweep cut short still compares them: the larger rates first (the paper's
  # 0.01 is already in the grid's panel), then the smaller ones.
  order = (0.1, 0.05, 0.15, 0.02, 0.005, 0.01)
  runs = tuple((f"{m}_lr{lr:g}", b.replace(method=m, lr=lr))
               for lr in order for m, lrs in LR_GRID.items() if lr in lrs)
  return Study("lr_sweep", runs)


def dw_sweep(scale: Scale = Scale(), base: config_lib.SimConfig | None = None
             ) -> Study:
  """DEAHES-O's p ∈ {1, 2, 3} × threshold k ∈ ``grid.DW_THRESHOLDS`` under
  each failure setting, each paired against EAHES-O in the same setting."""
  b = _base(scale, base)
  runs, out = [], []
  # Long outages first: where a returning worker is really stale and the
  # weighting should earn its keep, so a sweep cut short has decided that;
  # with crashes it is stale twice over (it did not train while away).
  for failures in ("bursty20", "crash_bursty20", "bernoulli", "crash"):
    fields = _FAILURES[failures]
    runs.append((f"EAHES-O_{failures}", b.replace(method="EAHES-O",
                                                  **fields)))
    for p, coeffs in grid.DW_COEFFS.items():
      for threshold in grid.DW_THRESHOLDS:
        name = f"DEAHES-O_p{p}_k{-threshold:g}_{failures}"
        runs.append((name, b.replace(method="DEAHES-O", dw_history=p,
                                     dw_coeffs=coeffs,
                                     dw_threshold=threshold, **fields)))
        out.append(Reading(f"dynamic weighting, {failures}", name,
                           f"EAHES-O_{failures}"))
  return Study("dw_sweep", tuple(runs), tuple(out))


LABEL_SKEW = 0.9


def label_skew(scale: Scale = Scale(),
               base: config_lib.SimConfig | None = None) -> Study:
  """Figure 3 (EAHES-O over r) on shards skewed by label (s = LABEL_SKEW),
  each ratio paired against r = 0."""
  b = _base(scale, base).replace(label_skew=LABEL_SKEW)
  ratios = (0.0, 0.125, 0.25, 0.375, 0.5)
  runs = tuple((f"EAHES-O_skew_r{round(r * 1000):03d}",
                b.replace(method="EAHES-O", overlap_ratio=r))
               for r in ratios)
  out = tuple(Reading("overlap under label skew", name, runs[0][0])
              for name, _ in runs[1:])
  return Study("label_skew", runs, out)


STUDIES: dict[str, Callable[..., Study]] = {
    "readings": readings, "mechanism": mechanism, "lr_sweep": lr_sweep,
    "dw_sweep": dw_sweep, "label_skew": label_skew}


def get_study(name: str, scale: Scale | None = None,
              base: config_lib.SimConfig | None = None) -> Study:
  """The study ``name`` at ``scale`` (default: the study's own)."""
  if name not in STUDIES:
    raise config_lib.ConfigError(
        f"study must be one of {sorted(STUDIES)}, got {name!r}", "study")
  factory = STUDIES[name]
  return factory(base=base) if scale is None else factory(scale, base=base)


def run_study(study: Study, out_dir: str, *, data_source: str = "auto",
              mnist_dir: str | None = None, checkpoint_every: int = 0,
              log: Callable[[str], None] | None = None,
              tensorboard: bool = False) -> None:
  """Runs (or finishes) every run of ``study`` into ``out_dir/runs``.

  Runs another process is writing are left to it (``grid.run_configs``), so
  the same command started twice, on two cores or two hosts sharing the
  folder, works through the study together.

  Args:
    study: the study.
    out_dir: the study's results folder.
    data_source: MNIST source.
    mnist_dir: IDX or TFDS folder.
    checkpoint_every: rounds between checkpoints of each run (0: none).
    log: where progress goes (default: stdout).
    tensorboard: write TensorBoard events into each run's folder.

  Raises:
    results_folder.ResultsDirError: ``out_dir`` holds another study.
  """
  log = log or (lambda s: print(s, flush=True))
  for _, config in study.runs:
    experiment.check_execution(config)
  data = experiment.load_data(data_source, mnist_dir)
  results_folder.check_writable(os.path.join(out_dir, grid.RUNS_DIR))
  _check_study_record(out_dir, study, data.source)
  start = time.perf_counter()
  summaries = grid.run_configs(list(study.runs), out_dir, data=data,
                               checkpoint_every=checkpoint_every, log=log,
                               tensorboard=tensorboard)
  done = ("done" if len(summaries) == len(study.runs) else
          f"{len(summaries)} of {len(study.runs)} runs complete")
  log(f"study {study.name} {done} after {time.perf_counter() - start:.0f} s:"
      f" {out_dir}")


def _check_study_record(out_dir: str, study: Study, source: str) -> None:
  """Refuses a folder that holds another study or data source, then records
  this one (its runs and readings too, so reports need nothing else)."""
  path = os.path.join(out_dir, STUDY_FILE)
  # What every run of a study shares; a complete run is skipped, so a folder
  # at another scale would silently mix lengths.
  first = study.runs[0][1]
  scale = {f: getattr(first, f) for f in ("model", "rounds", "num_seeds",
                                          "seed", "eval_every",
                                          "train_eval_size")}
  old = results_folder.read_record(
      path, lambda x: (isinstance(x, dict) and isinstance(x.get("study"), str)
                       and isinstance(x.get("data_source"), str)),
      "a study record")
  if old is not None:
    old_key = (old["study"], old["data_source"])
    if old_key != (study.name, source):
      raise results_folder.FolderMismatchError(
          f"{out_dir!r} holds the study {old_key[0]!r} on {old_key[1]!r},"
          f" not {study.name!r} on {source!r}; refusing to mix, choose"
          " another results folder")
    old_scale = old.get("scale", scale)
    if old_scale != scale:
      fields = sorted(k for k in scale if old_scale.get(k) != scale[k])
      raise results_folder.FolderMismatchError(
          f"{out_dir!r} holds the study {study.name!r} at another scale"
          f" (differs in: {', '.join(fields)}); refusing to mix, choose"
          " another results folder")
  record = {"study": study.name, "data_source": source, "scale": scale,
            "runs": [name for name, _ in study.runs],
            "readings": [dataclasses.astuple(r) for r in study.readings]}
  results_folder.write_json(path, record, indent=2)


def read_study(out_dir: str) -> Study | None:
  """The study recorded in ``out_dir`` (its run configs left out: they are
  in each run's config.json), or None for a folder that holds no study."""
  path = os.path.join(out_dir, STUDY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return Study(record["study"],
               tuple((name, None) for name in record["runs"]),
               tuple(Reading(*r) for r in record["readings"]))


def readings_table(study: Study, out_dir: str,
                   quantity: str = "final") -> str:
  """Markdown: every reading of ``study`` whose two runs are stored.

  Columns: each run's test accuracy (mean ± sample std over seeds), the
  paired difference a − b with its 95 % t interval, the seeds where a was
  ahead, and the verdict (``stats.PairedDifference.verdict``).
  """
  runs = {name: plotting.load_run(os.path.join(out_dir, grid.RUNS_DIR, name))
          for name, _ in study.runs}
  what = ("final test accuracy" if quantity == "final" else
          "test accuracy averaged over the last third of the rounds")
  lines = [f"Master's {what}; paired differences a − b per seed, mean and"
           " two-sided 95 % Student-t interval.", "",
           "| question | a | b | a | b | a − b [95 % CI] | a ahead on |"
           " verdict |", "|---|---|---|---|---|---|---|---|"]
  for r in study.readings:
    ra, rb = runs.get(r.a), runs.get(r.b)
    if ra is None or rb is None:
      continue
    # A run still going is compared with its partner at the same round.
    rounds = int(min(ra.eval_rounds[-1], rb.eval_rounds[-1]))
    if rounds == 0:  # One of them has not trained yet: nothing to compare.
      continue
    va = claims.per_seed(ra, quantity, up_to_round=rounds)
    vb = claims.per_seed(rb, quantity, up_to_round=rounds)
    d = stats.paired_difference(va, vb)
    verdict = {stats.A_AHEAD: f"{r.a} ahead", stats.B_AHEAD: f"{r.b} ahead"
               }.get(d.verdict, stats.UNDECIDED)
    partial = "" if ra.complete and rb.complete else f" (round {rounds})"
    lines.append(
        f"| {r.question}{partial} | {r.a} | {r.b} |"
        f" {stats.describe(list(va.values())).format()} |"
        f" {stats.describe(list(vb.values())).format()} | {d.format()} |"
        f" {d.wins}/{d.n} | {verdict} |")
  return "\n".join(lines) + "\n"


def lr_sweep_results(out_dir: str, quantity: str = "late"
                     ) -> tuple[dict[str, dict[float, dict[int, float]]],
                                list[str]]:
  """A learning-rate sweep's stored results: {method: {lr: {seed: value}}}
  of ``quantity`` (``claims.per_seed``), and the names of runs still
  training, which are left out (their "late third" is not the run's)."""
  by_family: dict[str, dict[float, dict[int, float]]] = {}
  runs_dir = os.path.join(out_dir, grid.RUNS_DIR)
  unfinished = []
  for name in sorted(os.listdir(runs_dir)):
    run_dir = os.path.join(runs_dir, name)
    run = plotting.load_run(run_dir)
    if run is None:
      continue
    if not results_folder.is_complete(run_dir):
      unfinished.append(name)
      continue
    by_family.setdefault(run.config["method"], {})[run.config["lr"]] = (
        claims.per_seed(run, quantity))
  return by_family, unfinished


def lr_sweep_table(out_dir: str, quantity: str = "late") -> str:
  """Markdown: each family's accuracy per learning rate, its best rate, the
  best rates paired against each other, and the families paired at every
  rate both ran.

  Picking each family's best rate on the same seeds that judge it favours
  every family alike; the table says so.
  """
  by_family, unfinished = lr_sweep_results(out_dir, quantity)
  lines = ["| method | lr | test accuracy (late third, mean ± std) |",
           "|---|---|---|"]
  best = {}
  for method, by_lr in sorted(by_family.items()):
    for lr, values in sorted(by_lr.items()):
      lines.append(f"| {method} | {lr:g} |"
                   f" {stats.describe(list(values.values())).format()} |")
    top = max(by_lr, key=lambda lr: np.mean(list(by_lr[lr].values())))
    best[method] = (top, by_lr[top])
  lines += ["", "Best rate of each family, paired (selection on the same"
            " seeds favours every family alike):", "",
            "| a | b | a − b [95 % CI] | a ahead on |", "|---|---|---|---|"]
  names = sorted(best)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      d = stats.paired_difference(best[a][1], best[b][1])
      lines.append(f"| {a} (lr {best[a][0]:g}) | {b} (lr {best[b][0]:g}) |"
                   f" {d.format()} | {d.wins}/{d.n} |")
  same_rate = [(a, b, lr) for i, a in enumerate(names) for b in names[i + 1:]
               for lr in sorted(set(by_family[a]) & set(by_family[b]))]
  if same_rate:
    lines += ["", "Each rate both families ran, paired (the same seeds):", "",
              "| lr | a | b | a − b [95 % CI] | a ahead on |",
              "|---|---|---|---|---|"]
    for a, b, lr in same_rate:
      d = stats.paired_difference(by_family[a][lr], by_family[b][lr])
      lines.append(f"| {lr:g} | {a} | {b} | {d.format()} | {d.wins}/{d.n} |")
  if unfinished:
    lines += ["", f"Not finished, left out: {', '.join(unfinished)}."]
  return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class DwPoint:
  """One DEAHES-O setting of the weighting sweep against its EAHES-O.

  Attributes:
    failures: the failure setting, e.g. "disconnect", "crash", "bursty 20"
      (``failure_label``).
    history: p, the number of differences in the score (eq. 10).
    threshold: k < 0, the score at which the pull is full (eq. 11).
    difference: DEAHES-O − EAHES-O, paired per seed.
    activity: how hard the weighting pulled (``mechanism.activity``).
  """

  failures: str
  history: int
  threshold: float
  difference: stats.PairedDifference
  activity: mechanism_lib.Activity


def failure_label(config: dict) -> str:
  """A stored run's failure setting in words: its failure mode for
  Bernoulli failures, "bursty <mean outage>" for bursty ones (", crash"
  added for crashes), else the model's name."""
  if config["failure_model"] == "bernoulli":
    return config["failure_mode"]
  if config["failure_model"] == "bursty":
    crash = ", crash" if config["failure_mode"] == "crash" else ""
    return f"bursty {config['mean_outage']:g}{crash}"
  return config["failure_model"]


def dw_sweep_results(study: Study, out_dir: str, quantity: str = "late",
                     window: int = 3) -> tuple[list[DwPoint], list[str]]:
  """Every finished DEAHES-O run of a weighting sweep, paired against its
  EAHES-O (``study.readings``), with the weighting's activity; and the
  names of the readings left out because a run of theirs is unfinished."""
  runs_dir = os.path.join(out_dir, grid.RUNS_DIR)
  points, unfinished = [], []
  for r in study.readings:
    dirs = [os.path.join(runs_dir, name) for name in (r.a, r.b)]
    if not all(results_folder.is_complete(d) for d in dirs):
      unfinished.append(r.a)
      continue
    run_a, run_b = (plotting.load_run(d) for d in dirs)
    c = run_a.config
    points.append(DwPoint(
        failures=failure_label(c), history=int(c["dw_history"]),
        threshold=float(c["dw_threshold"]),
        difference=stats.paired_difference(
            claims.per_seed(run_a, quantity), claims.per_seed(run_b, quantity)),
        activity=mechanism_lib.run_activity(dirs[0], window)))
  return points, unfinished


def dw_sweep_summary(points: Sequence[DwPoint]) -> str:
  """Markdown: the weighting sweep in one row per failure setting.

  Per setting: how many (p, k) settings finished; how many put DEAHES-O
  ahead of, level with and behind EAHES-O (by whether the 95 % interval lies
  above 0, across it or below it); the setting with the largest mean
  difference; the range of mean differences at the eager thresholds
  (k > −1); and the range over settings of the pull on rejoin rounds
  divided by that on healthy ones (above 1: the pull leans toward returning
  workers).

  Args:
    points: ``dw_sweep_results``' points.

  Returns:
    The table, or a line saying that no setting has finished.
  """
  if not points:
    return "No setting of the sweep has finished yet.\n"
  groups: dict[str, list[DwPoint]] = {}
  for point in points:
    groups.setdefault(point.failures, []).append(point)

  def span(values, fmt):
    values = [v for v in values if np.isfinite(v)]
    if not values:
      return "–"
    low, high = min(values), max(values)
    return (format(low, fmt) if format(low, fmt) == format(high, fmt)
            else f"{low:{fmt}} to {high:{fmt}}")

  lines = ["| failures | settings | ahead / level / behind | best (p, k):"
           " DEAHES-O − EAHES-O [95 % CI], ahead on | eager thresholds"
           " (k > −1): mean differences | pull on rejoin ÷ healthy rounds |",
           "|---|---|---|---|---|---|"]
  for failures in sorted(groups):
    group = groups[failures]
    verdicts = [point.difference.verdict for point in group]
    best = max(group, key=lambda point: point.difference.mean)
    eager = [point.difference.mean for point in group
             if point.threshold > -1]
    ratios = [point.activity.rejoin_pull / point.activity.healthy_pull
              for point in group if point.activity.healthy_pull > 0]
    lines.append(
        f"| {failures} | {len(group)} |"
        f" {verdicts.count(stats.A_AHEAD)} / {verdicts.count(stats.UNDECIDED)}"
        f" / {verdicts.count(stats.B_AHEAD)} |"
        f" ({best.history}, {best.threshold:g}):"
        f" {best.difference.format()},"
        f" {best.difference.wins}/{best.difference.n} |"
        f" {span(eager, '+.4f')} | {span(ratios, '.2f')} |")
  return "\n".join(lines) + "\n"


def dw_sweep_table(study: Study, out_dir: str, quantity: str = "late",
                   window: int = 3) -> str:
  """Markdown: per failure setting, p and k, DEAHES-O − EAHES-O paired per
  seed, and the weighting's mean pull on rejoin and healthy rounds."""
  points, unfinished = dw_sweep_results(study, out_dir, quantity, window)
  what = ("final test accuracy" if quantity == "final" else
          "test accuracy averaged over the last third of the rounds")
  lines = [
      f"DEAHES-O − EAHES-O in the master's {what}, paired per seed (mean,"
      " two-sided 95 % Student-t interval). Pull s = (h1 − α)/(1 − α) = (α −"
      " h2)/α of a connected exchange, 0 for EASGD's weights, 1 for a worker"
      f" snapped onto the master; rejoin rounds are those within {window}"
      " rounds of an outage end; \"pull's share on rejoins\" against"
      " \"rejoin rounds' share\" says whether the pull finds them.", "",
      dw_sweep_summary(points).rstrip("\n"), "",
      "| failures | p | k | DEAHES-O − EAHES-O [95 % CI] | ahead on |"
      " mean pull, rejoin rounds | mean pull, healthy rounds |"
      " pull's share on rejoins | rejoin rounds' share |",
      "|---|---|---|---|---|---|---|---|---|"]
  for p in sorted(points, key=lambda p: (p.failures, p.history,
                                         -p.threshold)):
    act = p.activity
    base = act.rejoin_fraction
    lines.append(
        f"| {p.failures} | {p.history} | {p.threshold:g} |"
        f" {p.difference.format()} | {p.difference.wins}/{p.difference.n} |"
        f" {act.rejoin_pull:.4f} | {act.healthy_pull:.4f} |"
        f" {act.rejoin_share:.3f} | {base:.3f} |")
  if unfinished:
    lines += ["", f"Not finished, left out: {', '.join(unfinished)}."]
  return "\n".join(lines) + "\n"
