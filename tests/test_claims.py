"""The claims table: paired comparisons on stored runs, verdicts by hand."""

import numpy as np
import pytest

from eahes_jax import claims
from eahes_jax import methods
from eahes_jax import plotting

SEEDS = np.arange(5)
# A shared per-seed spread much larger than the differences between methods:
# only the pairing can separate them.
SPREAD = np.array([0.0, 0.05, -0.04, 0.08, -0.06])


def fake_run(method, k=4, tau=1, offset=0.0, noise=None):
  spec = methods.get_method(method)
  r = methods.default_overlap_ratio(spec, k)
  final = 0.8 + SPREAD + offset + (0 if noise is None else noise)
  acc = np.stack([0.1 + 0 * final, final - 0.01, final], axis=1)
  return plotting.RunCurves(
      name=method, config=dict(method=method, num_workers=k, comm_period=tau,
                               overlap_ratio=r),
      data_source="test", seeds=SEEDS, eval_rounds=np.array([0, 20, 30]),
      test_accuracy=acc, train_loss=1 - acc, complete=True)


def panel(offsets, **kw):
  return [fake_run(m, offset=o, **kw) for m, o in offsets.items()]


def by_claim(results):
  return {(r.claim, r.panel): r for r in results}


def test_per_seed_final_and_late():
  run = fake_run("EAHES")
  final = claims.per_seed(run, "final")
  assert final == pytest.approx({s: 0.8 + SPREAD[s] for s in SEEDS})
  # Rounds ≥ 30 − 10 = 20: the mean of the last two evaluations.
  late = claims.per_seed(run, "late")
  assert late == pytest.approx({s: 0.8 + SPREAD[s] - 0.005 for s in SEEDS})


def test_verdicts_follow_the_paired_differences():
  jitter = np.array([0.001, -0.001, 0.0005, 0.0, -0.0005])
  runs = panel({"EASGD": -0.10, "EAMSGD": 0.02, "EAHES": 0.0,
                "EAHES-O": 0.0})
  runs += [fake_run("EAHES-OM", offset=-0.05),
           fake_run("DEAHES-O", offset=-0.05, noise=jitter)]
  results = by_claim(claims.evaluate_claims(runs))
  panel_name = "k = 4, τ = 1"
  # The oracle is behind EAMSGD on every seed by 0.07: fails.
  assert results[("EAHES-OM is best", panel_name)].verdict == claims.FAILS
  # DEAHES-O − EAHES-OM is ±0.001 around 0: inside the 0.01 margin.
  assert (results[("DEAHES-O is close to EAHES-OM", panel_name)].verdict
          == claims.HOLDS)
  # EAHES-O − EAHES is exactly 0 on every seed: no difference detected.
  assert (results[("EAHES-O is ahead of EAHES", panel_name)].verdict
          == claims.UNDECIDED)
  # EAHES beats EASGD but trails EAMSGD: the claim fails.
  ada = results[("AdaHessian methods are ahead of SGD ones", panel_name)]
  assert [c.outcome for c in ada.comparisons] == [claims.HOLDS, claims.FAILS]
  assert ada.verdict == claims.FAILS
  table = claims.claims_table(runs)
  assert "| EAHES − EASGD | +0.1000 [+0.1000, +0.1000] | 5/5 | holds |" in (
      table)


def test_an_unpaired_reading_would_not_separate_these_runs():
  # 0.01 ahead on every seed, under a seed spread of ±0.06: the pairing
  # decides it, while the two runs' mean ± std bands overlap widely.
  runs = [fake_run("EAHES"), fake_run("EAHES-O", offset=0.01)]
  result = by_claim(claims.evaluate_claims(runs))[
      ("EAHES-O is ahead of EAHES", "k = 4, τ = 1")]
  assert result.verdict == claims.HOLDS
  assert np.std(0.8 + SPREAD, ddof=1) > 0.05


def test_no_degradation_compares_panels_per_method():
  runs = [fake_run("EASGD", k=4), fake_run("EASGD", k=8, offset=0.02),
          fake_run("EAHES", k=4), fake_run("EAHES", k=8, offset=-0.03)]
  results = by_claim(claims.evaluate_claims(runs))
  r = results[("no degradation from k = 4 to k = 8", "(8, 1) vs (4, 1)")]
  assert [c.outcome for c in r.comparisons] == [claims.HOLDS, claims.FAILS]
  assert r.verdict == claims.FAILS


def test_no_degradation_in_tau_compares_each_larger_tau_with_tau_1():
  runs = [fake_run("EASGD", tau=1), fake_run("EASGD", tau=2, offset=0.02),
          fake_run("EASGD", tau=4, offset=-0.03)]
  results = by_claim(claims.evaluate_claims(runs))
  two = results[("no degradation from τ = 1 to a larger τ",
                 "(4, 2) vs (4, 1)")]
  four = results[("no degradation from τ = 1 to a larger τ",
                  "(4, 4) vs (4, 1)")]
  assert two.verdict == claims.HOLDS and four.verdict == claims.FAILS
  assert two.comparisons[0].a == "EASGD @ k=4, τ=2"


def test_missing_runs_are_reported_not_guessed():
  runs = [fake_run("EAHES"), fake_run("EASGD", offset=-0.1)]
  table = claims.claims_table(runs)
  assert "| EAHES − EAMSGD | missing run |  | undecided |" in table
  result = by_claim(claims.evaluate_claims(runs))[
      ("AdaHessian methods are ahead of SGD ones", "k = 4, τ = 1")]
  assert result.verdict == claims.UNDECIDED  # Not "holds" on half the data.
  # A claim none of whose runs exist is left out of the panel.
  assert "EAHES-OM is best" not in table


def test_paired_difference_figure(tmp_path):
  from eahes_jax import study_figures  # pylint: disable=g-import-not-at-top
  runs = panel({"EAHES-O": 0.0, "EASGD": -0.1, "EAMSGD": 0.02})
  path = study_figures.plot_paired_differences(
      runs, "EAHES-O", str(tmp_path / "paired.png"))
  assert path and (tmp_path / "paired.png").stat().st_size > 10_000
  # Without the reference in any panel there is nothing to draw.
  assert study_figures.plot_paired_differences(
      runs[1:], "EAHES-O", str(tmp_path / "none.png")) is None
  assert not (tmp_path / "none.png").exists()


def test_per_seed_up_to_a_round():
  run = fake_run("EAHES")
  # Up to round 20: the evaluation at round 20 is the last one kept.
  assert claims.per_seed(run, "final", up_to_round=25) == pytest.approx(
      {s: 0.8 + SPREAD[s] - 0.01 for s in SEEDS})


def test_differences_over_rounds_pair_seeds_at_every_shared_evaluation():
  # EAHES leads EASGD by 0.05 at round 20 and by nothing at round 30.
  sgd = fake_run("EASGD")
  ada = fake_run("EAHES")
  ada.test_accuracy[:, 1] += 0.05
  over = claims.differences_over_rounds(ada, sgd)
  assert [r for r, _ in over] == [20, 30]  # round 0 is left out
  assert over[0][1].mean == pytest.approx(0.05)
  assert over[0][1].wins == len(SEEDS)
  assert over[1][1].mean == pytest.approx(0.0)
  table = claims.over_rounds_table([ada, sgd], "EAHES", "EASGD")
  assert "| k = 4, τ = 1 | 20 | +0.0500 [+0.0500, +0.0500] | 5/5 |" \
         " EAHES ahead |" in table
  assert "| k = 4, τ = 1 | 30 | +0.0000" in table
  assert claims.over_rounds_table([sgd], "EAHES", "EASGD").startswith(
      "No panel")
