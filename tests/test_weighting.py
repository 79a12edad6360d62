"""Tests for eahes_jax.weighting: h1/h2, the raw score and the three policies."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eahes_jax import elastic
from eahes_jax import weighting

ALPHA = 0.1
THRESH = -0.2


def _h1_paper(a, alpha, k):
  """The paper's h1, as printed in §V-B."""
  if a < k:
    return 1.0
  if a <= 0:
    return 1.0 + (1.0 - alpha) / k * (a - k)
  return alpha


def _h2_paper(a, alpha, k):
  """The paper's h2, as printed in §V-B."""
  if a < k:
    return 0.0
  if a <= 0:
    return -alpha / k * a + alpha
  return alpha


@pytest.mark.parametrize(
    "a, h1_expected, h2_expected",
    [
        (-0.5, 1.0, 0.0),                 # a < k
        (THRESH, 1.0, 0.0),               # a = k
        (-0.05, 0.325, 0.075),            # k < a < 0: hand-computed
        (0.0, ALPHA, ALPHA),              # a = 0
        (0.3, ALPHA, ALPHA),              # a > 0
    ])
def test_h1_h2_pieces(a, h1_expected, h2_expected):
  # h1(-0.05) = 1 + 0.9/(-0.2)·(0.15) = 0.325; h2(-0.05) = 0.1 − 0.1·0.25.
  assert math.isclose(_h1_paper(a, ALPHA, THRESH), h1_expected, abs_tol=1e-12)
  assert math.isclose(_h2_paper(a, ALPHA, THRESH), h2_expected, abs_tol=1e-12)
  np.testing.assert_allclose(weighting.h1(a, ALPHA, THRESH), h1_expected,
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(weighting.h2(a, ALPHA, THRESH), h2_expected,
                             rtol=1e-6, atol=1e-7)


def test_h1_h2_exact_at_zero_and_positive():
  # a = 0 (no history yet) and a > 0 must give exactly α, i.e. exactly EASGD.
  a = jnp.array([0.0, 1e-9, 0.5, 10.0])
  np.testing.assert_array_equal(weighting.h1(a, ALPHA, THRESH),
                                np.float32(ALPHA))
  np.testing.assert_array_equal(weighting.h2(a, ALPHA, THRESH),
                                np.float32(ALPHA))
  np.testing.assert_array_equal(weighting.h1(THRESH, ALPHA, THRESH), 1.0)
  np.testing.assert_array_equal(weighting.h2(THRESH, ALPHA, THRESH), 0.0)


def test_h1_h2_elementwise_and_continuous():
  grid = np.linspace(-0.5, 0.3, 161)
  got1 = np.asarray(weighting.h1(grid, ALPHA, THRESH))
  got2 = np.asarray(weighting.h2(grid, ALPHA, THRESH))
  np.testing.assert_allclose(
      got1, [_h1_paper(a, ALPHA, THRESH) for a in grid], atol=1e-6)
  np.testing.assert_allclose(
      got2, [_h2_paper(a, ALPHA, THRESH) for a in grid], atol=1e-6)
  eps = 1e-4
  for point in (THRESH, 0.0):
    around = jnp.array([point - eps, point, point + eps])
    for fn in (weighting.h1, weighting.h2):
      vals = np.asarray(fn(around, ALPHA, THRESH))
      assert np.ptp(vals) < 1e-2, (fn.__name__, point, vals)
  # Monotone: h1 non-increasing, h2 non-decreasing in a.
  assert np.all(np.diff(got1) <= 1e-7)
  assert np.all(np.diff(got2) >= -1e-7)


def test_raw_score_matches_hand_computation():
  # Oldest first: u_{t-3}, u_{t-2}, u_{t-1}, u_t.
  u = np.array([[1.0, 2.0, 4.0, 3.0],
                [0.5, 0.25, 0.0, -1.0]])
  coeffs = (0.6, 0.3, 0.1)
  expected = [
      0.6 * (3.0 - 4.0) + 0.3 * (4.0 - 2.0) + 0.1 * (2.0 - 1.0),
      0.6 * (-1.0 - 0.0) + 0.3 * (0.0 - 0.25) + 0.1 * (0.25 - 0.5),
  ]
  np.testing.assert_allclose(weighting.raw_score(u, coeffs), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(weighting.raw_score(u, coeffs, 4), expected,
                             rtol=1e-6)
  np.testing.assert_array_equal(weighting.raw_score(u, coeffs, 3), [0.0, 0.0])
  np.testing.assert_allclose(
      weighting.raw_score(u, coeffs, np.array([4, 2])), [expected[0], 0.0],
      rtol=1e-6)
  with pytest.raises(ValueError, match="u_history"):
    weighting.raw_score(u[:, 1:], coeffs)


def _moving_workers(scales, k=3):
  """Rounds of (workers, master), worker i at distance scales[t][i]."""
  rng = np.random.default_rng(0)
  master = {"w": rng.normal(size=(2, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32)}
  direction = {"w": rng.normal(size=(k, 2, 3)), "b": rng.normal(size=(k, 3))}
  norm = np.sqrt(sum((d.reshape(k, -1) ** 2).sum(1)
                     for d in direction.values()))
  rounds = []
  for s in scales:
    s = np.asarray(s, np.float64)
    workers = jax.tree.map(
        lambda d, m: (m[None] + (s / norm).reshape((k,) + (1,) * (d.ndim - 1))
                      * d).astype(np.float32), direction, master)
    rounds.append((workers, master))
  return rounds


def test_dynamic_history_and_score():
  p, coeffs = 3, (0.6, 0.3, 0.1)
  policy = weighting.dynamic(ALPHA, p=p, coeffs=coeffs, threshold=THRESH)
  # Worker 0 drifts away, worker 1 collapses onto the master, worker 2 wobbles.
  scales = [[1.0, 1.0, 1.0], [2.0, 0.5, 1.5], [4.0, 0.1, 1.0],
            [8.0, 0.01, 2.0], [16.0, 0.001, 1.25], [32.0, 1e-4, 3.0]]
  state = policy.init(3)
  update = jax.jit(policy.update)
  u_log = []
  scores = []
  for t, (workers, master) in enumerate(_moving_workers(scales)):
    weights, state = update(
        state, weighting.WeightingInputs(workers, master, np.ones(3, bool)))
    # float32 positions near the master limit u's accuracy at tiny scales.
    np.testing.assert_allclose(weights.log_distance, np.log(scales[t]),
                               atol=1e-2)
    u_log.append(np.asarray(weights.log_distance, np.float64))
    assert int(state.count) == t + 1
    if t < p:
      # Fewer than p + 1 values of u: a = 0, exactly the EASGD weights.
      np.testing.assert_array_equal(weights.score, 0.0)
      np.testing.assert_array_equal(weights.h_worker, np.float32(ALPHA))
      np.testing.assert_array_equal(weights.h_master, np.float32(ALPHA))
    else:
      u = np.array(u_log[-(p + 1):])  # oldest first
      expected = sum(coeffs[j] * (u[p - j] - u[p - j - 1]) for j in range(p))
      np.testing.assert_allclose(weights.score, expected, atol=1e-5)
      scores.extend(expected)
      np.testing.assert_allclose(
          weights.h_worker, [_h1_paper(a, ALPHA, THRESH) for a in expected],
          atol=1e-4)
      np.testing.assert_allclose(
          weights.h_master, [_h2_paper(a, ALPHA, THRESH) for a in expected],
          atol=1e-4)
  # All three pieces of h1/h2 were exercised.
  scores = np.array(scores)
  assert (scores < THRESH).any() and (scores > 0).any()
  assert ((scores > THRESH) & (scores < 0)).any()
  # Worker 1's distance collapses: it is reset to the master, which ignores it.
  assert weights.h_worker[1] == 1.0 and weights.h_master[1] == 0.0
  np.testing.assert_array_equal(state.u_history,
                                np.array(u_log[-(p + 1):], np.float32).T)


def test_dynamic_records_u_for_disconnected_workers():
  policy = weighting.dynamic(ALPHA, p=1, coeffs=(1.0,), threshold=THRESH)
  rounds = _moving_workers([[1.0, 1.0, 1.0], [1.0, 0.1, 1.0]])
  state = policy.init(3)
  disconnected = np.array([True, False, True])
  for workers, master in rounds:
    weights, state = policy.update(
        state, weighting.WeightingInputs(workers, master, disconnected))
  # Worker 1 was never connected, yet its score uses both rounds.
  np.testing.assert_allclose(weights.score[1], np.log(0.1), atol=1e-4)


def test_dynamic_equals_easgd_when_scores_positive():
  fixed = weighting.fixed(ALPHA)
  dynamic = weighting.dynamic(ALPHA, threshold=THRESH)
  k = 3
  scales = [[1.0 * 1.5**t, 2.0 * 1.3**t, 0.5 * 2.0**t] for t in range(6)]
  f_state, d_state = fixed.init(k), dynamic.init(k)
  connected = np.array([True, False, True])
  key = jax.random.key(0)
  for workers, master in _moving_workers(scales, k):
    inputs = weighting.WeightingInputs(workers, master, connected)
    f_w, f_state = fixed.update(f_state, inputs)
    d_w, d_state = dynamic.update(d_state, inputs)
    assert np.all(np.asarray(d_w.score) >= 0.0)
    for order in ("parallel", "sequential"):
      chex.assert_trees_all_equal(
          elastic.exchange(workers, master, f_w.h_worker, f_w.h_master,
                           connected, order=order, key=key),
          elastic.exchange(workers, master, d_w.h_worker, d_w.h_master,
                           connected, order=order, key=key))
  assert np.all(np.asarray(d_w.score) > 0.0)


def test_peer_mean_master_estimate():
  policy = weighting.dynamic(ALPHA, master_estimate="peer_mean")
  (workers, master), = _moving_workers([[1.0, 2.0, 3.0]])
  weights, _ = policy.update(
      policy.init(3),
      weighting.WeightingInputs(workers, master, np.ones(3, bool)))
  expected = []
  for i in range(3):
    sq = 0.0
    for w in jax.tree.leaves(workers):
      w = np.asarray(w, np.float64)
      others = np.delete(w, i, axis=0).mean(axis=0)
      sq += ((w[i] - others) ** 2).sum()
    expected.append(0.5 * np.log(sq))
  np.testing.assert_allclose(weights.log_distance, expected, rtol=1e-5)
  # The true master is not what the peer-mean estimate measures against.
  assert not np.allclose(weights.log_distance, np.log([1.0, 2.0, 3.0]),
                         atol=1e-2)
  with pytest.raises(ValueError, match="num_workers"):
    policy.init(1)


@pytest.mark.parametrize("variant", weighting.ORACLE_VARIANTS)
def test_oracle_variants_at_rejoin_follow_their_equations(variant):
  # Worker 0 misses 1 exchange, worker 1 misses 4, worker 2 never misses;
  # all are connected at round 4. With k = −3: graded gives
  # h1(−1) = α + (1 − α)/3, h2(−1) = α(1 − 1/3), and a full reset for an
  # outage of 4 ≥ |k| exchanges (h1 = 1, h2 = 0).
  alpha, k = 0.1, -3.0
  policy = weighting.oracle(alpha, variant=variant, threshold=k)
  connected = np.array([[True, False, True], [True, False, True],
                        [True, False, True], [False, False, True],
                        [True, True, True], [True, True, True]])
  (workers, master), = _moving_workers([[1.0, 2.0, 3.0]])
  state = policy.init(3)
  out = []
  for t in range(connected.shape[0]):
    weights, state = jax.jit(policy.update)(
        state, weighting.WeightingInputs(workers, master, connected[t]))
    out.append((np.asarray(weights.h_worker), np.asarray(weights.h_master)))
  back = {"reset": ((1.0, 0.0), (1.0, 0.0)),
          "ignore": ((alpha, 0.0), (alpha, 0.0)),
          "graded": ((alpha + (1 - alpha) / 3, alpha * (1 - 1 / 3)),
                     (1.0, 0.0))}[variant]
  h_worker, h_master = out[4]
  np.testing.assert_allclose([h_worker[0], h_master[0]], back[0], rtol=1e-6)
  np.testing.assert_allclose([h_worker[1], h_master[1]], back[1], rtol=1e-6)
  np.testing.assert_allclose([h_worker[2], h_master[2]], [alpha, alpha])
  # Every other exchange is EASGD's.
  for t in (0, 1, 2, 5):
    np.testing.assert_allclose(out[t][0], alpha, rtol=1e-6)
    np.testing.assert_allclose(out[t][1], alpha, rtol=1e-6)


def test_oracle_rejects_an_unknown_variant():
  with pytest.raises(ValueError, match="variant"):
    weighting.oracle(0.1, variant="forget")


def test_oracle_resets_at_rejoin_rounds():
  policy = weighting.oracle(ALPHA)
  connected = np.array([
      [True, True, False],
      [False, True, False],
      [False, True, True],    # worker 2 rejoins
      [True, True, True],     # worker 0 rejoins
      [True, False, True],
      [True, True, True],     # worker 1 rejoins
      [True, True, True],
  ])
  expected_rejoin = np.zeros_like(connected)
  expected_rejoin[2, 2] = expected_rejoin[3, 0] = expected_rejoin[5, 1] = True
  (workers, master), = _moving_workers([[1.0, 2.0, 3.0]])
  update = jax.jit(policy.update)
  state = policy.init(3)
  for t in range(connected.shape[0]):
    weights, state = update(
        state, weighting.WeightingInputs(workers, master, connected[t]))
    np.testing.assert_array_equal(
        weights.h_worker,
        np.where(expected_rejoin[t], 1.0, np.float32(ALPHA)))
    np.testing.assert_array_equal(
        weights.h_master,
        np.where(expected_rejoin[t], 0.0, np.float32(ALPHA)))
    np.testing.assert_array_equal(weights.score, 0.0)
  np.testing.assert_array_equal(state.missed, [0, 0, 0])
  assert state.missed.dtype == jnp.int32


def test_fixed_policy_and_log_distance():
  (workers, master), = _moving_workers([[1.0, 2.0, 3.0]])
  policy = weighting.get_policy("fixed", alpha=0.3)
  weights, _ = policy.update(
      policy.init(3), weighting.WeightingInputs(workers, master,
                                                np.ones(3, bool)))
  np.testing.assert_array_equal(weights.h_worker, np.float32(0.3))
  np.testing.assert_array_equal(weights.h_master, np.float32(0.3))
  np.testing.assert_allclose(weights.log_distance, np.log([1.0, 2.0, 3.0]),
                             atol=1e-5)


@pytest.mark.parametrize("name", ["fixed", "oracle", "dynamic"])
def test_policy_update_jits_once(name):
  chex.clear_trace_counter()
  policy = weighting.get_policy(name, alpha=ALPHA)
  rounds = _moving_workers([[1.0, 2.0, 3.0], [2.0, 1.0, 0.5]])

  @jax.jit
  @chex.assert_max_traces(n=1)
  def update(state, inputs):
    return policy.update(state, inputs)

  state = policy.init(3)
  eager_state = state
  for t, (workers, master) in enumerate(rounds):
    inputs = weighting.WeightingInputs(workers, master,
                                       np.array([True, t == 0, True]))
    weights, state = update(state, inputs)
    eager_weights, eager_state = policy.update(eager_state, inputs)
    chex.assert_trees_all_close(weights, eager_weights, atol=1e-6)
  chex.assert_trees_all_close(state, eager_state, atol=1e-6)


def test_dynamic_default_hyperparameters():
  state = weighting.dynamic(ALPHA).init(2)
  assert state.u_history.shape == (2, weighting.DEFAULT_P + 1)
  assert weighting.DEFAULT_COEFFS == (0.6, 0.3, 0.1)
  assert weighting.DEFAULT_THRESHOLD < 0
  # Other p without coeffs: decreasing weights summing to 1.
  assert weighting.dynamic(ALPHA, p=2).init(2).u_history.shape == (2, 3)


@pytest.mark.parametrize(
    "factory, kwargs, arg",
    [
        (weighting.fixed, dict(alpha=0.0), "alpha"),
        (weighting.fixed, dict(alpha=1.5), "alpha"),
        (weighting.oracle, dict(alpha=-0.1), "alpha"),
        (weighting.oracle, dict(alpha=float("nan")), "alpha"),
        (weighting.dynamic, dict(alpha=1.01), "alpha"),
        (weighting.dynamic, dict(alpha=0.1, threshold=0.0), "threshold"),
        (weighting.dynamic, dict(alpha=0.1, threshold=0.5), "threshold"),
        (weighting.dynamic, dict(alpha=0.1, p=0, coeffs=()), "p"),
        (weighting.dynamic, dict(alpha=0.1, p=2, coeffs=(0.6, 0.3, 0.1)),
         "coeffs"),
        (weighting.dynamic, dict(alpha=0.1, coeffs=(0.6, 0.3, 0.2)), "coeffs"),
        (weighting.dynamic, dict(alpha=0.1, coeffs=(1.2, -0.1, -0.1)),
         "coeffs"),
        (weighting.dynamic, dict(alpha=0.1, master_estimate="median"),
         "master_estimate"),
    ])
def test_bad_hyperparameters_raise_at_construction(factory, kwargs, arg):
  with pytest.raises(ValueError, match=arg):
    factory(**kwargs)


def test_get_policy_rejects_unknown_name():
  with pytest.raises(ValueError, match="name"):
    weighting.get_policy("adaptive", alpha=0.1)
  policy = weighting.get_policy("dynamic", alpha=0.1, p=1, coeffs=(1.0,))
  assert isinstance(policy, weighting.WeightingPolicy)
