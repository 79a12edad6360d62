"""The paper's experiment grid (§VI, Figures 3-5) as resumable runs.

The grid is six methods × k ∈ {4, 8} × τ ∈ {1, 2, 4}, every run over three
seeds with failure rate 1/3, plus the overlap sweep r ∈ {0, 12.5, 25, 37.5,
50} % on EAHES-O (k = 4, τ = 1). Every run gets its own folder under
``RESULTS_DIR/runs/`` named after its configuration; a run whose folder is
complete is skipped and an interrupted one resumes from its checkpoint, so
re-running the same command finishes an interrupted grid. A run that is in
both the grid and the sweep (EAHES-O, k = 4, τ = 1, r = 25 %) runs once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from typing import Callable

from eahes_jax import config as config_lib
from eahes_jax import experiment
from eahes_jax import methods
from eahes_jax import results_folder
from eahes_jax import weighting

RUNS_DIR = "runs"
GRID_FILE = "grid.json"


@dataclasses.dataclass(frozen=True)
class Preset:
  """How big a reproduction to run.

  Attributes:
    name: the preset's name.
    model: network of every run.
    rounds: communication rounds per run.
    num_seeds: seeds per run (the paper: 3).
    eval_every: rounds between evaluations.
    train_eval_size: training examples whose loss is plotted (Figure 5).
    data_source: default MNIST source.
    workers: the k values of the grid.
    periods: the τ values of the grid.
    methods: the methods of the grid.
    overlap_ratios: r values of the sweep (Figure 3).
    overlap_method: the sweep's method.
    overlap_workers: the sweep's k.
    overlap_period: the sweep's τ.
  """

  name: str
  model: str
  rounds: int
  num_seeds: int
  eval_every: int
  train_eval_size: int
  data_source: str
  workers: tuple[int, ...] = (4, 8)
  periods: tuple[int, ...] = (1, 2, 4)
  methods: tuple[str, ...] = methods.PAPER_METHODS
  overlap_ratios: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5)
  overlap_method: str = "EAHES-O"
  overlap_workers: int = 4
  overlap_period: int = 1


PRESETS = {
    # All 40 runs: 3.5 to over 10 minutes on a 2-core CPU, by load (README).
    "quick": Preset(name="quick", model="mlp", rounds=40, num_seeds=3,
                    eval_every=10, train_eval_size=2000,
                    data_source="sample"),
    # The paper's network on full MNIST, sized for a 2-core CPU in under an
    # hour (the README's results).
    "cpu": Preset(name="cpu", model="small_cnn", rounds=40, num_seeds=3,
                  eval_every=10, train_eval_size=5000, data_source="auto"),
    # The paper's setting (full MNIST, small_cnn, 300 rounds) with the 5
    # seeds every finding of the README rests on (the paper used 3).
    "paper": Preset(name="paper", model="small_cnn", rounds=300,
                    num_seeds=5, eval_every=10, train_eval_size=10000,
                    data_source="auto"),
}


# Overrides of a preset -> the SimConfig field each value becomes; the grid's
# axes are tuples of values.
_OVERRIDE_FIELDS = {"rounds": "rounds", "num_seeds": "num_seeds",
                    "model": "model", "eval_every": "eval_every",
                    "methods": "method", "workers": "num_workers",
                    "periods": "comm_period",
                    "overlap_ratios": "overlap_ratio"}
_AXES = ("methods", "workers", "periods", "overlap_ratios")


def customize(preset: Preset, **overrides) -> Preset:
  """The preset with the non-None ``overrides`` applied (validated)."""
  changes = {k: v for k, v in overrides.items() if v is not None}
  # Each value is checked by SimConfig, the one place that knows the rules,
  # and the error renamed after the override (the reproduce_paper flag).
  for override, field in _OVERRIDE_FIELDS.items():
    if override not in changes:
      continue
    values = changes[override]
    if override in _AXES:
      values = changes[override] = tuple(values)
    for value in (values if override in _AXES else (values,)):
      try:
        config_lib.SimConfig(**{field: value})
      except config_lib.ConfigError as e:
        if e.field != field:
          raise
        raise config_lib.ConfigError(
            override + str(e)[len(field):], override) from None
  for field in ("workers", "periods"):
    if field in changes and not changes[field]:
      raise config_lib.ConfigError(f"{field} must not be empty", field)
  if changes.get("methods", preset.methods) == () and changes.get(
      "overlap_ratios", preset.overlap_ratios) == ():
    raise config_lib.ConfigError(
        "`methods` and `overlap_ratios` are both empty: nothing to run",
        "methods")
  if changes:
    preset = dataclasses.replace(preset, name=f"{preset.name}-custom",
                                 **changes)
  return preset


def run_name(config: config_lib.SimConfig) -> str:
  """A run's folder name, from the fields the grid varies."""
  c = config.resolve()
  return (f"{c.method}_k{c.num_workers}_tau{c.comm_period}"
          f"_r{round(c.overlap_ratio * 1000):03d}")


def grid_configs(preset: Preset, base: config_lib.SimConfig | None = None
                 ) -> list[config_lib.SimConfig]:
  """The grid's configurations (main grid first, then the overlap sweep).

  Args:
    preset: the preset.
    base: fields not set by the preset (failure model, α, ...); default
      ``SimConfig()``.

  Returns:
    The distinct configurations, in run order.
  """
  base = (base or config_lib.SimConfig()).replace(
      model=preset.model, rounds=preset.rounds, num_seeds=preset.num_seeds,
      eval_every=preset.eval_every, train_eval_size=preset.train_eval_size)
  out = []
  for k in preset.workers:
    for tau in preset.periods:
      for m in preset.methods:
        out.append(base.replace(method=m, num_workers=k, comm_period=tau,
                                overlap_ratio=None))
  for r in preset.overlap_ratios:
    out.append(base.replace(method=preset.overlap_method,
                            num_workers=preset.overlap_workers,
                            comm_period=preset.overlap_period,
                            overlap_ratio=r))
  seen, unique = set(), []
  for c in out:
    if run_name(c) not in seen:
      seen.add(run_name(c))
      unique.append(c)
  return unique


def run_grid(preset: Preset, out_dir: str, *,
             base: config_lib.SimConfig | None = None,
             data_source: str | None = None, mnist_dir: str | None = None,
             checkpoint_every: int = 0,
             log: Callable[[str], None] | None = None,
             tensorboard: bool = False
             ) -> list[results_folder.RunSummary]:
  """Runs (or finishes) the whole grid into ``out_dir``.

  Args:
    preset: the preset.
    out_dir: the grid's results folder.
    base: configuration fields the preset does not set.
    data_source: MNIST source (default: the preset's).
    mnist_dir: IDX or TFDS folder.
    checkpoint_every: rounds between checkpoints of each run (0: none).
    log: where progress goes (default: stdout).
    tensorboard: write TensorBoard events into each run's folder
      (``RUN/tensorboard``; needs tensorboardX).

  Returns:
    The summary of every complete run, in run order (``run_configs``: a run
    another process holds is left to it).
  """
  log = log or (lambda s: print(s, flush=True))
  configs = grid_configs(preset, base)
  for config in configs:
    experiment.check_execution(config)
  # Bad data or a bad folder fail here, before anything is written.
  data = experiment.load_data(data_source or preset.data_source, mnist_dir)
  results_folder.check_writable(os.path.join(out_dir, RUNS_DIR))
  _check_grid_record(out_dir, preset, data.source)
  log(f"grid results folder: {out_dir} ({len(configs)} runs)")
  start = time.perf_counter()
  summaries = run_configs([(run_name(c), c) for c in configs], out_dir,
                          data=data, checkpoint_every=checkpoint_every,
                          log=log, tensorboard=tensorboard)
  done = ("done" if len(summaries) == len(configs) else
          f"{len(summaries)} of {len(configs)} runs complete")
  log(f"grid {done} after {time.perf_counter() - start:.0f} s: {out_dir}")
  return summaries


def run_configs(runs: list[tuple[str, config_lib.SimConfig]], out_dir: str,
                *, data, checkpoint_every: int = 0,
                log: Callable[[str], None], tensorboard: bool = False
                ) -> list[results_folder.RunSummary]:
  """Runs each (name, config) into ``out_dir/runs/name``, in order.

  A complete run is skipped (its summary read back); a folder holding an
  interrupted run resumes it from its last checkpoint; a run another process
  is writing (its folder's lock is held) is left to that process, so several
  processes, or hosts sharing the folder, can work through one set of runs
  together. After the last run, the runs left to others are looked at once
  more: one finished meanwhile counts as complete, and one whose holder has
  died (its lock is free) is resumed here.

  Shared by the grid and the studies (``studies.run_study``).

  Args:
    runs: folder names and configurations.
    out_dir: the results folder.
    data: the loaded dataset.
    checkpoint_every: rounds between checkpoints of each run (0: none).
    log: where progress goes.
    tensorboard: write TensorBoard events into each run's folder.

  Returns:
    The summary of every run that is complete when it returns, in run order
    (fewer than ``runs`` when some are still being written by others).
  """
  summaries: dict[str, results_folder.RunSummary] = {}
  held = []
  start = time.perf_counter()

  def attempt(name: str, config: config_lib.SimConfig) -> None:
    run_dir = os.path.join(out_dir, RUNS_DIR, name)
    run_log = lambda s, n=name: log(f"  {n}: {s}")
    for retry in (False, True):
      # Whether to resume is decided outside the run's lock: another process
      # may write the folder (or finish the run) between this look and the
      # lock, which run_experiment then reports as a mismatch. A second look
      # settles it.
      resume = os.path.exists(
          os.path.join(run_dir, results_folder.CONFIG_FILE))
      try:
        summaries[name] = experiment.run_experiment(
            config, run_dir, data=data, checkpoint_every=checkpoint_every,
            resume=resume, log=run_log,
            tensorboard_dir=(os.path.join(run_dir, "tensorboard")
                             if tensorboard else None))
        return
      except results_folder.FolderInUseError:
        held.append(name)
        run_log("another process is writing this run; left to it")
        return
      except results_folder.FolderMismatchError:
        if results_folder.is_complete(run_dir):
          summaries[name] = results_folder.read_summary(run_dir)
          run_log("completed by another process meanwhile")
          return
        if retry or resume:
          raise
      except experiment.Interrupted as e:
        # A set of runs resumes by itself: the same call continues it.
        raise experiment.Interrupted(
            e.signum, e.rounds_done, e.saved,
            how_to_continue=f"run the same command again: {name} resumes"
            " and the completed runs are skipped") from None

  for i, (name, config) in enumerate(runs):
    run_dir = os.path.join(out_dir, RUNS_DIR, name)
    if results_folder.is_complete(run_dir):
      summaries[name] = results_folder.read_summary(run_dir)
      log(f"[{i + 1}/{len(runs)}] {name}: complete, skipped")
      continue
    log(f"[{i + 1}/{len(runs)}] {name} ({time.perf_counter() - start:.0f}"
        " s in)")
    attempt(name, config)
  # The runs left to others, once more: finished meanwhile, or orphaned by a
  # holder that died (then this process resumes them).
  configs = dict(runs)
  for name in list(held):
    held.remove(name)
    run_dir = os.path.join(out_dir, RUNS_DIR, name)
    if results_folder.is_complete(run_dir):
      summaries[name] = results_folder.read_summary(run_dir)
    else:
      log(f"{name}: left to another process earlier, looked at again")
      attempt(name, configs[name])
  if held:
    log(f"{len(held)} of {len(runs)} runs still being written by other"
        f" processes: {', '.join(held)}")
  return [summaries[name] for name, _ in runs if name in summaries]


# Preset fields that select which runs a grid holds. Each run lives in its own
# folder named after them (``run_name``), so a grid folder may grow (another
# panel, more methods) without mixing anything; the other fields define every
# run and must match.
_AXES = ("name", "methods", "workers", "periods", "overlap_ratios",
         "overlap_method", "overlap_workers", "overlap_period")


def _check_grid_record(out_dir: str, preset: Preset, source: str) -> None:
  record = {"preset": dataclasses.asdict(preset), "data_source": source}
  record = json.loads(json.dumps(record))  # Tuples become lists.
  path = os.path.join(out_dir, GRID_FILE)
  old = results_folder.read_record(
      path, lambda x: isinstance(x, dict) and isinstance(x.get("preset"), dict),
      "a grid record")
  if old is not None:
    old_p, new_p = old["preset"], record["preset"]
    fields = sorted(k for k in set(old_p) | set(new_p)
                    if k not in _AXES and old_p.get(k) != new_p.get(k))
    if old.get("data_source") != record["data_source"]:
      fields.append("data_source")
    if fields:
      raise results_folder.FolderMismatchError(
          f"{out_dir!r} holds a grid of another preset or data source"
          f" ({old_p.get('name')!r} on {old.get('data_source')!r}; differs"
          f" in: {', '.join(fields)}); refusing to mix, choose"
          " another results folder")
    return
  results_folder.write_json(path, record, indent=2)


# Dynamic weighting's p, c and k are not given by the paper (algorithms.md
# §5); ``dynamic_weighting_sweep`` is the documented sweep that picked the
# defaults in ``SimConfig``.
DW_COEFFS = {1: (1.0,), 2: (0.7, 0.3), 3: weighting.DEFAULT_COEFFS}
DW_THRESHOLDS = (-0.1, -0.3, -1.0, -3.0)


def dynamic_weighting_configs(base: config_lib.SimConfig
                              ) -> list[config_lib.SimConfig]:
  """DEAHES-O over p ∈ {1, 2, 3} × k ∈ DW_THRESHOLDS, plus the references
  EAHES-O (no weighting) and EAHES-OM (the oracle) at the same setting."""
  out = [base.replace(method="EAHES-O"), base.replace(method="EAHES-OM")]
  for p, coeffs in DW_COEFFS.items():
    for threshold in DW_THRESHOLDS:
      out.append(base.replace(method="DEAHES-O", dw_history=p,
                              dw_coeffs=coeffs, dw_threshold=threshold))
  return out


def sweep_name(config: config_lib.SimConfig) -> str:
  """Folder name of a sweep run."""
  if config.method != "DEAHES-O":
    return config.method
  return f"DEAHES-O_p{config.dw_history}_k{-config.dw_threshold:g}"


def _sample_std(values: np.ndarray) -> float:
  """The sample std (ddof = 1); NaN for a single seed, which has none."""
  return float(np.std(values, ddof=1)) if values.size > 1 else float("nan")


def run_dynamic_weighting_sweep(base: config_lib.SimConfig, out_dir: str, *,
                                data_source: str = "sample",
                                mnist_dir: str | None = None,
                                log: Callable[[str], None] | None = None
                                ) -> str:
  """Runs the sweep into ``out_dir`` (resumable) and returns a markdown table.

  The table ranks the settings by the master's test accuracy averaged over
  the evaluations of the last third of the run (less noisy than the final
  value alone), mean ± sample std (ddof = 1) over seeds.
  """
  log = log or (lambda s: print(s, flush=True))
  data = experiment.load_data(data_source, mnist_dir)
  rows = []
  for config in dynamic_weighting_configs(base):
    run_dir = os.path.join(out_dir, sweep_name(config))
    if not results_folder.is_complete(run_dir):
      resume = os.path.exists(os.path.join(run_dir, results_folder.CONFIG_FILE))
      experiment.run_experiment(config, run_dir, data=data, resume=resume,
                                log=lambda s: None)
    metrics = [r for r in results_folder.read_metrics(run_dir)
               if r["test_accuracy"] is not None]
    last = max(r["round"] for r in metrics)
    tail = [r for r in metrics if r["round"] >= last - last // 3]
    seeds = sorted({r["seed"] for r in tail})
    per_seed = np.array([np.mean([r["test_accuracy"] for r in tail
                                  if r["seed"] == s]) for s in seeds])
    final = np.array([r["test_accuracy"] for r in metrics
                      if r["round"] == last])
    rows.append((sweep_name(config), per_seed.mean(), _sample_std(per_seed),
                 final.mean(), _sample_std(final)))
    log(f"{sweep_name(config)}: late accuracy {per_seed.mean():.4f}")
  rows.sort(key=lambda r: -r[1])
  table = ["| setting | test accuracy, last third (mean ± std) |"
           " final test accuracy |", "|---|---|---|"]
  table += [f"| {n} | {m:.4f} ± {s:.4f} | {fm:.4f} ± {fs:.4f} |"
            for n, m, s, fm, fs in rows]
  text = "\n".join(table) + "\n"
  with open(os.path.join(out_dir, "sweep.md"), "w") as f:
    f.write(text)
  return text
