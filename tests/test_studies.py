"""The fidelity studies: what they run, that they resume, what they report."""

import contextlib
import dataclasses
import json
import shutil

import numpy as np
import pytest

from eahes_jax import config as config_lib
from eahes_jax import claims
from eahes_jax import experiment
from eahes_jax import grid
from eahes_jax import mechanism
from eahes_jax import plotting
from eahes_jax import stats
from eahes_jax import studies
from eahes_jax import study_figures
from eahes_jax import results_folder


def differing_fields(a, b):
  da, db = a.to_dict(), b.to_dict()
  return sorted(k for k in da if da[k] != db[k])


@pytest.mark.parametrize("name", sorted(studies.STUDIES))
def test_every_reading_pairs_two_runs_of_its_study(name):
  study = studies.get_study(name)
  names = [n for n, _ in study.runs]
  assert len(set(names)) == len(names)
  configs = dict(study.runs)
  for r in study.readings:
    assert r.a in configs and r.b in configs, r
  # Every run of a study shares its scale and seeds: comparisons are paired.
  scales = {(c.model, c.rounds, c.num_seeds, c.seed, c.eval_every)
            for c in configs.values()}
  assert len(scales) == 1


def test_readings_change_one_thing_against_their_baseline():
  study = studies.get_study("readings")
  c = dict(study.runs)
  assert differing_fields(c["DEAHES-O_crash"], c["EAHES-O_crash"]) == [
      "method"]
  assert differing_fields(c["EAHES-O_crash"], c["EAHES-O_bernoulli"]) == [
      "failure_mode"]
  assert differing_fields(c["EAHES-O_bursty20"], c["EAHES-O_bernoulli"]) == [
      "failure_model", "mean_outage"]
  assert differing_fields(c["EAHES-OM-ignore_bernoulli"],
                          c["EAHES-OM_bernoulli"]) == ["oracle_variant"]
  # Stale workers: the long outages of bursty20, with crashes.
  assert differing_fields(c["EAHES-O_crash_bursty20"],
                          c["EAHES-O_bursty20"]) == ["failure_mode"]
  assert c["EAHES-O_crash_bursty20"].failure_mode == "crash"
  assert differing_fields(c["DEAHES-O_crash_bursty20"],
                          c["EAHES-O_crash_bursty20"]) == ["method"]
  assert differing_fields(c["EAHES-OM-ignore_crash_bursty20"],
                          c["EAHES-OM_crash_bursty20"]) == ["oracle_variant"]
  assert differing_fields(c["EAHES-OM-graded_crash_bursty20"],
                          c["EAHES-OM_crash_bursty20"]) == ["oracle_variant"]
  assert c["EAHES-OM-graded_crash_bursty20"].oracle_variant == "graded"
  assert differing_fields(c["EAADAM-O_bernoulli"],
                          c["EAHES-O_bernoulli"]) == ["method"]
  base = c["EAHES-O_bernoulli"]
  assert (base.model, base.rounds, base.num_seeds, base.num_workers,
          base.comm_period) == ("small_cnn", 300, 5, 4, 1)


@pytest.mark.parametrize("name", sorted(studies.STUDIES))
def test_every_study_states_its_findings_on_at_least_five_seeds(name):
  # The README states each study's results as findings (issue 11: ≥ 5).
  assert all(c.num_seeds >= 5 for _, c in studies.get_study(name).runs)


def test_unknown_study_names_the_flag():
  with pytest.raises(config_lib.ConfigError) as e:
    studies.get_study("nope")
  assert e.value.field == "study"


def tiny_study(name="mechanism"):
  base = config_lib.SimConfig(model="mlp", rounds=12, num_seeds=2,
                              eval_every=6, train_eval_size=100,
                              num_workers=3, execution="vmap", batch_size=16)
  runs = (("EAHES-O_disconnect_tau1", base.replace(method="EAHES-O")),
          ("DEAHES-O_disconnect_tau1", base.replace(method="DEAHES-O")))
  readings = (studies.Reading("weighting", runs[1][0], runs[0][0]),)
  return studies.Study(name, runs, readings)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("study")
  log = []
  studies.run_study(tiny_study(), str(out), data_source="sample",
                    log=log.append)
  return out, log


def test_run_study_runs_every_run_and_records_the_study(study_dir):
  out, log = study_dir
  for name, _ in tiny_study().runs:
    assert results_folder.is_complete(str(out / "runs" / name))
  record = json.loads((out / studies.STUDY_FILE).read_text())
  assert record["study"] == "mechanism"
  assert record["runs"] == [n for n, _ in tiny_study().runs]
  assert log[-1].startswith("study mechanism done")
  back = studies.read_study(str(out))
  assert back.readings == tiny_study().readings


def test_run_study_again_skips_and_refuses_another_study(study_dir):
  out, _ = study_dir
  log = []
  studies.run_study(tiny_study(), str(out), data_source="sample",
                    log=log.append)
  assert sum(l.endswith("complete, skipped") for l in log) == 2
  with pytest.raises(results_folder.ResultsDirError, match="refusing to mix"):
    studies.run_study(tiny_study("readings"), str(out), data_source="sample")
  longer = studies.Study("mechanism", tuple(
      (n, c.replace(rounds=20)) for n, c in tiny_study().runs))
  with pytest.raises(results_folder.ResultsDirError, match="differs in: rounds"):
    studies.run_study(longer, str(out), data_source="sample")


def test_report_of_a_study_folder(study_dir, tmp_path):
  out, _ = study_dir
  written = study_figures.write_report(str(out), str(tmp_path))
  names = sorted(p.split("/")[-1] for p in written)
  assert names == ["mechanism.md", "mechanism_curves.png",
                   "mechanism_events.md", "mechanism_roc.png"]
  table = (tmp_path / "mechanism.md").read_text()
  assert ("| weighting | DEAHES-O_disconnect_tau1 | EAHES-O_disconnect_tau1 |"
          in table)
  events = (tmp_path / "mechanism_events.md").read_text()
  assert "| EAHES-O_disconnect_tau1 |" in events
  assert "| DEAHES-O_disconnect_tau1 |" in events


def test_a_run_another_process_holds_is_left_to_it(tmp_path):
  study = tiny_study()
  held = tmp_path / "runs" / study.runs[0][0]
  held.mkdir(parents=True)
  log = []
  # The lock is an flock on its own open file: held here as by another
  # process.
  with results_folder.lock_out_dir(str(held)):
    studies.run_study(study, str(tmp_path), data_source="sample",
                      log=log.append)
  assert not results_folder.is_complete(str(held))
  assert results_folder.is_complete(str(tmp_path / "runs" / study.runs[1][0]))
  assert (f"  {study.runs[0][0]}: another process is writing this run; left"
          " to it") in log
  assert log[-2] == ("1 of 2 runs still being written by other processes:"
                     f" {study.runs[0][0]}")
  assert log[-1].startswith("study mechanism 1 of 2 runs complete")
  # Once the other process is gone, the same command finishes the study.
  log = []
  studies.run_study(study, str(tmp_path), data_source="sample",
                    log=log.append)
  assert results_folder.is_complete(str(held))
  assert log[-1].startswith("study mechanism done")


def _beside_a_holder(tmp_path, at_second_run):
  """Runs tiny_study() while "another process" holds run 0's lock; when run
  2 starts, calls ``at_second_run(release, study, held)``. Returns the log
  and run 0's folder."""
  study = tiny_study()
  held = tmp_path / "runs" / study.runs[0][0]
  held.mkdir(parents=True)
  other = contextlib.ExitStack()
  other.enter_context(results_folder.lock_out_dir(str(held)))
  log = []

  def log_and_act(line):
    log.append(line)
    if line.startswith("[2/2]"):
      at_second_run(other.close, study, held)

  studies.run_study(study, str(tmp_path), data_source="sample",
                    log=log_and_act)
  return log, held


def test_a_process_that_ends_with_every_run_complete_says_done(tmp_path):
  # Two processes, two runs: "A" holds run 0; this one skips it and runs
  # run 1, and A finishes run 0 meanwhile. Both runs are complete when this
  # process ends, so it says done.
  def a_finishes(release, study, held):
    release()
    experiment.run_experiment(study.runs[0][1], str(held),
                              data_source="sample", log=lambda s: None)

  log, _ = _beside_a_holder(tmp_path, a_finishes)
  assert log[-1].startswith("study mechanism done"), log[-1]


def test_a_run_whose_holder_died_is_resumed_at_the_end(tmp_path):
  # "A" took run 0 and died before finishing (its lock is free again by the
  # time this process looks at the runs it left).
  log, held = _beside_a_holder(
      tmp_path, lambda release, study, held: release())
  assert results_folder.is_complete(str(held))
  assert any("left to another process earlier, looked at again" in l
             for l in log)
  assert log[-1].startswith("study mechanism done"), log[-1]


def test_a_run_finished_by_another_between_look_and_lock(tmp_path,
                                                         monkeypatch):
  # This process decides "no resume" for run 0 (no config.json yet); before
  # it takes the lock, another process runs run 0 to the end. The run is read
  # back, not refused as "already holds this run".
  study = tiny_study()
  run0 = str(tmp_path / "runs" / study.runs[0][0])
  real = results_folder.check_writable
  fired = []

  def check_writable(out_dir):
    real(out_dir)
    if out_dir == run0 and not fired:
      fired.append(True)
      monkeypatch.setattr(results_folder, "check_writable", real)
      experiment.run_experiment(study.runs[0][1], run0, data_source="sample",
                                log=lambda s: None)
      monkeypatch.setattr(results_folder, "check_writable", check_writable)

  monkeypatch.setattr(results_folder, "check_writable", check_writable)
  log = []
  studies.run_study(study, str(tmp_path), data_source="sample",
                    log=log.append)
  assert fired
  assert any(l.endswith("completed by another process meanwhile")
             for l in log)
  assert log[-1].startswith("study mechanism done"), log[-1]


def test_lr_sweep_table_leaves_out_a_run_still_training(study_dir, tmp_path):
  out, _ = study_dir
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  (copy / "runs" / "DEAHES-O_disconnect_tau1" /
   results_folder.SUMMARY_FILE).unlink()
  table = studies.lr_sweep_table(str(copy))
  assert "| EAHES-O | 0.01 |" in table
  assert "| DEAHES-O |" not in table
  assert "Not finished, left out: DEAHES-O_disconnect_tau1." in table
  full = studies.lr_sweep_table(str(out))
  assert "| DEAHES-O | 0.01 |" in full and "Not finished" not in full


def test_lr_sweep_table_pairs_the_families_at_every_shared_rate(study_dir):
  out, _ = study_dir
  table = studies.lr_sweep_table(str(out))
  runs = {name: plotting.load_run(str(out / "runs" / name))
          for name in ("DEAHES-O_disconnect_tau1", "EAHES-O_disconnect_tau1")}
  d = stats.paired_difference(
      claims.per_seed(runs["DEAHES-O_disconnect_tau1"], "late"),
      claims.per_seed(runs["EAHES-O_disconnect_tau1"], "late"))
  assert (f"| 0.01 | DEAHES-O | EAHES-O | {d.format()} | {d.wins}/{d.n} |"
          in table.split("Each rate both families ran")[1])


def test_plot_lr_sweep_draws_each_family_with_its_interval(tmp_path):
  by_family = {"EASGD": {0.1: {0: 0.95, 1: 0.97, 2: 0.96},
                         0.01: {0: 0.90, 1: 0.92, 2: 0.91}},
               "EAHES": {0.01: {0: 0.91}}}
  points = study_figures.lr_sweep_points(by_family)
  rates, means, half = points["EASGD"]
  assert rates == [0.01, 0.1]
  np.testing.assert_allclose(means, [0.91, 0.96])
  # s = 0.01 at both rates, n = 3: t_{0.975, 2} = 4.3027 · 0.01 / √3.
  np.testing.assert_allclose(half, [0.024841, 0.024841], rtol=1e-4)
  assert points["EAHES"][2].tolist() == [0.0]  # one seed: no interval
  path = study_figures.plot_lr_sweep(by_family, str(tmp_path / "lr.png"),
                                     "caption")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_failure_label_names_each_setting():
  label = lambda **kw: studies.failure_label(
      config_lib.SimConfig(**kw).resolve().to_dict())
  assert label() == "disconnect"
  assert label(failure_mode="crash") == "crash"
  assert label(failure_model="bursty", mean_outage=20.0) == "bursty 20"
  assert label(failure_model="bursty", mean_outage=20.0,
               failure_mode="crash") == "bursty 20, crash"


def test_dw_sweep_table_pairs_each_weighting_run_with_its_pull(study_dir,
                                                                tmp_path):
  out, _ = study_dir
  study = tiny_study("dw_sweep")
  (point,), unfinished = studies.dw_sweep_results(study, str(out))
  assert unfinished == []
  weighted = str(out / "runs" / "DEAHES-O_disconnect_tau1")
  d = stats.paired_difference(
      claims.per_seed(plotting.load_run(weighted), "late"),
      claims.per_seed(plotting.load_run(
          str(out / "runs" / "EAHES-O_disconnect_tau1")), "late"))
  assert point.difference == d
  assert (point.failures, point.history, point.threshold) == (
      "disconnect", 3, -3.0)
  assert point.activity == mechanism.run_activity(weighted)
  # Two seeds × 12 rounds × 3 workers, the connected ones counted.
  act = point.activity
  connected = sum(sum(r["connected"]) for r in
                  results_folder.read_metrics(weighted) if r["round"] >= 1)
  assert act.rejoin_rounds + act.healthy_rounds == connected
  table = studies.dw_sweep_table(study, str(out))
  assert (f"| disconnect | 3 | -3 | {d.format()} | {d.wins}/{d.n} |"
          f" {act.rejoin_pull:.4f} | {act.healthy_pull:.4f} |" in table)
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  (copy / "runs" / "EAHES-O_disconnect_tau1" /
   results_folder.SUMMARY_FILE).unlink()
  points, unfinished = studies.dw_sweep_results(study, str(copy))
  assert points == [] and unfinished == ["DEAHES-O_disconnect_tau1"]
  assert "Not finished, left out: DEAHES-O_disconnect_tau1." in (
      studies.dw_sweep_table(study, str(copy)))


def _copy_as_study(out, tmp_path, name):
  """A copy of the tiny study's folder, recorded as study ``name``."""
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  record = json.loads((copy / studies.STUDY_FILE).read_text())
  record["study"] = name
  (copy / studies.STUDY_FILE).write_text(json.dumps(record))
  return copy


def test_report_of_a_dw_sweep_folder(study_dir, tmp_path):
  out, _ = study_dir
  copy = _copy_as_study(out, tmp_path, "dw_sweep")
  written = study_figures.write_report(str(copy), str(tmp_path / "fig"))
  assert sorted(p.split("/")[-1] for p in written) == ["dw_sweep.md",
                                                        "dw_sweep.png"]
  table = (tmp_path / "fig" / "dw_sweep.md").read_text()
  assert table.count("| disconnect | 3 | -3 |") == 2  # late and final


def _point(failures, history, threshold, mean):
  d = stats.PairedDifference(mean, 0.001, 5, mean - 0.002, mean + 0.002,
                             0.95, 0)
  act = mechanism.Activity(0.2, 0.1, 10, 90, 0.18)
  return studies.DwPoint(failures, history, threshold, d, act)


def test_a_run_that_stored_no_weights_has_no_pull_to_plot(tmp_path):
  c = np.ones((3, 2), bool)
  u = np.zeros((3, 2))
  act = mechanism.activity(
      [mechanism.RoundSeries(c, u, u, np.full((3, 2), np.nan))], 0.1)
  assert act.rejoin_rounds + act.healthy_rounds == 0
  assert np.isnan(act.mean_pull) and np.isnan(act.rejoin_fraction)
  point = dataclasses.replace(_point("bursty 20", 1, -0.1, -0.01),
                              activity=act)
  path = study_figures.plot_dw_sweep([point], str(tmp_path / "dw.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_dw_sweep_joins_each_setting_by_threshold(tmp_path):
  points = [_point("crash", 1, -1.0, -0.01), _point("crash", 1, -0.1, -0.03),
            _point("crash", 2, -3.0, 0.0), _point("bursty 20", 1, -0.3, -0.02)]
  series = study_figures.dw_sweep_series(points)
  assert list(series) == [("bursty 20", 1), ("crash", 1), ("crash", 2)]
  assert [p.threshold for p in series[("crash", 1)]] == [-0.1, -1.0]
  path = study_figures.plot_dw_sweep(points, str(tmp_path / "dw.png"), "c")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_grid_claims_leave_out_a_run_still_training(study_dir, tmp_path):
  # The same runs as a grid folder (no study.json): claims.md pairs them;
  # with one run unfinished it must not judge it at whatever round it had
  # reached, but leave it out and say so.
  out, _ = study_dir
  grid_dir = tmp_path / "grid"
  shutil.copytree(out, grid_dir)
  (grid_dir / studies.STUDY_FILE).unlink()
  study_figures.write_report(str(grid_dir), str(tmp_path / "full"))
  full = (tmp_path / "full" / "claims.md").read_text()
  assert "DEAHES-O − EAHES-O" in full and "Not finished" not in full
  (grid_dir / "runs" / "EAHES-O_disconnect_tau1" /
   results_folder.SUMMARY_FILE).unlink()
  study_figures.write_report(str(grid_dir), str(tmp_path / "part"))
  part = (tmp_path / "part" / "claims.md").read_text()
  assert "DEAHES-O − EAHES-O" not in part
  assert "Not finished, left out: EAHES-O_disconnect_tau1." in part
  # Nor do the grid's mechanism table and the over-rounds table use it.
  full_events = (tmp_path / "full" / "mechanism_events.md").read_text()
  part_events = (tmp_path / "part" / "mechanism_events.md").read_text()
  assert "| EAHES-O_disconnect_tau1 |" in full_events
  assert "| EAHES-O_disconnect_tau1 |" not in part_events


def test_dw_sweep_summary_counts_verdicts_and_spans_per_failure_setting():
  ahead = _point("crash", 3, -3.0, 0.01)  # interval [+0.008, +0.012]
  level = dataclasses.replace(
      _point("crash", 1, -1.0, 0.001),
      difference=stats.PairedDifference(0.001, 0.002, 5, -0.001, 0.003,
                                        0.95, 3))
  eager = [_point("crash", 1, -0.1, -0.03), _point("crash", 2, -0.3, -0.02)]
  eager[1] = dataclasses.replace(
      eager[1], activity=mechanism.Activity(0.5, 0.1, 10, 90, 0.36))
  other = _point("bursty 20", 1, -3.0, -0.004)
  table = studies.dw_sweep_summary([ahead, level, *eager, other])
  rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
  assert rows == [
      # One setting, behind; no eager threshold; pull 0.2 ÷ 0.1.
      "| bursty 20 | 1 | 0 / 0 / 1 | (1, -3): -0.0040 [-0.0060, -0.0020],"
      " 0/5 | – | 2.00 |",
      # Best by mean: p = 3, k = −3; eager means −0.03 and −0.02; pull
      # ratios 2 (three settings) and 5.
      "| crash | 4 | 1 / 1 / 2 | (3, -3): +0.0100 [+0.0080, +0.0120], 0/5 |"
      " -0.0300 to -0.0200 | 2.00 to 5.00 |"]
  assert studies.dw_sweep_summary([]).startswith("No setting")


def test_the_weighting_sweeps_table_reports_the_sample_std(tmp_path,
                                                           monkeypatch):
  base = config_lib.SimConfig(model="mlp", rounds=6, num_seeds=3,
                              eval_every=2, train_eval_size=100,
                              eval_batch_size=100, num_workers=2)
  monkeypatch.setattr(grid, "dynamic_weighting_configs",
                      lambda b: [b.replace(method="EAHES-O")])
  table = grid.run_dynamic_weighting_sweep(base, str(tmp_path),
                                           log=lambda s: None)
  rows = [r for r in results_folder.read_metrics(
      str(tmp_path / "EAHES-O")) if r["test_accuracy"] is not None]
  final = np.array([r["test_accuracy"] for r in rows if r["round"] == 6])
  assert final.size == 3
  # ddof = 1, as every table of the project (the population std is smaller).
  assert f"{final.mean():.4f} ± {np.std(final, ddof=1):.4f} |" in table


def test_report_of_a_label_skew_folder_draws_figure_3(study_dir, tmp_path):
  # Two EAHES-O runs at different overlap ratios, as the label-skew study.
  out, _ = study_dir
  copy = _copy_as_study(out, tmp_path, "label_skew")
  config_path = (copy / "runs" / "DEAHES-O_disconnect_tau1" /
                 results_folder.CONFIG_FILE)
  stored = json.loads(config_path.read_text())
  stored["config"].update(method="EAHES-O", overlap_ratio=0.0)
  config_path.write_text(json.dumps(stored))
  written = study_figures.write_report(str(copy), str(tmp_path / "fig"))
  assert sorted(p.split("/")[-1] for p in written) == [
      "label_skew.md", "label_skew_figure3.png"]
  with open(tmp_path / "fig" / "label_skew_figure3.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
