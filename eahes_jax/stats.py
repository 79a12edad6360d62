"""Paired statistics for comparing methods run on the same seeds.

Every method of a panel runs on the same seeds with common random numbers
(same initialisation, overlap partition, failure schedule and minibatch
stream wherever the method allows; docs/algorithms.md §9), so two methods are
compared by their *per-seed differences*, which cancel the seed-to-seed
spread that both share. This module holds the few numbers the README reports:

* ``describe``: mean ± sample standard deviation (ddof = 1) over seeds;
* ``paired_difference``: the mean of the per-seed differences a − b with a
  two-sided Student-t confidence interval (n − 1 degrees of freedom), the
  number of seeds where a beat b, and a three-way verdict.

The t interval assumes the per-seed differences are roughly normal; with the
5-10 seeds used here it is the textbook choice and is what the README quotes.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats as scipy_stats

# Verdicts of ``PairedDifference.verdict``.
A_AHEAD = "a ahead"
B_AHEAD = "b ahead"
UNDECIDED = "no difference detected"


class Summary(NamedTuple):
  """Mean and sample standard deviation of one quantity over seeds.

  Attributes:
    mean: the mean.
    std: the sample standard deviation (ddof = 1); NaN for one seed.
    n: the number of seeds.
  """

  mean: float
  std: float
  n: int

  def format(self, digits: int = 4) -> str:
    """``"m ± s"``, or just ``"m"`` for a single seed."""
    if self.n < 2:
      return f"{self.mean:.{digits}f}"
    return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


class PairedDifference(NamedTuple):
  """The per-seed difference a − b of two runs on the same seeds.

  Attributes:
    mean: mean of the differences.
    std: their sample standard deviation (ddof = 1); NaN for one seed.
    n: number of paired seeds.
    low: lower end of the two-sided t interval (NaN for one seed).
    high: upper end of the interval.
    confidence: the interval's confidence level, e.g. 0.95.
    wins: seeds where a > b.
  """

  mean: float
  std: float
  n: int
  low: float
  high: float
  confidence: float
  wins: int

  @property
  def verdict(self) -> str:
    """``A_AHEAD`` if the interval lies above 0, ``B_AHEAD`` if below, else
    ``UNDECIDED``."""
    if self.low > 0:
      return A_AHEAD
    if self.high < 0:
      return B_AHEAD
    return UNDECIDED

  def format(self, digits: int = 4) -> str:
    """``"+0.0123 [+0.0050, +0.0196]"``: the mean and its interval."""
    if self.n < 2:
      return f"{self.mean:+.{digits}f} (one seed: no interval)"
    return (f"{self.mean:+.{digits}f} [{self.low:+.{digits}f},"
            f" {self.high:+.{digits}f}]")


def describe(values: Sequence[float]) -> Summary:
  """Mean ± sample standard deviation (ddof = 1) of ``values``.

  Args:
    values: one number per seed, at least one.

  Returns:
    The ``Summary``.

  Raises:
    ValueError: ``values`` is empty or holds a non-finite number.
  """
  x = _finite_vector(values, "values")
  std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
  return Summary(float(np.mean(x)), std, int(x.size))


def t_quantile(confidence: float, dof: int) -> float:
  """The two-sided Student-t critical value t_{(1+confidence)/2, dof}."""
  return float(scipy_stats.t.ppf(0.5 + confidence / 2.0, dof))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], *,
                      confidence: float = 0.95) -> PairedDifference:
  """The paired difference a − b over the seeds both runs have.

  mean ± t_{(1+c)/2, n−1} · s / √n, with s the sample standard deviation of
  the per-seed differences.

  Args:
    a: seed -> value of the first run (e.g. its final test accuracy).
    b: seed -> value of the second run.
    confidence: the interval's level, in (0, 1).

  Returns:
    The ``PairedDifference``.

  Raises:
    ValueError: the runs share no seed, a value is not finite, or
      ``confidence`` is out of range.
  """
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
  seeds = sorted(set(a) & set(b))
  if not seeds:
    raise ValueError(
        f"a and b share no seed (a: {sorted(a)}, b: {sorted(b)})")
  d = _finite_vector([a[s] - b[s] for s in seeds], "a - b")
  n = int(d.size)
  mean = float(np.mean(d))
  wins = int(np.sum(d > 0))
  if n < 2:
    return PairedDifference(mean, math.nan, n, math.nan, math.nan,
                            confidence, wins)
  std = float(np.std(d, ddof=1))
  half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
  return PairedDifference(mean, std, n, mean - half, mean + half, confidence,
                          wins)


def _finite_vector(values: Sequence[float], name: str) -> np.ndarray:
  x = np.asarray(values, np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError(f"{name} must hold at least one number, got none")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} must be finite, got {x.tolist()}")
  return x
