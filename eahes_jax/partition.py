"""How the training set is dealt to the workers (paper §V-A, algorithms.md §4).

Worker j trains on O ∪ S_j: a shared overlap set O, the same for every
worker, and its own set S_j, disjoint from the other workers' sets.

* `overlap_partition` is the paper's: O and the S_j are uniformly random, so
  every worker's data follow the same distribution.
* `label_skew_partition` keeps O uniformly random but deals the S_j by label,
  so that each worker's own data are dominated by a few classes: the
  heterogeneous setting the paper motivates overlap with. Its knob
  ``label_skew`` s ∈ [0, 1] is the fraction of the non-shared examples dealt
  by label; s = 0 is `overlap_partition` itself, s = 1 gives each worker a
  contiguous run of the classes (about 10/k of them).

Both return (shared_idx, worker_idx) with worker_idx of shape (k, o + m): row
j is O followed by S_j, m = ⌊(n − o)/k⌋ (the remaining (n − o) mod k indices
are left out), so every worker draws its minibatches from a set of one size.
"""

from __future__ import annotations

import numpy as np


def sizes(num_examples, num_workers, overlap_ratio
          ) -> tuple[int, int, int, int]:
  """(n, k, o, m): examples, workers, shared and own-set sizes.

  Raises:
    ValueError: an argument is out of range, or the workers' own sets
      would be empty; see `overlap_partition`.
  """
  if isinstance(num_examples, bool) or not isinstance(
      num_examples, (int, np.integer)) or num_examples < 1:
    raise ValueError(
        f"num_examples must be an integer >= 1, got {num_examples!r}")
  if isinstance(num_workers, bool) or not isinstance(
      num_workers, (int, np.integer)) or num_workers < 1:
    raise ValueError(
        f"num_workers must be an integer >= 1, got {num_workers!r}")
  if not 0.0 <= overlap_ratio < 1.0:
    raise ValueError(f"overlap_ratio must be in [0, 1), got {overlap_ratio!r}")
  n, k = int(num_examples), int(num_workers)
  o = int(round(overlap_ratio * n))
  m = (n - o) // k
  if m < 1:
    raise ValueError(
        f"num_examples={n} is too few for num_workers={k} with "
        f"overlap_ratio={overlap_ratio}: the {n - o} non-shared examples "
        "leave every worker an empty own set (need n - round(r*n) >= k)")
  return n, k, o, m


def overlap_partition(num_examples: int, num_workers: int,
                      overlap_ratio: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deals training indices to workers with a shared overlap (algorithms §4).

  A random shared set O of o = round(overlap_ratio * num_examples) indices
  goes to every worker; the other n - o indices, in random order, are dealt
  into k disjoint sets S_j of m = floor((n - o) / k) each, and the remaining
  (n - o) mod k indices are left out. Worker j trains on O ∪ S_j. `round` is
  Python's (ties to even).

  Args:
    num_examples: n, the size of the training set (>= 1).
    num_workers: k (>= 1).
    overlap_ratio: r in [0, 1).
    seed: seed of the numpy generator; equal seeds give equal partitions.

  Returns:
    (shared_idx, worker_idx): int32 arrays of shapes (o,) and (k, o + m);
    row j of worker_idx is shared_idx followed by S_j.

  Raises:
    ValueError: an argument is out of range, or every worker's own set S_j
      would be empty.
  """
  n, k, o, m = sizes(num_examples, num_workers, overlap_ratio)
  perm = np.random.default_rng(seed).permutation(n).astype(np.int32)
  shared = perm[:o]
  own = perm[o:o + k * m].reshape(k, m)
  workers = np.concatenate([np.broadcast_to(shared, (k, o)), own], axis=1)
  return shared, workers


def label_skew_partition(labels: np.ndarray, num_workers: int,
                         overlap_ratio: float, label_skew: float,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Like `overlap_partition`, with each worker's own set skewed by label.

  O is drawn exactly as `overlap_partition` draws it (same seed, same O).
  Of the n − o other indices, a random s-fraction q = round(s · (n − o)) is
  sorted by label (ties in random order) and the rest stays in random order;
  worker j's own set S_j is the j-th of k contiguous blocks of b = ⌊q/k⌋
  sorted indices followed by the j-th block of m − b from the random part
  (which also takes the q mod k sorted indices left over). So S_j holds b
  examples from a contiguous run of classes plus m − b drawn uniformly: with balanced classes and s = 1, each worker sees about 10/k
  classes in S_j (O still holds every class).

  Args:
    labels: (n,) integer labels of the training set.
    num_workers: k (>= 1).
    overlap_ratio: r in [0, 1).
    label_skew: s in [0, 1]; 0 returns `overlap_partition`'s partition.
    seed: seed of the numpy generator.

  Returns:
    (shared_idx, worker_idx) as `overlap_partition`.

  Raises:
    ValueError: an argument is out of range.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
  if isinstance(label_skew, bool) or not (
      isinstance(label_skew, (int, float, np.floating))
      and 0.0 <= label_skew <= 1.0):
    raise ValueError(f"label_skew must be in [0, 1], got {label_skew!r}")
  if label_skew == 0:
    return overlap_partition(labels.shape[0], num_workers, overlap_ratio, seed)
  n, k, o, m = sizes(labels.shape[0], num_workers, overlap_ratio)
  rng = np.random.default_rng(seed)
  perm = rng.permutation(n).astype(np.int32)
  shared, rest = perm[:o], perm[o:]
  q = int(round(label_skew * rest.size))
  q_block = min(q // k, m)
  # rest is already in random order, so a stable sort by label breaks ties
  # at random.
  by_label = rest[:q][np.argsort(labels[rest[:q]], kind="stable")]
  # The few sorted examples that do not fill a whole block join the random
  # part, which then always has the k · (m − q_block) examples it must give.
  shuffled = rng.permutation(np.concatenate([by_label[k * q_block:],
                                             rest[q:]]))
  own = np.concatenate(
      [by_label[:k * q_block].reshape(k, q_block),
       shuffled[:k * (m - q_block)].reshape(k, m - q_block)], axis=1)
  workers = np.concatenate([np.broadcast_to(shared, (k, o)), own], axis=1)
  return shared, workers.astype(np.int32)
