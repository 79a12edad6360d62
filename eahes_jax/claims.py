"""The paper's claims as paired comparisons, from stored results alone.

Each claim of the paper (§VII) becomes one or more comparisons "a − b" of two
runs of the same panel (k, τ) on the same seeds; ``claims_table`` writes them
as markdown with the paired 95 % t interval of ``stats.paired_difference`` and
a verdict per claim:

* **holds**: every comparison the claim needs goes its way (interval above
  0, or inside the closeness margin for "close to");
* **fails**: at least one comparison goes significantly against it;
* **undecided**: neither (intervals straddle 0).

The compared quantity is the master's final test accuracy (at the run's last
round) or its mean over the evaluations of the last third of the rounds
("late", less noisy); both are per seed.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from eahes_jax import methods
from eahes_jax import stats

# How close "close to" is: the paired 95 % interval of the difference must lie
# inside ± this many accuracy points. One point is the spread the paper's
# figures show between curves it calls close.
CLOSE_MARGIN = 0.01

QUANTITIES = ("final", "late")

HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"


class RunLike(Protocol):
  """What a comparison needs of a stored run (``plotting.RunCurves``)."""

  key: tuple[str, int, int, float]
  seeds: np.ndarray
  eval_rounds: np.ndarray
  test_accuracy: np.ndarray


def per_seed(run: RunLike, quantity: str = "final",
             up_to_round: int | None = None) -> dict[int, float]:
  """Seed -> the run's final (or late-mean) test accuracy.

  Args:
    run: a stored run, e.g. from ``plotting.load_results``.
    quantity: ``"final"`` (the last evaluation) or ``"late"`` (the mean of
      the evaluations at rounds ≥ R − R // 3, R the last evaluated round).
    up_to_round: ignore evaluations after this round (to compare a finished
      run with one still going at the same point).

  Returns:
    One value per seed that has it.
  """
  if quantity not in QUANTITIES:
    raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
  acc = np.asarray(run.test_accuracy, np.float64)
  rounds = np.asarray(run.eval_rounds)
  if up_to_round is not None:
    keep = rounds <= up_to_round
    acc, rounds = acc[:, keep], rounds[keep]
  if quantity == "final":
    values = acc[:, -1]
  else:
    last = rounds[-1]
    values = np.nanmean(acc[:, rounds >= last - last // 3], axis=1)
  return {int(s): float(v) for s, v in zip(run.seeds, values)
          if np.isfinite(v)}


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One paired comparison a − b that a claim needs.

  Attributes:
    a: the first run's label (a method, or "method @ k, τ").
    b: the second's.
    want: what the claim needs: ``"a > b"`` (a significantly ahead),
      ``"a ≥ b"`` (a not significantly behind) or ``"a ≈ b"`` (the interval
      of a − b inside ± ``CLOSE_MARGIN``).
    diff: the paired difference, or None where a run is missing.
  """

  a: str
  b: str
  want: str
  diff: stats.PairedDifference | None

  @property
  def outcome(self) -> str:
    """HOLDS, FAILS or UNDECIDED for this comparison alone."""
    d = self.diff
    if d is None or d.n < 2:
      return UNDECIDED
    if self.want == "a > b":
      return {stats.A_AHEAD: HOLDS, stats.B_AHEAD: FAILS}.get(d.verdict,
                                                             UNDECIDED)
    if self.want == "a ≥ b":
      return FAILS if d.verdict == stats.B_AHEAD else HOLDS
    if -CLOSE_MARGIN <= d.low and d.high <= CLOSE_MARGIN:
      return HOLDS
    if d.low > CLOSE_MARGIN or d.high < -CLOSE_MARGIN:
      return FAILS
    return UNDECIDED


@dataclasses.dataclass(frozen=True)
class ClaimResult:
  """A claim on one panel: its comparisons and the verdict they give."""

  claim: str
  panel: str
  comparisons: tuple[Comparison, ...]

  @property
  def verdict(self) -> str:
    outcomes = [c.outcome for c in self.comparisons]
    if FAILS in outcomes:
      return FAILS
    if outcomes and all(o == HOLDS for o in outcomes):
      return HOLDS
    return UNDECIDED


# The paper's claims (§VII): (name, [(a, b, want)]) on one panel.
PANEL_CLAIMS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    ("EAHES-OM is best",
     tuple(("EAHES-OM", m, "a > b") for m in methods.PAPER_METHODS
           if m != "EAHES-OM")),
    ("DEAHES-O is close to EAHES-OM",
     (("DEAHES-O", "EAHES-OM", "a ≈ b"),)),
    ("DEAHES-O is ahead of the rest",
     tuple(("DEAHES-O", m, "a > b")
           for m in ("EASGD", "EAMSGD", "EAHES", "EAHES-O"))),
    ("EAHES-O is ahead of EAHES", (("EAHES-O", "EAHES", "a > b"),)),
    ("AdaHessian methods are ahead of SGD ones",
     (("EAHES", "EASGD", "a > b"), ("EAHES", "EAMSGD", "a > b"))),
)


def panels(runs: Sequence[RunLike]) -> dict[tuple[int, int], dict[str, RunLike]]:
  """Runs of the paper's grid (default overlap) by (k, τ), then method."""
  out: dict[tuple[int, int], dict[str, RunLike]] = {}
  for run in runs:
    method, k, tau, r = run.key
    spec = methods.methods().get(method)
    if spec is None or abs(r - methods.default_overlap_ratio(spec, k)) > 1e-9:
      continue
    out.setdefault((k, tau), {})[method] = run
  return out


def evaluate_claims(runs: Sequence[RunLike], quantity: str = "final"
                    ) -> list[ClaimResult]:
  """Every claim on every panel the runs cover, plus "no degradation".

  Args:
    runs: stored runs (``plotting.load_results``).
    quantity: see ``per_seed``.

  Returns:
    Claim results, panel by panel; a claim is left out of a panel that has
    none of the runs it compares.
  """
  by_panel = panels(runs)
  values = {key: {m: per_seed(run, quantity) for m, run in by_method.items()}
            for key, by_method in by_panel.items()}

  def diff(a, b):
    return None if a is None or b is None else stats.paired_difference(a, b)

  results = []
  for (k, tau) in sorted(values):
    v = values[(k, tau)]
    for claim, needs in PANEL_CLAIMS:
      comps = tuple(Comparison(a, b, want, diff(v.get(a), v.get(b)))
                    for a, b, want in needs)
      if any(c.diff is not None for c in comps):
        results.append(ClaimResult(claim, f"k = {k}, τ = {tau}", comps))
  # No degradation from k = 4 to 8 (same τ) or from τ = 1 to each larger τ
  # run (same k; the paper's panels have 2 and 4): the larger setting is not
  # behind, per method, on the same seeds.
  for claim, pairs in (
      ("no degradation from k = 4 to k = 8",
       [((8, t), (4, t)) for t in sorted({t for _, t in values})]),
      ("no degradation from τ = 1 to a larger τ",
       [((k, t), (k, 1)) for k in sorted({k for k, _ in values})
        for t in sorted({t for _, t in values}) if t > 1])):
    for big, small in pairs:
      if big not in values or small not in values:
        continue
      comps = tuple(
          Comparison(f"{m} @ k={big[0]}, τ={big[1]}",
                     f"{m} @ k={small[0]}, τ={small[1]}", "a ≥ b",
                     diff(values[big].get(m), values[small].get(m)))
          for m in methods.PAPER_METHODS
          if m in values[big] and m in values[small])
      if comps:
        results.append(ClaimResult(claim, f"{big} vs {small}", comps))
  return results


def claims_table(runs: Sequence[RunLike], quantity: str = "final") -> str:
  """Markdown: one row per comparison, with the claim's verdict per panel.

  Args:
    runs: stored runs.
    quantity: ``"final"`` or ``"late"`` test accuracy (see ``per_seed``).

  Returns:
    The table (empty of rows when no claim can be judged).
  """
  what = ("final test accuracy" if quantity == "final" else
          "test accuracy averaged over the last third of the rounds")
  lines = [
      f"Paired differences a − b of the master's {what}, per seed, mean and"
      " two-sided 95 % Student-t interval over the seeds both runs share;"
      " \"a ahead on\" counts seeds. A claim holds on a panel when every"
      " comparison it needs goes its way, fails when one goes significantly"
      f" against it (\"close\": the interval within ± {CLOSE_MARGIN}).", "",
      "| claim | panel | a − b | paired difference [95 % CI] | a ahead on |"
      " comparison | claim on panel |", "|---|---|---|---|---|---|---|"]
  for result in evaluate_claims(runs, quantity):
    for i, c in enumerate(result.comparisons):
      d = c.diff
      lines.append(
          f"| {result.claim if i == 0 else ''} |"
          f" {result.panel if i == 0 else ''} | {c.a} − {c.b} |"
          f" {'missing run' if d is None else d.format()} |"
          f" {'' if d is None else f'{d.wins}/{d.n}'} | {c.outcome} |"
          f" {('**' + result.verdict + '**') if i == 0 else ''} |")
  return "\n".join(lines) + "\n"


def differences_over_rounds(a: RunLike, b: RunLike
                            ) -> list[tuple[int, stats.PairedDifference]]:
  """``a − b`` in test accuracy, paired per seed, at every evaluation both
  runs share after round 0: how a difference grows or fades over training.
  """
  rounds = np.intersect1d(a.eval_rounds, b.eval_rounds)
  out = []
  for r in rounds[rounds > 0]:
    va = a.test_accuracy[:, list(a.eval_rounds).index(r)]
    vb = b.test_accuracy[:, list(b.eval_rounds).index(r)]
    out.append((int(r), stats.paired_difference(dict(zip(a.seeds, va)),
                                                dict(zip(b.seeds, vb)))))
  return out


def over_rounds_table(runs: Sequence[RunLike], a: str, b: str) -> str:
  """Markdown: method ``a`` − method ``b`` at every evaluation, per panel.

  Args:
    runs: stored runs.
    a: the method whose lead is followed (e.g. "EAHES").
    b: the method it is paired against on the same seeds (e.g. "EASGD").

  Returns:
    One row per panel and evaluation round; a line saying so where no
    panel holds both.
  """
  lines = [f"{a} − {b} in the master's test accuracy at every evaluation,"
           " paired per seed (mean, two-sided 95 % Student-t interval).", "",
           "| panel | round | a − b [95 % CI] | a ahead on | verdict |",
           "|---|---|---|---|---|"]
  found = False
  for (k, tau), by_method in sorted(panels(runs).items()):
    if a not in by_method or b not in by_method:
      continue
    found = True
    for r, d in differences_over_rounds(by_method[a], by_method[b]):
      verdict = {stats.A_AHEAD: f"{a} ahead", stats.B_AHEAD: f"{b} ahead"
                 }.get(d.verdict, d.verdict)
      lines.append(f"| k = {k}, τ = {tau} | {r} | {d.format()} |"
                   f" {d.wins}/{d.n} | {verdict} |")
  if not found:
    return f"No panel holds both {a} and {b}.\n"
  return "\n".join(lines) + "\n"
