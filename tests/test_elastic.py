"""Tests for eahes_jax.elastic: distances, peer means and the elastic exchange."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eahes_jax import elastic

K = 4


def _trees(seed=0, k=K):
  """A stacked multi-leaf pytree of workers (different shapes) and a master."""
  rng = np.random.default_rng(seed)
  workers = {
      "dense": {"kernel": rng.normal(size=(k, 3, 2)).astype(np.float32),
                "bias": rng.normal(size=(k, 2)).astype(np.float32)},
      "scale": rng.normal(size=(k,)).astype(np.float32),
  }
  master = {
      "dense": {"kernel": rng.normal(size=(3, 2)).astype(np.float32),
                "bias": rng.normal(size=(2,)).astype(np.float32)},
      "scale": np.asarray(rng.normal(), np.float32),
  }
  return workers, master


def _set_row(w, i, value):
  w = np.array(w)
  w[i] = value
  return w


def _np_exchange_parallel(workers, master, hw, hm, connected):
  """EASGD in parallel, written out leaf by leaf in numpy."""
  flat_w, treedef = jax.tree.flatten(workers)
  flat_m = jax.tree.leaves(master)
  out_w, out_m = [], []
  for w, m in zip(flat_w, flat_m):
    w = np.asarray(w, np.float64)
    m = np.asarray(m, np.float64)
    w_next = w.copy()
    m_next = m.copy()
    for i in range(w.shape[0]):
      if connected[i]:
        diff = w[i] - m
        w_next[i] = w[i] - hw[i] * diff
        m_next = m_next + hm[i] * diff
    out_w.append(w_next)
    out_m.append(m_next)
  return treedef.unflatten(out_w), treedef.unflatten(out_m)


def _np_exchange_sequential(workers, master, hw, hm, connected, order):
  """Workers visit the master one after another in `order`, in numpy."""
  flat_w, treedef = jax.tree.flatten(workers)
  flat_w = [np.asarray(w, np.float64).copy() for w in flat_w]
  flat_m = [np.asarray(m, np.float64).copy() for m in jax.tree.leaves(master)]
  for i in order:
    if not connected[i]:
      continue
    for leaf in range(len(flat_w)):
      diff = flat_w[leaf][i] - flat_m[leaf]
      flat_w[leaf][i] = flat_w[leaf][i] - hw[i] * diff
      flat_m[leaf] = flat_m[leaf] + hm[i] * diff
  return treedef.unflatten(flat_w), treedef.unflatten(flat_m)


def test_tree_sq_distance_and_log_distance_match_numpy():
  workers, master = _trees()
  expected = np.zeros(K)
  for w, m in zip(jax.tree.leaves(workers), jax.tree.leaves(master)):
    d = np.asarray(w, np.float64) - np.asarray(m, np.float64)[None]
    expected += (d.reshape(K, -1) ** 2).sum(axis=1)
  sq = elastic.tree_sq_distance(workers, master)
  assert sq.shape == (K,) and sq.dtype == jnp.float32
  np.testing.assert_allclose(sq, expected, rtol=1e-5)
  np.testing.assert_allclose(
      elastic.log_distance(workers, master), np.log(np.sqrt(expected)),
      rtol=1e-5, atol=1e-6)


def test_log_distance_is_finite_when_worker_equals_master():
  workers, master = _trees()
  workers = jax.tree.map(lambda w, m: _set_row(w, 1, m), workers, master)
  u = np.asarray(elastic.log_distance(workers, master))
  assert np.all(np.isfinite(u))
  # The floor is the smallest normal float32 on the squared distance.
  np.testing.assert_allclose(u[1], 0.5 * np.log(np.finfo(np.float32).tiny),
                             rtol=1e-6)
  assert u[1] < u[0]


def test_distance_accumulates_low_precision_in_float32():
  workers = {"w": jnp.full((2, 4096), 1.0, jnp.bfloat16)}
  master = {"w": jnp.zeros((4096,), jnp.bfloat16)}
  # 4096 terms of 1: a bfloat16 accumulation would stall well below 4096.
  np.testing.assert_array_equal(
      elastic.tree_sq_distance(workers, master), [4096.0, 4096.0])


def test_peer_mean_estimate_matches_numpy():
  workers, _ = _trees()
  est = elastic.peer_mean_estimate(workers)
  for w, e in zip(jax.tree.leaves(workers), jax.tree.leaves(est)):
    w = np.asarray(w, np.float64)
    expected = np.stack(
        [np.delete(w, i, axis=0).mean(axis=0) for i in range(K)])
    np.testing.assert_allclose(e, expected, rtol=1e-5, atol=1e-6)
    assert e.dtype == np.float32


def test_peer_mean_estimate_rejects_single_worker():
  workers, _ = _trees(k=1)
  with pytest.raises(ValueError, match="num_workers"):
    elastic.peer_mean_estimate(workers)


def test_stacked_master_distance_uses_per_worker_reference():
  workers, _ = _trees()
  est = elastic.peer_mean_estimate(workers)
  expected = np.zeros(K)
  for w, e in zip(jax.tree.leaves(workers), jax.tree.leaves(est)):
    d = np.asarray(w, np.float64) - np.asarray(e, np.float64)
    expected += (d.reshape(K, -1) ** 2).sum(axis=1)
  np.testing.assert_allclose(
      elastic.tree_sq_distance(workers, est, stacked_master=True), expected,
      rtol=1e-5)


CONNECTED = np.array([True, False, True, True])
H_WORKER = np.array([0.1, 0.5, 1.0, 0.3], np.float32)
H_MASTER = np.array([0.1, 0.5, 0.0, 0.2], np.float32)


def test_parallel_exchange_matches_easgd_by_hand():
  workers, master = _trees()
  new_w, new_m = elastic.exchange(
      workers, master, H_WORKER, H_MASTER, CONNECTED, order="parallel")
  exp_w, exp_m = _np_exchange_parallel(
      workers, master, H_WORKER, H_MASTER, CONNECTED)
  chex.assert_trees_all_close(new_w, exp_w, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(new_m, exp_m, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal_shapes(new_w, workers)
  chex.assert_trees_all_equal_shapes(new_m, master)


def test_parallel_master_moves_by_sum_of_connected_weighted_diffs():
  workers, master = _trees(seed=3)
  _, new_m = elastic.exchange(
      workers, master, H_WORKER, H_MASTER, CONNECTED, order="parallel")
  for w, m, m_new in zip(jax.tree.leaves(workers), jax.tree.leaves(master),
                         jax.tree.leaves(new_m)):
    diffs = np.asarray(w, np.float64) - np.asarray(m, np.float64)[None]
    weights = (H_MASTER * CONNECTED).reshape((K,) + (1,) * (diffs.ndim - 1))
    np.testing.assert_allclose(
        np.asarray(m_new, np.float64) - m, (weights * diffs).sum(axis=0),
        rtol=1e-5, atol=1e-6)


def test_sequential_exchange_matches_python_loop_in_key_order():
  workers, master = _trees(seed=1)
  key = jax.random.key(7)
  order = np.asarray(jax.random.permutation(key, K))
  np.testing.assert_array_equal(elastic.exchange_order(key, K), order)
  new_w, new_m = elastic.exchange(
      workers, master, H_WORKER, H_MASTER, CONNECTED, order="sequential",
      key=key)
  exp_w, exp_m = _np_exchange_sequential(
      workers, master, H_WORKER, H_MASTER, CONNECTED, order)
  chex.assert_trees_all_close(new_w, exp_w, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(new_m, exp_m, rtol=1e-5, atol=1e-6)
  # The visiting order matters: sequential is not the parallel formula.
  par_w, _ = _np_exchange_parallel(
      workers, master, H_WORKER, H_MASTER, CONNECTED)
  assert not np.allclose(jax.tree.leaves(new_w)[0], jax.tree.leaves(par_w)[0])


@pytest.mark.parametrize("order", ["parallel", "sequential"])
def test_disconnected_workers_and_master_untouched(order):
  workers, master = _trees(seed=2)
  key = jax.random.key(0)
  none = np.zeros(K, bool)
  new_w, new_m = elastic.exchange(workers, master, H_WORKER, H_MASTER, none,
                                  order=order, key=key)
  chex.assert_trees_all_equal(new_w, workers)
  chex.assert_trees_all_equal(new_m, master)

  # A disconnected worker keeps its exact parameters, and even non-finite
  # parameters of it do not reach the master.
  poisoned = jax.tree.map(lambda w: _set_row(w, 1, np.nan), workers)
  new_w, new_m = elastic.exchange(poisoned, master, H_WORKER, H_MASTER,
                                  CONNECTED, order=order, key=key)
  ref_w, ref_m = elastic.exchange(workers, master, H_WORKER, H_MASTER,
                                  CONNECTED, order=order, key=key)
  chex.assert_trees_all_equal(new_m, ref_m)
  for w_new, w_ref, w_old in zip(jax.tree.leaves(new_w), jax.tree.leaves(ref_w),
                                 jax.tree.leaves(workers)):
    np.testing.assert_array_equal(w_new[1], np.full_like(w_old[1], np.nan))
    np.testing.assert_array_equal(w_ref[1], w_old[1])
    np.testing.assert_array_equal(np.delete(w_new, 1, 0),
                                  np.delete(w_ref, 1, 0))


@pytest.mark.parametrize("order", ["parallel", "sequential"])
def test_scalar_weights_broadcast(order):
  workers, master = _trees(seed=4)
  key = jax.random.key(1)
  a = elastic.exchange(workers, master, 0.1, 0.1, CONNECTED, order=order,
                       key=key)
  b = elastic.exchange(workers, master, np.full(K, 0.1, np.float32),
                       np.full(K, 0.1, np.float32), CONNECTED, order=order,
                       key=key)
  chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("order", ["parallel", "sequential"])
def test_exchange_keeps_dtypes(order):
  workers = {"a": jnp.ones((K, 3), jnp.bfloat16),
             "b": jnp.ones((K, 2), jnp.float32)}
  master = {"a": jnp.zeros((3,), jnp.bfloat16),
            "b": jnp.zeros((2,), jnp.float32)}
  new_w, new_m = elastic.exchange(workers, master, 0.5, 0.25, CONNECTED,
                                  order=order, key=jax.random.key(0))
  chex.assert_trees_all_equal_dtypes(new_w, workers)
  chex.assert_trees_all_equal_dtypes(new_m, master)
  np.testing.assert_array_equal(np.asarray(new_w["a"], np.float32)[0], 0.5)


def test_exchange_validates_arguments():
  workers, master = _trees()
  with pytest.raises(ValueError, match="order"):
    elastic.exchange(workers, master, 0.1, 0.1, CONNECTED, order="random")
  with pytest.raises(ValueError, match="key"):
    elastic.exchange(workers, master, 0.1, 0.1, CONNECTED, order="sequential")
  with pytest.raises(ValueError, match="h_worker"):
    elastic.exchange(workers, master, np.ones(K + 1), 0.1, CONNECTED,
                     order="parallel")
  bad_master = jax.tree.map(lambda m: np.zeros((5,)), master)
  with pytest.raises(ValueError, match="master"):
    elastic.exchange(workers, bad_master, 0.1, 0.1, CONNECTED,
                     order="parallel")


@pytest.mark.parametrize("order", ["parallel", "sequential"])
def test_exchange_jits_once(order):
  chex.clear_trace_counter()
  workers, master = _trees(seed=5)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(workers, master, hw, hm, connected, key):
    return elastic.exchange(workers, master, hw, hm, connected, order=order,
                            key=key)

  key = jax.random.key(3)
  out = step(workers, master, H_WORKER, H_MASTER, CONNECTED, key)
  eager = elastic.exchange(workers, master, H_WORKER, H_MASTER, CONNECTED,
                           order=order, key=key)
  chex.assert_trees_all_close(out, eager, rtol=1e-6, atol=1e-7)
  # New values, same shapes: no retrace.
  step(workers, master, H_MASTER, H_WORKER, ~CONNECTED, jax.random.key(4))
