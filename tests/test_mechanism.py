"""The mechanism analysis on series built by hand."""

import json

import numpy as np
import pytest

from eahes_jax import mechanism
from eahes_jax import weighting

COEFFS = (0.6, 0.3, 0.1)


def test_outage_ends_and_rejoin_labels():
  c = np.array([[1, 1], [0, 1], [0, 1], [1, 0], [1, 1], [1, 1], [0, 1],
                [1, 1]], bool)
  assert mechanism.outage_ends(c) == [(3, 0), (4, 1), (7, 0)]
  labels = mechanism.rejoin_labels(c, window=2)
  expected = np.zeros_like(c)
  expected[[3, 4, 7], 0] = True
  expected[[4, 5], 1] = True
  np.testing.assert_array_equal(labels, expected)


def test_scores_are_eq_10_on_a_sliding_window():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(9, 3))
  a = mechanism.scores(u, COEFFS)
  assert np.isnan(a[:3]).all()
  for t in range(3, 9):
    by_hand = sum(c * (u[t - j] - u[t - j - 1]) for j, c in enumerate(COEFFS))
    np.testing.assert_allclose(a[t], by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        a[t], weighting.raw_score(u[t - 3:t + 1].T, np.array(COEFFS)),
        rtol=1e-5, atol=1e-6)


def test_aligned_pads_outside_the_run():
  values = np.arange(20, dtype=float).reshape(10, 2)
  out = mechanism.aligned(values, [(2, 1)])
  assert out.shape == (1, mechanism.OFFSETS.size)
  t = 2 + mechanism.OFFSETS
  inside = (t >= 0) & (t < 10)
  np.testing.assert_array_equal(out[0, inside], values[t[inside], 1])
  assert np.isnan(out[0, ~inside]).all()


def test_roc_auc_by_hand():
  # Rejoin scores (−3, −1, 0) against healthy (−2, 0, 1, 2): pairs with the
  # rejoin lower: −3 beats all 4; −1 beats 3 (0, 1, 2); 0 beats 2 and ties
  # 1 (½): (4 + 3 + 2.5) / 12.
  r = mechanism.roc([-3.0, -1.0, 0.0], [-2.0, 0.0, 1.0, 2.0])
  assert r.auc == pytest.approx(9.5 / 12)
  assert (r.positives, r.negatives) == (3, 4)
  assert r.fpr[0] == 0 and r.tpr[-1] == 1 and r.fpr[-1] == 1
  assert np.all(np.diff(r.fpr) >= 0) and np.all(np.diff(r.tpr) >= 0)
  perfect = mechanism.roc([-5.0, -4.0], [1.0, 2.0])
  assert perfect.auc == 1.0
  chance = mechanism.roc([1.0, 2.0], [1.0, 2.0])
  assert chance.auc == pytest.approx(0.5)


def test_analyse_sees_a_distance_that_drops_at_the_return():
  # u grows by 0.1 a round while a worker is away and drops by 1 at the
  # exchange that brings it back, then stays: a turns negative one round
  # after t₀ with the before reading, at t₀ with the after reading.
  rounds, k = 64, 2
  # Outages of 2 rounds every 8, staggered across the two workers, so each
  # score window holds one event at most.
  connected = np.ones((rounds, k), bool)
  for start in range(5, rounds, 8):
    connected[start:start + 2, 0] = False
    connected[start + 3:start + 5, 1] = False
  u = np.zeros((rounds, k))
  u_after = np.zeros((rounds, k))
  for w in range(k):
    level = 0.0
    for t in range(rounds):
      if not connected[t, w]:
        level += 0.1
      u[t, w] = level
      if connected[t, w] and t > 0 and not connected[t - 1, w]:
        level -= 1.0
      u_after[t, w] = level
  series = [mechanism.RoundSeries(connected, u, u_after)]
  an = mechanism.analyse(series, COEFFS, window=2)
  z = mechanism.BEFORE
  assert an.events == len(mechanism.outage_ends(connected))
  finite = lambda x: x[np.isfinite(x)]   # The last event ends the run.
  assert finite(an.a[:, z + 1]).size == an.events - 1
  np.testing.assert_allclose(an.a[:, z], 0.6 * 0 + 0.3 * 0.1 + 0.1 * 0.1,
                             atol=1e-6)   # Still drifting: a ≥ 0 at t₀.
  np.testing.assert_allclose(finite(an.a[:, z + 1]), 0.6 * -1 + 0.3 * 0 + 0.1 * 0.1,
                             atol=1e-6)   # The drop is seen one round late.
  np.testing.assert_allclose(an.a_after[:, z], 0.6 * -1 + 0.3 * 0.1
                             + 0.1 * 0.1, atol=1e-6)
  # Every rejoin round (t − t₀ < 2) is a positive, every other connected
  # round a negative.
  labels = mechanism.rejoin_labels(connected, 2)
  assert an.roc_before.positives == labels.sum()
  assert an.roc_before.negatives == (connected & ~labels)[3:].sum()
  # u is aligned to its value in the outage's last round.
  np.testing.assert_allclose(an.u[:, z - 1], 0.0)


def test_load_series_reads_null_as_nan(tmp_path):
  # Strict JSON writes a non-finite log-distance as null.
  rows = [{"round": 0, "seed": 0, "connected": None, "log_distance": None},
          {"round": 1, "seed": 0, "connected": [True, False],
           "log_distance": [0.5, None], "log_distance_after": [0.1, 0.2],
           "h_worker": [0.25, 0.1]},
          {"round": 2, "seed": 0, "connected": [True, True],
           "log_distance": [0.4, 0.3]}]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  (series,) = mechanism.load_series(str(tmp_path))
  np.testing.assert_array_equal(series.connected, [[True, False],
                                                   [True, True]])
  np.testing.assert_array_equal(series.u, [[0.5, np.nan], [0.4, 0.3]])
  np.testing.assert_array_equal(series.u_after, [[0.1, 0.2],
                                                 [np.nan, np.nan]])
  np.testing.assert_array_equal(series.h_worker, [[0.25, 0.1],
                                                  [np.nan, np.nan]])


def test_a_run_without_failures_has_no_roc_and_a_table_row():
  connected = np.ones((12, 2), bool)
  u = np.linspace(0, -1, 24).reshape(12, 2)
  an = mechanism.analyse([mechanism.RoundSeries(connected, u, u)], COEFFS)
  assert an.events == 0 and an.roc_before is None and an.roc_after is None
  assert "| none | 0 |" in mechanism.summary_table({"none": an})
  assert np.isfinite(an.healthy_median)
  # Every round is connected here: the lowest over all their scores.
  connected_scores = mechanism.scores(u, COEFFS)[connected]
  assert an.lowest == pytest.approx(np.nanmin(connected_scores))
  assert f"| {an.lowest:+.3f} |" in mechanism.summary_table({"none": an})


def test_a_run_with_no_round_yet_is_left_out(tmp_path):
  run = tmp_path / "runs" / "EAHES-O_x"
  run.mkdir(parents=True)
  (run / "metrics.jsonl").write_text(json.dumps(
      {"round": 0, "seed": 0, "connected": None, "log_distance": None}) + "\n")
  assert mechanism.study_analyses(str(tmp_path), ["EAHES-O_x"]) == {}
  with pytest.raises(ValueError, match="at least one"):
    mechanism.analyse([], COEFFS)


def test_activity_by_hand():
  # Worker 0 is away in rounds 1-2 and back at t₀ = 3; worker 1 never
  # fails. α = 0.1 stored in float32, as the runs store h1.
  alpha = 0.1
  connected = np.array([[1, 1], [0, 1], [0, 1], [1, 1], [1, 1], [1, 1],
                        [1, 1]], bool)
  h = np.full((7, 2), np.float32(alpha), np.float64)
  h[3, 0] = 0.1 + 0.9 * 0.5   # pull ½ at the return
  h[4, 0] = 0.1 + 0.9 * 0.25  # ¼ a round later
  h[1, 0] = 0.1 + 0.9 * 1.0   # while away: not an exchange, not counted
  h[5, 1] = 0.1 + 0.9 * 0.25  # a healthy round pulled
  u = np.zeros((7, 2))
  act = mechanism.activity([mechanism.RoundSeries(connected, u, u, h)],
                           alpha, window=2)
  # Rejoin rounds (window 2): worker 0 at rounds 3 and 4.
  assert (act.rejoin_rounds, act.healthy_rounds) == (2, 10)
  assert act.rejoin_pull == pytest.approx((0.5 + 0.25) / 2)
  assert act.healthy_pull == pytest.approx(0.25 / 10)
  assert act.rejoin_share == pytest.approx(0.75 / 1.0)
  assert act.mean_pull == pytest.approx((0.5 + 0.25 + 0.25) / 12)
  assert act.rejoin_fraction == pytest.approx(2 / 12)
  # Where h1 = α in float32 the pull is exactly 0, not float rounding.
  still = mechanism.activity(
      [mechanism.RoundSeries(connected, u, u, np.full((7, 2), np.float32(
          alpha), np.float64))], alpha, window=2)
  assert still.rejoin_pull == 0.0 and still.healthy_pull == 0.0
  assert np.isnan(still.rejoin_share)


def test_activity_rejects_what_it_cannot_measure():
  c = np.ones((3, 1), bool)
  u = np.zeros((3, 1))
  with pytest.raises(ValueError, match="h_worker"):
    mechanism.activity([mechanism.RoundSeries(c, u, u)], 0.1)
  with pytest.raises(ValueError, match="alpha"):
    mechanism.activity([mechanism.RoundSeries(c, u, u, u)], 1.0)
  with pytest.raises(ValueError, match="at least one"):
    mechanism.activity([], 0.1)
