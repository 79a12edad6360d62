"""Tests for eahes_jax.failures: failure masks, local steps and schedules."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eahes_jax import failures

K = 8
TAU = 4


def _outage_lengths(failed):
  """Lengths of failure runs per worker, leaving out runs cut by the ends."""
  lengths = []
  for column in np.asarray(failed).T:
    padded = np.concatenate([[False], column, [False]]).astype(np.int8)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    keep = (starts > 0) & (ends < len(column))
    lengths.extend((ends - starts)[keep])
  return np.array(lengths)


def test_bernoulli_long_run_rate():
  rate, rounds = 1 / 3, 4000
  sched = failures.schedule(failures.bernoulli(rate), jax.random.key(0),
                            rounds, K, TAU)
  assert sched.connected.shape == (rounds, K)
  assert sched.connected.dtype == jnp.bool_
  n = rounds * K
  observed = 1.0 - float(np.mean(sched.connected))
  assert abs(observed - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
  # Independent rounds: outages are short (mean 1 / (1 − rate) = 1.5).
  assert abs(_outage_lengths(~sched.connected).mean() - 1.5) < 0.1
  # Disconnect mode: every worker keeps computing all τ steps.
  np.testing.assert_array_equal(sched.local_steps, TAU)
  assert sched.local_steps.dtype == jnp.int32


def test_bursty_rate_and_mean_outage():
  rate, mean_outage, rounds = 1 / 3, 4.0, 20000
  sched = failures.schedule(failures.bursty(rate, mean_outage),
                            jax.random.key(1), rounds, K, TAU)
  failed = ~np.asarray(sched.connected)
  # The chain's autocorrelation ρ = 1 − P(up→fail) − P(fail→up) inflates the
  # variance of the mean by (1 + ρ) / (1 − ρ).
  p_recover = 1 / mean_outage
  p_fail = rate / ((1 - rate) * mean_outage)
  rho = 1 - p_fail - p_recover
  n = rounds * K
  sigma = np.sqrt(rate * (1 - rate) / n * (1 + rho) / (1 - rho))
  assert abs(failed.mean() - rate) < 4 * sigma
  lengths = _outage_lengths(failed)
  # Outage lengths are geometric with mean m and variance m² − m.
  sigma_len = np.sqrt(mean_outage**2 - mean_outage) / np.sqrt(len(lengths))
  assert abs(lengths.mean() - mean_outage) < 4 * sigma_len
  # The chain starts stationary: round 0 fails at the long-run rate too.
  first = failures.schedule(failures.bursty(rate, mean_outage),
                            jax.random.key(2), 1, 3000, TAU)
  assert abs((~first.connected).mean() - rate) < 4 * np.sqrt(
      rate * (1 - rate) / 3000)


MODELS = {
    "none": failures.no_failures(),
    "bernoulli": failures.bernoulli(0.3),
    "bursty_crash": failures.bursty(0.3, 3.0, mode="crash"),
    "stragglers": failures.stragglers(
        0.5, 0.5, base=failures.bernoulli(0.25, mode="crash")),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_schedule_equals_stepping_one_round_at_a_time(name):
  chex.clear_trace_counter()
  model = MODELS[name]
  key, rounds = jax.random.key(3), 12
  sched = failures.schedule(model, key, rounds, K, TAU)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, stream_key, t):
    return model.update(state, failures.round_key(stream_key, t))

  init_key, stream_key = failures.split_key(key)
  state = model.init(init_key, K, TAU)
  for t in range(rounds):
    f, state = step(state, stream_key, t)
    np.testing.assert_array_equal(f.connected, sched.connected[t])
    np.testing.assert_array_equal(f.local_steps, sched.local_steps[t])
  # A shorter schedule is a prefix of a longer one.
  short = failures.schedule(model, key, 5, K, TAU)
  chex.assert_trees_all_equal(short, jax.tree.map(lambda x: x[:5], sched))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_determinism_by_key(name):
  model = MODELS[name]
  a = failures.schedule(model, jax.random.key(5), 50, K, TAU)
  b = failures.schedule(model, jax.random.key(5), 50, K, TAU)
  chex.assert_trees_all_equal(a, b)
  if name != "none":
    c = failures.schedule(model, jax.random.key(6), 50, K, TAU)
    assert not (np.array_equal(a.connected, c.connected)
                and np.array_equal(a.local_steps, c.local_steps))


@pytest.mark.parametrize(
    "model",
    [failures.bernoulli(0.0), failures.bursty(0.0, 5.0), failures.no_failures(),
     failures.stragglers(0.0, 0.5)],
    ids=["bernoulli", "bursty", "none", "stragglers"])
def test_rate_zero_never_fails(model):
  sched = failures.schedule(model, jax.random.key(7), 200, K, TAU)
  assert np.all(sched.connected)
  np.testing.assert_array_equal(sched.local_steps, TAU)


@pytest.mark.parametrize("mode, steps", [("disconnect", TAU), ("crash", 0)])
def test_rate_one_always_fails(mode, steps):
  sched = failures.schedule(failures.bernoulli(1.0, mode=mode),
                            jax.random.key(8), 100, K, TAU)
  assert not np.any(sched.connected)
  np.testing.assert_array_equal(sched.local_steps, steps)


@pytest.mark.parametrize(
    "model",
    [failures.bernoulli(0.4, mode="crash"),
     failures.bursty(0.4, 2.0, mode="crash")],
    ids=["bernoulli", "bursty"])
def test_crash_mode_stops_computing(model):
  sched = failures.schedule(model, jax.random.key(9), 300, K, TAU)
  connected = np.asarray(sched.connected)
  assert connected.any() and not connected.all()
  np.testing.assert_array_equal(sched.local_steps,
                                np.where(connected, TAU, 0))


def test_stragglers_compute_fewer_steps():
  rate, rounds = 0.5, 2000
  sched = failures.schedule(failures.stragglers(rate, 0.5), jax.random.key(10),
                            rounds, K, TAU)
  steps = np.asarray(sched.local_steps)
  assert np.all(sched.connected)
  # max(1, floor(4 · 0.5)) = 2 steps for a straggler, τ otherwise.
  assert set(np.unique(steps)) == {2, TAU}
  slow = (steps == 2).mean()
  assert abs(slow - rate) < 4 * np.sqrt(rate * (1 - rate) / steps.size)


@pytest.mark.parametrize(
    "slowdown, tau, expected",
    [(0.0, 4, 4), (0.25, 4, 3), (0.9, 10, 1), (0.7, 10, 3), (1.0, 4, 1),
     (0.5, 1, 1)])
def test_straggler_step_count(slowdown, tau, expected):
  sched = failures.schedule(failures.stragglers(1.0, slowdown),
                            jax.random.key(11), 2, 3, tau)
  np.testing.assert_array_equal(sched.local_steps, expected)


@pytest.mark.parametrize("settings, skips", [
    (dict(failure_model="bernoulli", failure_rate=0.3,
          failure_mode="crash"), True),
    (dict(failure_model="bursty", failure_rate=0.3, failure_mode="crash"),
     True),
    (dict(failure_model="bernoulli", failure_rate=0.3,
          failure_mode="disconnect"), False),
    # Crashes that cannot happen.
    (dict(failure_model="none", failure_rate=0.3, failure_mode="crash"),
     False),
    (dict(failure_model="bernoulli", failure_rate=0.0,
          failure_mode="crash"), False),
    # Stragglers who lose a step, and ones who cannot (τ = 1; no slowdown).
    (dict(straggler_rate=0.2, comm_period=2), True),
    (dict(straggler_rate=0.2, comm_period=1), False),
    (dict(straggler_rate=0.2, straggler_slowdown=0.0, comm_period=4), False),
])
def test_settings_skip_steps_exactly_when_a_schedule_can(settings, skips):
  full = dict(failure_model="bernoulli", failure_rate=0.3,
              failure_mode="disconnect", straggler_rate=0.0,
              straggler_slowdown=0.5, comm_period=4)
  full.update(settings)
  assert failures.settings_skip_steps(**full) == skips
  tau = full.pop("comm_period")
  # Rates raised where the settings allow events at all (bursty allows at
  # most 2/3 at a mean outage of 2): a long schedule then shows whether
  # fewer than τ steps ever occur.
  if full["failure_rate"] > 0:
    full["failure_rate"] = 0.6
  if full["straggler_rate"] > 0:
    full["straggler_rate"] = 1.0
  model = failures.from_settings(mean_outage=2.0, **full)
  sched = failures.schedule(model, jax.random.key(3), 20, 3, tau)
  assert (np.asarray(sched.local_steps) < tau).any() == skips


def test_stragglers_take_connected_from_base_and_min_steps():
  base = failures.bursty(0.3, 2.0, mode="crash")
  model = failures.stragglers(0.5, 0.5, base=base)
  sched = failures.schedule(model, jax.random.key(12), 400, K, TAU)
  connected = np.asarray(sched.connected)
  steps = np.asarray(sched.local_steps)
  assert connected.any() and not connected.all()
  # Failed (crashed) workers compute nothing; connected ones τ or 2.
  np.testing.assert_array_equal(steps[~connected], 0)
  assert set(np.unique(steps[connected])) == {2, TAU}


@pytest.mark.parametrize(
    "factory, kwargs, arg",
    [
        (failures.bernoulli, dict(rate=-0.1), "rate"),
        (failures.bernoulli, dict(rate=1.1), "rate"),
        (failures.bernoulli, dict(rate=float("nan")), "rate"),
        (failures.bernoulli, dict(rate=0.3, mode="flaky"), "mode"),
        (failures.bursty, dict(rate=1.5, mean_outage=2.0), "rate"),
        (failures.bursty, dict(rate=0.3, mean_outage=0.5), "mean_outage"),
        (failures.bursty, dict(rate=0.3, mean_outage=2.0, mode="x"), "mode"),
        # P(up → fail) = 0.9 / (0.1 · 2) > 1.
        (failures.bursty, dict(rate=0.9, mean_outage=2.0), "rate"),
        (failures.bursty, dict(rate=1.0, mean_outage=3.0), "rate"),
        (failures.stragglers, dict(rate=-0.5, slowdown=0.5), "rate"),
        (failures.stragglers, dict(rate=0.5, slowdown=1.5), "slowdown"),
        (failures.stragglers, dict(rate=0.5, slowdown=0.5, base="bernoulli"),
         "base"),
    ])
def test_bad_parameters_raise_at_construction(factory, kwargs, arg):
  with pytest.raises(ValueError, match=arg):
    factory(**kwargs)


def test_bad_sizes_raise():
  model = failures.bernoulli(0.3)
  with pytest.raises(ValueError, match="num_workers"):
    model.init(jax.random.key(0), 0, TAU)
  with pytest.raises(ValueError, match="comm_period"):
    model.init(jax.random.key(0), K, 0)
  with pytest.raises(ValueError, match="rounds"):
    failures.schedule(model, jax.random.key(0), -1, K, TAU)


def test_get_failure_model():
  for name, kwargs in [("none", {}), ("bernoulli", dict(rate=0.3)),
                       ("bursty", dict(rate=0.3, mean_outage=2.0)),
                       ("stragglers", dict(rate=0.3, slowdown=0.5))]:
    model = failures.get_failure_model(name, **kwargs)
    assert isinstance(model, failures.FailureModel)
  with pytest.raises(ValueError, match="name"):
    failures.get_failure_model("cosmic_rays")
  sched = failures.schedule(failures.get_failure_model("bernoulli", rate=1.0),
                            jax.random.key(0), 3, 2, TAU)
  assert not np.any(sched.connected)
