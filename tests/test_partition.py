"""The label-skewed partition: sizes, disjointness and the skew it promises."""

import numpy as np
import pytest

from eahes_jax import partition


def balanced_labels(per_class=100, classes=10, seed=0):
  return np.random.default_rng(seed).permutation(
      np.repeat(np.arange(classes), per_class)).astype(np.int32)


def own_sets(workers, o):
  return [set(row[o:].tolist()) for row in workers]


@pytest.mark.parametrize("k, r, s", [(4, 0.25, 1.0), (5, 0.0, 0.8),
                                     (3, 0.1, 0.37), (7, 0.5, 0.999)])
def test_sizes_and_disjointness(k, r, s):
  labels = balanced_labels()
  n = labels.size
  shared, workers = partition.label_skew_partition(labels, k, r, s, seed=3)
  o = int(round(r * n))
  m = (n - o) // k
  assert shared.shape == (o,) and workers.shape == (k, o + m)
  assert workers.dtype == np.int32
  # Row j is O followed by S_j; the S_j are disjoint from each other and
  # from O, and no index repeats.
  np.testing.assert_array_equal(workers[:, :o], np.broadcast_to(shared,
                                                                (k, o)))
  own = own_sets(workers, o)
  union = set().union(*own)
  assert len(union) == k * m
  assert not union & set(shared.tolist())
  assert workers.min() >= 0 and workers.max() < n


def test_full_skew_gives_each_worker_two_classes_of_ten():
  labels = balanced_labels()
  _, workers = partition.label_skew_partition(labels, 5, 0.0, 1.0, seed=0)
  for row in workers:
    assert sorted(set(labels[row].tolist())) in (
        [0, 1], [2, 3], [4, 5], [6, 7], [8, 9])


@pytest.mark.parametrize("s", [0.25, 0.5, 0.8])
def test_the_skew_is_at_least_the_knob(s):
  # A fraction s of each worker's own set comes from a run of 2 classes
  # (k = 5, balanced classes), the rest is uniform: the share of the two
  # dominant classes is at least s and near s + (1 − s) · 2/10.
  labels = balanced_labels(per_class=400)
  k, o = 5, 0
  _, workers = partition.label_skew_partition(labels, k, 0.0, s, seed=1)
  for row in workers:
    counts = np.bincount(labels[row[o:]], minlength=10)
    top2 = np.sort(counts)[-2:].sum() / counts.sum()
    assert top2 >= s - 1e-9
    assert top2 == pytest.approx(s + (1 - s) * 0.2, abs=0.06)


def test_no_skew_is_the_paper_partition_and_the_overlap_is_shared():
  labels = balanced_labels()
  a = partition.label_skew_partition(labels, 4, 0.25, 0.0, seed=7)
  b = partition.overlap_partition(labels.size, 4, 0.25, seed=7)
  c = partition.label_skew_partition(labels, 4, 0.25, 0.6, seed=7)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  # The skew changes only the own sets: O is drawn the same way.
  np.testing.assert_array_equal(c[0], b[0])


@pytest.mark.parametrize("skew", [-0.1, 1.5, True, float("nan")])
def test_rejects_a_bad_skew(skew):
  with pytest.raises(ValueError, match="label_skew"):
    partition.label_skew_partition(balanced_labels(), 4, 0.0, skew, seed=0)
