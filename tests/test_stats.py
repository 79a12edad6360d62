"""Paired statistics against numbers computed by hand."""

import math

import pytest

from eahes_jax import stats


def test_describe_uses_the_sample_standard_deviation():
  # (1 + 2 + 3 + 4) / 4 = 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 =
  # 5, over n − 1 = 3: std = √(5/3).
  s = stats.describe([1.0, 2.0, 3.0, 4.0])
  assert s.n == 4
  assert s.mean == pytest.approx(2.5)
  assert s.std == pytest.approx(math.sqrt(5 / 3))
  assert s.format(2) == "2.50 ± 1.29"


def test_describe_of_one_seed_has_no_spread():
  s = stats.describe([0.7])
  assert math.isnan(s.std)
  assert s.format(2) == "0.70"  # No "± 0.00" for a single seed.


def test_paired_difference_by_hand():
  # d = a − b per seed = (0.10, 0.02, 0.05); mean 0.17/3 = 0.0566667.
  # Deviations 0.0433333, −0.0366667, −0.0066667; their squares sum to
  # 0.0032667, / 2 = 0.0016333, std = 0.0404145. t(0.975, 2) = 4.302653
  # (a t table's value), half width = 4.302653 · 0.0404145 / √3 = 0.100395.
  a = {0: 0.90, 1: 0.80, 2: 0.85, 7: 0.5}   # seed 7 has no partner: ignored
  b = {0: 0.80, 1: 0.78, 2: 0.80}
  d = stats.paired_difference(a, b)
  assert d.n == 3 and d.wins == 3
  assert d.mean == pytest.approx(0.0566667, abs=1e-6)
  assert d.std == pytest.approx(0.0404145, abs=1e-6)
  assert d.low == pytest.approx(0.0566667 - 0.100395, abs=1e-5)
  assert d.high == pytest.approx(0.0566667 + 0.100395, abs=1e-5)
  # The interval straddles 0 although a won on every seed: undecided.
  assert d.verdict == stats.UNDECIDED


def test_paired_difference_is_not_the_unpaired_one():
  # Large seed-to-seed spread shared by both runs: the pairing removes it.
  a = {s: 0.5 + 0.1 * s + 0.01 for s in range(5)}
  b = {s: 0.5 + 0.1 * s for s in range(5)}
  d = stats.paired_difference(a, b)
  assert d.std == pytest.approx(0.0, abs=1e-12)
  assert d.low == pytest.approx(0.01) and d.verdict == stats.A_AHEAD
  reverse = stats.paired_difference(b, a)
  assert reverse.verdict == stats.B_AHEAD and reverse.wins == 0


def test_t_quantile_matches_a_table():
  assert stats.t_quantile(0.95, 4) == pytest.approx(2.776445, abs=1e-6)
  assert stats.t_quantile(0.95, 9) == pytest.approx(2.262157, abs=1e-6)


@pytest.mark.parametrize("a, b, confidence, match", [
    ({0: 1.0}, {1: 1.0}, 0.95, "share no seed"),
    ({0: float("nan")}, {0: 1.0}, 0.95, "finite"),
    ({0: 1.0}, {0: 1.0}, 1.0, "confidence"),
])
def test_paired_difference_rejects_bad_input(a, b, confidence, match):
  with pytest.raises(ValueError, match=match):
    stats.paired_difference(a, b, confidence=confidence)
