"""Worker failure models: which workers exchange, and how much they compute.

A failure model says, for every communication round, which workers reach the
master (`connected`) and how many of the round's τ local steps each one
computes (`local_steps`). The paper (§VI) suppresses a worker's communication
with the master one third of the time, independently per worker and round,
while the worker keeps training locally: `bernoulli(1/3)`. docs/algorithms.md
§6 adds bursts of failures, crashes and stragglers.

Models follow the optax shape: a constructor validates its parameters and
returns a `FailureModel` of two pure, jit-able functions,

  state = model.init(init_key, num_workers, comm_period)
  failures, state = model.update(state, round_key)

Keys. For a master key `key`, `split_key(key)` gives (init_key, stream_key), and
round t (t = 0, 1, ...) uses `round_key(stream_key, t)` =
`jax.random.fold_in(stream_key, t)`. `schedule` draws whole schedules with
exactly these keys and the same `update`, so stepping one round at a time inside
a jitted training loop gives the same masks as the precomputed schedule, and a
shorter schedule is a prefix of a longer one.
"""

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from eahes_jax import checks

MODES = ("disconnect", "crash")


class RoundFailures(NamedTuple):
  """One round's failures (or, from `schedule`, a (rounds, k) stack of them).

  Attributes:
    connected: bool (k,), whether the worker exchanges with the master.
    local_steps: int32 (k,), how many of the τ local steps the worker computes.
  """
  connected: chex.Array
  local_steps: chex.Array


class FailureModel(NamedTuple):
  """A pair of pure functions (optax style).

  Attributes:
    init: (key, num_workers, comm_period) -> state; num_workers and
      comm_period are Python ints.
    update: (state, key) -> (RoundFailures, state).
  """
  init: Callable[[chex.PRNGKey, int, int], Any]
  update: Callable[[Any, chex.PRNGKey], tuple[RoundFailures, Any]]


class NoFailuresState(NamedTuple):
  """Attributes: comm_period: int32 (k,), τ for every worker."""
  comm_period: chex.Array


class BernoulliState(NamedTuple):
  """Attributes: comm_period: int32 (k,), τ for every worker."""
  comm_period: chex.Array


class BurstyState(NamedTuple):
  """State of the bursty model.

  Attributes:
    failed: bool (k,), each worker's state in the previous round (at init, a
      draw from the stationary distribution).
    comm_period: int32 (k,), τ for every worker.
  """
  failed: chex.Array
  comm_period: chex.Array


class StragglersState(NamedTuple):
  """State of the stragglers model.

  Attributes:
    comm_period: int32 (k,), τ for every worker.
    straggler_steps: int32 scalar, the local steps a straggler computes.
    base: the state of the base model (None when there is none).
  """
  comm_period: chex.Array
  straggler_steps: chex.Array
  base: Any


def split_key(key: chex.PRNGKey) -> tuple[chex.PRNGKey, chex.PRNGKey]:
  """(init_key, stream_key) for a failure model driven by `key`."""
  init_key, stream_key = jax.random.split(key)
  return init_key, stream_key


def round_key(stream_key: chex.PRNGKey,
              round_index: chex.Numeric) -> chex.PRNGKey:
  """The key of round `round_index` (may be traced): fold_in(stream_key, t)."""
  return jax.random.fold_in(stream_key, round_index)


def _check_rate(rate: float, name: str = "rate") -> float:
  return checks.number_in(rate, name, 0.0, 1.0)


def _check_mode(mode: str) -> str:
  return checks.one_of(mode, "mode", MODES)


def _check_sizes(num_workers: int, comm_period: int) -> tuple[int, int]:
  return (checks.integer_at_least(num_workers, "num_workers", 1),
          checks.integer_at_least(comm_period, "comm_period", 1))


def _full_steps(num_workers: int, comm_period: int) -> chex.Array:
  return jnp.full((num_workers,), comm_period, jnp.int32)


def _from_failed(failed: chex.Array, comm_period: chex.Array,
                 mode: str) -> RoundFailures:
  if mode == "crash":
    local_steps = jnp.where(failed, 0, comm_period)
  else:
    local_steps = comm_period
  return RoundFailures(connected=~failed,
                       local_steps=local_steps.astype(jnp.int32))


def no_failures() -> FailureModel:
  """Every worker is connected and computes all τ local steps, every round."""

  def init(key, num_workers, comm_period):
    del key
    num_workers, comm_period = _check_sizes(num_workers, comm_period)
    return NoFailuresState(_full_steps(num_workers, comm_period))

  def update(state, key):
    del key
    connected = jnp.ones(state.comm_period.shape, bool)
    return RoundFailures(connected, state.comm_period), state

  return FailureModel(init, update)


def bernoulli(rate: float, mode: str = "disconnect") -> FailureModel:
  """Each worker fails independently with probability `rate` each round.

  The paper's model is `bernoulli(1/3)` (disconnect mode).

  Args:
    rate: failure probability per worker per round, in [0, 1].
    mode: "disconnect": a failed worker skips the exchange but keeps training
      (local_steps = τ); "crash": it also computes nothing that round
      (local_steps = 0).

  Returns:
    A `FailureModel` with state `BernoulliState`.
  """
  rate = _check_rate(rate)
  mode = _check_mode(mode)

  def init(key, num_workers, comm_period):
    del key
    num_workers, comm_period = _check_sizes(num_workers, comm_period)
    return BernoulliState(_full_steps(num_workers, comm_period))

  def update(state, key):
    failed = jax.random.bernoulli(key, rate, state.comm_period.shape)
    return _from_failed(failed, state.comm_period, mode), state

  return FailureModel(init, update)


def bursty(rate: float, mean_outage: float,
           mode: str = "disconnect") -> FailureModel:
  """Failures in bursts: a two-state Markov chain per worker.

  Transition probabilities per round:

    P(failed → up) = 1 / mean_outage
    P(up → failed) = rate / ((1 − rate) · mean_outage)

  so outages last mean_outage rounds on average (geometrically distributed)
  and the long-run failure rate is `rate`, as for `bernoulli(rate)`. The chain
  starts in its stationary distribution, so every round fails with probability
  `rate`.

  Args:
    rate: long-run failure probability, in [0, 1), and small enough that
      P(up → failed) <= 1, i.e. rate <= mean_outage / (1 + mean_outage).
    mean_outage: mean outage length in rounds, finite and >= 1.
    mode: "disconnect" or "crash", as in `bernoulli`.

  Returns:
    A `FailureModel` with state `BurstyState`.
  """
  rate = _check_rate(rate)
  checks.require(checks.is_real(mean_outage) and mean_outage >= 1,
                 "mean_outage", "a finite number >= 1 (rounds)", mean_outage)
  mode = _check_mode(mode)
  mean_outage = float(mean_outage)
  max_rate = mean_outage / (1.0 + mean_outage)
  checks.require(rate <= max_rate, "rate",
                 f"<= mean_outage / (1 + mean_outage) = {max_rate:.6g} for"
                 f" mean_outage={mean_outage:g} (otherwise P(up -> failed) >"
                 " 1)", rate)
  p_recover = 1.0 / mean_outage
  p_fail = min(1.0, rate / ((1.0 - rate) * mean_outage))

  def init(key, num_workers, comm_period):
    num_workers, comm_period = _check_sizes(num_workers, comm_period)
    failed = jax.random.bernoulli(key, rate, (num_workers,))
    return BurstyState(failed, _full_steps(num_workers, comm_period))

  def update(state, key):
    draw = jax.random.uniform(key, state.failed.shape)
    # A failed worker stays failed unless it recovers; an up worker may fail.
    failed = jnp.where(state.failed, draw >= p_recover, draw < p_fail)
    return (_from_failed(failed, state.comm_period, mode),
            BurstyState(failed, state.comm_period))

  return FailureModel(init, update)


def straggler_steps(comm_period: int, slowdown: float) -> int:
  """The local steps a straggler computes: ⌊τ (1 − slowdown)⌋, at least 1."""
  # The small epsilon keeps e.g. 10 · (1 − 0.9) = 0.99999... from flooring
  # to one step less than intended.
  return max(1, math.floor(comm_period * (1.0 - slowdown) + 1e-9))


def settings_skip_steps(*, failure_model: str, failure_rate: float,
                        failure_mode: str, straggler_rate: float,
                        straggler_slowdown: float, comm_period: int) -> bool:
  """Whether ``from_settings``' model can ever leave a worker fewer than
  τ = ``comm_period`` local steps in a round: crashes that can happen, or
  stragglers who lose at least one step."""
  crashes = (failure_mode == "crash" and failure_model != "none"
             and failure_rate > 0)
  slow = (straggler_rate > 0
          and straggler_steps(comm_period, straggler_slowdown) < comm_period)
  return crashes or slow


def stragglers(rate: float, slowdown: float,
               base: Optional[FailureModel] = None) -> FailureModel:
  """Slow workers: some rounds a worker completes only part of its τ steps.

  Each round, each worker independently is a straggler with probability
  `rate` and then computes max(1, floor(τ · (1 − slowdown))) local steps: it
  loses the fraction `slowdown` of its work, rounded down, but always completes
  at least one step (a worker that computes nothing is a crash, see
  `bernoulli(mode="crash")`). With τ = 1 stragglers are therefore invisible.

  Args:
    rate: straggler probability per worker per round, in [0, 1].
    slowdown: fraction of the τ steps a straggler loses, in [0, 1].
    base: optional failure model giving `connected` (and its own
      local_steps; the result takes the minimum of both). None: every worker
      is connected.

  Returns:
    A `FailureModel` with state `StragglersState`.
  """
  rate = _check_rate(rate)
  slowdown = _check_rate(slowdown, "slowdown")
  if base is None:
    base = no_failures()
  if not isinstance(base, FailureModel):
    raise ValueError(f"base must be a FailureModel or None, got {base!r}")

  def init(key, num_workers, comm_period):
    num_workers, comm_period = _check_sizes(num_workers, comm_period)
    steps = straggler_steps(comm_period, slowdown)
    return StragglersState(
        comm_period=_full_steps(num_workers, comm_period),
        straggler_steps=jnp.asarray(steps, jnp.int32),
        base=base.init(key, num_workers, comm_period))

  def update(state, key):
    base_key, straggle_key = jax.random.split(key)
    base_failures, base_state = base.update(state.base, base_key)
    slow = jax.random.bernoulli(straggle_key, rate, state.comm_period.shape)
    steps = jnp.where(slow, state.straggler_steps, state.comm_period)
    local_steps = jnp.minimum(steps, base_failures.local_steps)
    return (RoundFailures(base_failures.connected,
                          local_steps.astype(jnp.int32)),
            state._replace(base=base_state))

  return FailureModel(init, update)


def schedule(model: FailureModel, key: chex.PRNGKey, rounds: int,
             num_workers: int, comm_period: int) -> RoundFailures:
  """Draws `rounds` rounds of failures at once (lax.scan over `model.update`).

  Uses `split_key(key)` and `round_key(stream_key, t)` exactly as documented
  in the module docstring, so it agrees with stepping the model one round at a
  time with the same key.

  Args:
    model: a `FailureModel`.
    key: the master key.
    rounds: number of rounds, a Python int >= 0.
    num_workers: k.
    comm_period: τ.

  Returns:
    `RoundFailures` whose arrays have shape (rounds, k).
  """
  rounds = checks.integer_at_least(rounds, "rounds", 0)
  num_workers, comm_period = _check_sizes(num_workers, comm_period)
  return _schedule(model, key, int(rounds), num_workers, comm_period)


# Compiled once per (model, rounds, num_workers, comm_period): a model's
# functions are hashable, so redrawing with new keys reuses the executable.
@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _schedule(model: FailureModel, key: chex.PRNGKey, rounds: int,
              num_workers: int, comm_period: int) -> RoundFailures:
  init_key, stream_key = split_key(key)
  state = model.init(init_key, num_workers, comm_period)

  def step(state, t):
    failures, state = model.update(state, round_key(stream_key, t))
    return state, failures

  _, failures = jax.lax.scan(step, state, jnp.arange(rounds))
  return failures


SETTINGS_MODELS = ("none", "bernoulli", "bursty")


def from_settings(*, failure_model: str, failure_rate: float,
                  failure_mode: str = "disconnect", mean_outage: float = 3.0,
                  straggler_rate: float = 0.0,
                  straggler_slowdown: float = 0.5) -> FailureModel:
  """The failure model of a run's settings (``SimConfig``'s field names).

  Base outages by ``failure_model`` (``SETTINGS_MODELS``) at
  ``failure_rate``, with stragglers on top when ``straggler_rate`` > 0.

  Raises:
    checks.ArgumentError: named after the setting (``failure_rate``,
      ``mean_outage``, ...), not the constructor's argument.
  """
  checks.one_of(failure_model, "failure_model", SETTINGS_MODELS)
  names = ({"rate": "failure_rate", "mode": "failure_mode"}
           if failure_model != "none" else {})
  try:
    if failure_model == "bernoulli":
      base = bernoulli(failure_rate, mode=failure_mode)
    elif failure_model == "bursty":
      base = bursty(failure_rate, mean_outage, mode=failure_mode)
    else:
      _check_rate(failure_rate, "failure_rate")
      _check_mode(failure_mode)
      base = no_failures()
    # Checked even when bursty is off, so that a bad value never waits for
    # the run where it matters.
    checks.require(checks.is_real(mean_outage) and mean_outage >= 1,
                   "mean_outage", "a finite number >= 1 (rounds)",
                   mean_outage)
    if failure_rate == 0:
      base = no_failures()
    names = {"rate": "straggler_rate", "slowdown": "straggler_slowdown"}
    with_stragglers = stragglers(straggler_rate, straggler_slowdown,
                                 base=base)
  except checks.ArgumentError as e:
    if e.argument not in names:
      raise
    raise checks.ArgumentError(names[e.argument], e.requirement,
                               e.value) from None
  return with_stragglers if straggler_rate > 0 else base


_MODELS = {
    "none": no_failures,
    "bernoulli": bernoulli,
    "bursty": bursty,
    "stragglers": stragglers,
}


def get_failure_model(name: str, **kwargs: Any) -> FailureModel:
  """A failure model by name: "none", "bernoulli", "bursty" or "stragglers"."""
  checks.one_of(name, "name", tuple(_MODELS))
  return _MODELS[name](**kwargs)
