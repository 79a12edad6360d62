"""Does the raw score see a worker come back? The premise of §V-B, measured.

The paper's dynamic weighting rests on one sentence: "if a worker fails, its
raw score becomes negative in the next few time steps". This module measures
that from a run's stored per-round rows (``metrics.jsonl``: ``connected``,
``log_distance``, ``log_distance_after`` per worker), with no simulation:

* **events**: a worker's outage ends at round t₀, the first round it reaches
  the master again after one or more missed rounds;
* **event-aligned curves**: u and the raw score a at offsets −5 … +10
  rounds from t₀, over all events of all workers and seeds (the figure:
  mean, ± 1 std band and median);
* **separation**: how well a tells "rejoined within the last r rounds"
  (t − t₀ ∈ [0, r)) from healthy connected rounds, as an ROC curve and its
  AUC (the probability that a random rejoin round scores lower than a
  random healthy one; 0.5 is chance).

Scores are recomputed from u with eq. (10) (``weighting.raw_score``) so the
same analysis applies to runs whose policy never computed them (EAHES-O:
the natural signal, without the weighting acting on it). Two readings of u:

* **before** (the paper's, and the policy's): u_t measured after round t's
  local steps, before its exchange; a_t decides round t's weights;
* **after**: u measured after round t's exchange (``log_distance_after``);
  its score a_t^after is known only after the exchange, so it can decide the
  weights of round t + 1 at the earliest.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np

from eahes_jax import weighting
from eahes_jax import results_folder

BEFORE = 5
AFTER = 10
OFFSETS = np.arange(-BEFORE, AFTER + 1)


class RoundSeries(NamedTuple):
  """One seed's per-round, per-worker series (rounds 1..R on axis 0).

  Attributes:
    connected: bool (R, k).
    u: float (R, k), log-distance before the exchange.
    u_after: float (R, k), log-distance after the exchange (NaN where the
      run predates that column).
    h_worker: float (R, k), the worker's elastic weight h1 the run used
      (NaN where not stored); None when not loaded.
  """

  connected: np.ndarray
  u: np.ndarray
  u_after: np.ndarray
  h_worker: np.ndarray | None = None


def load_series(run_dir: str) -> list[RoundSeries]:
  """Every seed's ``RoundSeries`` from a results folder's metrics."""
  rows = [r for r in results_folder.read_metrics(run_dir) if r["round"] >= 1]
  out = []
  for seed in sorted({r["seed"] for r in rows}):
    mine = sorted((r for r in rows if r["seed"] == seed),
                  key=lambda r: r["round"])
    k = len(mine[0]["connected"])
    nan = [float("nan")] * k

    def column(name, fill, mine=mine):
      # Strict JSON stores a non-finite value as null: NaN here.
      return np.asarray([[np.nan if v is None else v
                          for v in (r.get(name) or fill)] for r in mine],
                        np.float64)

    out.append(RoundSeries(
        connected=np.asarray([r["connected"] for r in mine], bool),
        u=column("log_distance", nan),
        u_after=column("log_distance_after", nan),
        h_worker=column("h_worker", nan)))
  return out


def scores(u: np.ndarray, coeffs: Sequence[float]) -> np.ndarray:
  """a_t = Σ_j c_j (u_{t−j} − u_{t−j−1}) for every round t (eq. 10).

  Args:
    u: (R, k) log-distances, round-major.
    coeffs: c_0..c_{p−1}, most recent first.

  Returns:
    (R, k); NaN for the first p rounds, whose history is incomplete.
  """
  p = len(coeffs)
  u = np.asarray(u, np.float64)
  out = np.full(u.shape, np.nan)
  if u.shape[0] <= p:
    return out
  # Windows u_{t−p} .. u_t, oldest first, for t = p .. R − 1.
  windows = np.stack([u[i:u.shape[0] - p + i] for i in range(p + 1)], -1)
  out[p:] = np.asarray(weighting.raw_score(windows, np.asarray(coeffs)))
  return out


def outage_ends(connected: np.ndarray) -> list[tuple[int, int]]:
  """(round index t₀, worker) of every reconnection after a missed round.

  Args:
    connected: bool (R, k).

  Returns:
    Pairs with connected[t₀, w] true and connected[t₀ − 1, w] false.
  """
  c = np.asarray(connected, bool)
  back = c[1:] & ~c[:-1]
  t, w = np.nonzero(back)
  return sorted(zip((t + 1).tolist(), w.tolist()))


def aligned(values: np.ndarray, events: Sequence[tuple[int, int]]
            ) -> np.ndarray:
  """(E, len(OFFSETS)) values at t₀ + offset per event; NaN off the run."""
  out = np.full((len(events), OFFSETS.size), np.nan)
  rounds = values.shape[0]
  for e, (t0, w) in enumerate(events):
    t = t0 + OFFSETS
    ok = (t >= 0) & (t < rounds)
    out[e, ok] = values[t[ok], w]
  return out


def rejoin_labels(connected: np.ndarray, window: int) -> np.ndarray:
  """bool (R, k): the worker reconnected within the last ``window`` rounds
  (t − t₀ ∈ [0, window)) and is connected now."""
  c = np.asarray(connected, bool)
  out = np.zeros_like(c)
  for t0, w in outage_ends(c):
    stop = t0 + window
    out[t0:stop, w] = c[t0:stop, w]
  return out


class Roc(NamedTuple):
  """An ROC curve of "a low means rejoined".

  Attributes:
    fpr: false-positive rates (healthy rounds flagged), ascending.
    tpr: true-positive rates (rejoin rounds flagged).
    auc: area under the curve: P(a_rejoin < a_healthy), ties counting half.
    positives: rejoin rounds used.
    negatives: healthy rounds used.
  """

  fpr: np.ndarray
  tpr: np.ndarray
  auc: float
  positives: int
  negatives: int


def roc(positive: np.ndarray, negative: np.ndarray) -> Roc:
  """ROC of the rule "flag when a ≤ threshold" over every threshold.

  Args:
    positive: scores of rounds that are rejoins.
    negative: scores of healthy rounds.

  Returns:
    The curve and its AUC (Mann-Whitney, ties counting half).
  """
  pos = np.asarray(positive, np.float64)
  neg = np.asarray(negative, np.float64)
  pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
  if pos.size == 0 or neg.size == 0:
    raise ValueError(
        f"need rejoin and healthy rounds, got {pos.size} and {neg.size}")
  thresholds = np.unique(np.concatenate([pos, neg]))
  tpr = np.searchsorted(np.sort(pos), thresholds, side="right") / pos.size
  fpr = np.searchsorted(np.sort(neg), thresholds, side="right") / neg.size
  # P(pos < neg) + ½ P(pos = neg), by ranks over the pooled scores.
  pooled = np.concatenate([pos, neg])
  order = np.argsort(pooled, kind="mergesort")
  ranks = np.empty(pooled.size)
  ranks[order] = np.arange(1, pooled.size + 1)
  for value in np.unique(pooled):  # Average ranks over ties.
    tie = pooled == value
    if tie.sum() > 1:
      ranks[tie] = ranks[tie].mean()
  u_stat = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2
  auc = 1.0 - u_stat / (pos.size * neg.size)
  return Roc(np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr]),
             float(auc), int(pos.size), int(neg.size))


class Analysis(NamedTuple):
  """Everything the mechanism figure and table need of one setting.

  Attributes:
    u: (E, offsets) u around every outage end, minus u at offset −1 (the
      last round of the outage) so events of different scales line up.
    a: (E, offsets) the raw score a (before reading).
    a_after: (E, offsets) the after-exchange reading's score.
    roc_before: ROC of a_t against "rejoined within ``window`` rounds"; None
      when the run has no scored rejoin or healthy round (too short, or no
      failures).
    roc_after: ROC of a^after_{t−1} (the latest after-score known before
      round t's exchange) for the same labels; None likewise, or without
      that column.
    window: r of the labels.
    events: number of outage ends.
    healthy_median: the median score a over healthy connected rounds (the
      scale a rejoin's score must stand out from); NaN if none.
    lowest: the lowest score a of any connected round (how near the
      threshold k the score ever came); NaN if none was scored.
  """

  u: np.ndarray
  a: np.ndarray
  a_after: np.ndarray
  roc_before: Roc | None
  roc_after: Roc | None
  window: int
  events: int
  healthy_median: float
  lowest: float


def analyse(series: Sequence[RoundSeries], coeffs: Sequence[float],
            window: int = 3) -> Analysis:
  """Event-aligned curves and ROC over every seed of a run.

  Args:
    series: one ``RoundSeries`` per seed (``load_series``).
    coeffs: the score's c_j (the run's ``dw_coeffs``).
    window: r: a connected round within r rounds of an outage end is a
      rejoin round; other connected rounds are healthy.

  Returns:
    The ``Analysis``.
  """
  if not series:
    raise ValueError("series must hold at least one seed's rounds, got none")
  us, as_, afters, pos, neg, pos_after, neg_after = [], [], [], [], [], [], []
  for s in series:
    events = outage_ends(s.connected)
    a = scores(s.u, coeffs)
    a_after = scores(s.u_after, coeffs)
    u = aligned(s.u, events)
    us.append(u - u[:, [BEFORE - 1]])
    as_.append(aligned(a, events))
    afters.append(aligned(a_after, events))
    labels = rejoin_labels(s.connected, window)
    healthy = s.connected & ~labels
    # Rounds before the first outage end have no defined history of
    # outages; they count as healthy only once the score exists.
    pos.append(a[labels])
    neg.append(a[healthy])
    # The after-score of round t − 1 is what is known before exchange t.
    prev = np.vstack([np.full((1,) + a_after.shape[1:], np.nan),
                      a_after[:-1]])
    pos_after.append(prev[labels])
    neg_after.append(prev[healthy])
  cat = lambda xs: np.concatenate(xs) if xs else np.zeros((0,))

  def roc_or_none(p, n):
    scored = lambda x: np.isfinite(x).any()
    return roc(p, n) if scored(p) and scored(n) else None

  return Analysis(
      u=np.concatenate(us), a=np.concatenate(as_),
      a_after=np.concatenate(afters),
      roc_before=roc_or_none(cat(pos), cat(neg)),
      roc_after=roc_or_none(cat(pos_after), cat(neg_after)),
      window=window, events=int(sum(x.shape[0] for x in us)),
      healthy_median=_median(cat(neg)), lowest=_lowest(cat(pos + neg)))


def analyse_run(run_dir: str, window: int = 3) -> Analysis:
  """``analyse`` of a stored run, with its own score coefficients."""
  record = results_folder.read_config(run_dir)
  return analyse(load_series(run_dir), record["dw_coeffs"], window)


def _median(x: np.ndarray) -> float:
  x = x[np.isfinite(x)]
  return float(np.median(x)) if x.size else float("nan")


def _lowest(x: np.ndarray) -> float:
  x = x[np.isfinite(x)]
  return float(np.min(x)) if x.size else float("nan")


def _fraction(x: np.ndarray, cond) -> float:
  x = x[np.isfinite(x)]
  return float(np.mean(cond(x))) if x.size else float("nan")


def summary_table(analyses: dict[str, Analysis],
                  threshold: float = weighting.DEFAULT_THRESHOLD) -> str:
  """Markdown: per setting, how often and how far a goes negative after an
  outage ends, and how well it separates rejoin rounds."""
  lines = [
      "| setting | outage ends | a < 0 at t₀ | a < 0 at t₀+1 |"
      f" a ≤ k = {threshold:g} at t₀ … t₀+2 | median a at t₀, t₀+1, t₀+2 |"
      " median a, healthy rounds | lowest a, any connected round |"
      " AUC (before) | AUC (after, one round late) |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  z = BEFORE  # Column of offset 0.
  for name, an in analyses.items():
    finite = [an.a[:, z + i][np.isfinite(an.a[:, z + i])] for i in range(3)]
    med = ", ".join(f"{np.median(x):+.3f}" if x.size else "n/a"
                    for x in finite)
    reached = np.nanmin(an.a[:, z:z + 3], axis=1) <= threshold
    auc = lambda r: "n/a" if r is None else f"{r.auc:.3f}"
    lines.append(
        f"| {name} | {an.events} |"
        f" {_fraction(an.a[:, z], lambda x: x < 0):.2f} |"
        f" {_fraction(an.a[:, z + 1], lambda x: x < 0):.2f} |"
        f" {np.mean(reached) if reached.size else float('nan'):.3f} | {med} |"
        f" {an.healthy_median:+.3f} | {an.lowest:+.3f} |"
        f" {auc(an.roc_before)} |"
        f" {auc(an.roc_after)} |")
  return "\n".join(lines) + "\n"


def study_analyses(out_dir: str, runs: Sequence[str], window: int = 3
                   ) -> dict[str, Analysis]:
  """``analyse_run`` of every stored run among ``runs`` (under out_dir/runs)."""
  out = {}
  for name in runs:
    run_dir = os.path.join(out_dir, "runs", name)
    if not os.path.exists(os.path.join(run_dir, results_folder.METRICS_FILE)):
      continue
    series = load_series(run_dir)  # Read once: the files can be large.
    # A run that has not finished a round yet has nothing to analyse.
    if series:
      coeffs = results_folder.read_config(run_dir)["dw_coeffs"]
      out[name] = analyse(series, coeffs, window)
  return out


class Activity(NamedTuple):
  """How hard a run's weighting pulled, on rejoin rounds and on healthy ones.

  The pull of one exchange is s = (h1 − α) / (1 − α) ∈ [0, 1]: 0 is
  EASGD's weight, 1 snaps the worker onto the master. By eq. (11) it equals
  (α − h2) / α, how far the master ignores the worker, and clip(a / k, 0, 1)
  for a score a and threshold k.

  Attributes:
    rejoin_pull: mean s over rejoin rounds (connected, within ``window``
      rounds of an outage end); NaN if none.
    healthy_pull: mean s over the other connected rounds; NaN if none.
    rejoin_rounds: how many rejoin worker-rounds were averaged.
    healthy_rounds: how many healthy worker-rounds were averaged.
    rejoin_share: the fraction of all pull (summed s over connected rounds)
      that fell on rejoin rounds; compare ``rejoin_fraction``, the share a
      pull blind to rejoins would get. NaN if nothing pulled.
  """

  rejoin_pull: float
  healthy_pull: float
  rejoin_rounds: int
  healthy_rounds: int
  rejoin_share: float

  @property
  def mean_pull(self) -> float:
    """Mean s over all connected rounds; NaN if none was stored."""
    parts = [(pull, n) for pull, n in ((self.rejoin_pull, self.rejoin_rounds),
                                       (self.healthy_pull,
                                        self.healthy_rounds)) if n]
    if not parts:
      return float("nan")
    return sum(pull * n for pull, n in parts) / sum(n for _, n in parts)

  @property
  def rejoin_fraction(self) -> float:
    """The share of rejoin rounds among connected ones (what a pull blind to
    rejoins puts on them); NaN if none was stored."""
    n = self.rejoin_rounds + self.healthy_rounds
    return self.rejoin_rounds / n if n else float("nan")


def activity(series: Sequence[RoundSeries], alpha: float, window: int = 3
             ) -> Activity:
  """The weighting's ``Activity`` over every seed of a run.

  Args:
    series: one ``RoundSeries`` per seed, with ``h_worker``.
    alpha: the run's elastic weight α (EASGD's h1).
    window: r of the rejoin labels (``rejoin_labels``).

  Returns:
    The ``Activity``.

  Raises:
    ValueError: ``series`` is empty or lacks ``h_worker``, or ``alpha`` is
      not in (0, 1).
  """
  if not series:
    raise ValueError("series must hold at least one seed's rounds, got none")
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
  rejoin, healthy = [], []
  # The runs store h1 in float32: α rounded alike gives a pull of exactly 0
  # where the weighting left EASGD's weight.
  alpha = float(np.float32(alpha))
  for s in series:
    if s.h_worker is None:
      raise ValueError("series must carry h_worker (load_series loads it)")
    pull = (np.asarray(s.h_worker, np.float64) - alpha) / (1.0 - alpha)
    labels = rejoin_labels(s.connected, window)
    rejoin.append(pull[labels])
    healthy.append(pull[s.connected & ~labels])
  rejoin = np.concatenate(rejoin)
  healthy = np.concatenate(healthy)
  rejoin, healthy = rejoin[np.isfinite(rejoin)], healthy[np.isfinite(healthy)]
  mean = lambda x: float(np.mean(x)) if x.size else float("nan")
  total = float(np.sum(rejoin) + np.sum(healthy))
  return Activity(
      rejoin_pull=mean(rejoin), healthy_pull=mean(healthy),
      rejoin_rounds=int(rejoin.size), healthy_rounds=int(healthy.size),
      rejoin_share=float(np.sum(rejoin)) / total if total > 0 else
      float("nan"))


def run_activity(run_dir: str, window: int = 3) -> Activity:
  """``activity`` of a stored run, with its own α."""
  alpha = results_folder.read_config(run_dir)["alpha"]
  return activity(load_series(run_dir), alpha, window)
