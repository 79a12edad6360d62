"""Elastic weighting policies: fixed (EASGD), oracle (EAHES-OM), dynamic.

A policy decides, every communication round, the pair of elastic weights each
worker i uses in `eahes_jax.elastic.exchange` (paper eqs. 12-13):
h_worker[i] (the worker's pull toward the master, the paper's h1) and
h_master[i] (the master's pull toward the worker, the paper's h2).

Policies follow the optax shape: a constructor validates the hyperparameters and
returns a `WeightingPolicy` of two pure, jit-able functions,

  state = policy.init(num_workers)
  inputs = WeightingInputs(workers, master, connected)
  weights, state = policy.update(state, inputs)

`update` is meant to be called once per round, after the workers' local steps
and before the exchange, with the same workers and master the exchange sees.
"""

import numbers
from typing import Any, Callable, NamedTuple, Optional, Sequence

import chex
import jax.numpy as jnp
import numpy as np

from eahes_jax import checks
from eahes_jax import elastic

MASTER_ESTIMATES = ("exact", "peer_mean")

# Default hyperparameters of the dynamic policy. The paper does not give p, c
# or k; these are provisional and meant to be replaced by a documented sweep.
DEFAULT_P = 3
DEFAULT_COEFFS = (0.6, 0.3, 0.1)
DEFAULT_THRESHOLD = -3.0

_COEFFS_TOL = 1e-6


class WeightingInputs(NamedTuple):
  """What a policy sees each round.

  Attributes:
    workers: parameters, the k workers stacked on axis 0.
    master: the master's parameters (no worker axis).
    connected: bool (k,), which workers exchange with the master this round.
  """
  workers: chex.ArrayTree
  master: chex.ArrayTree
  connected: chex.Array


class Weights(NamedTuple):
  """A policy's output for one round.

  Attributes:
    h_worker: float32 (k,), h1: the worker's pull toward the master.
    h_master: float32 (k,), h2: the master's pull toward the worker.
    score: float32 (k,), the raw score a of eq. (10); zeros for policies that
      do not compute one.
    log_distance: float32 (k,), u = log‖θ_i − θ̃_m‖ as the policy measured it:
      against the true master, except for `dynamic(master_estimate=
      "peer_mean")`, where θ̃_m is the mean of the other workers.
  """
  h_worker: chex.Array
  h_master: chex.Array
  score: chex.Array
  log_distance: chex.Array


class WeightingPolicy(NamedTuple):
  """A pair of pure functions (optax style).

  Attributes:
    init: num_workers -> state.
    update: (state, WeightingInputs) -> (Weights, state).
  """
  init: Callable[[int], Any]
  update: Callable[[Any, WeightingInputs], tuple[Weights, Any]]


class FixedState(NamedTuple):
  """The fixed policy keeps no state."""


class OracleState(NamedTuple):
  """State of the oracle policy.

  Attributes:
    missed: int32 (k,), exchanges each worker has missed since its last one.
  """
  missed: chex.Array


class DynamicState(NamedTuple):
  """State of the dynamic policy.

  Attributes:
    u_history: float32 (k, p + 1), the last p + 1 values of u per worker,
      oldest first (column -1 is the most recent).
    count: int32 scalar, rounds recorded so far.
  """
  u_history: chex.Array
  count: chex.Array


def check_num_workers(master_estimate: str, num_workers: int) -> None:
  """The peer-mean estimate needs peers: k >= 2 (the dynamic policy's init).

  Raises:
    checks.ArgumentError: named ``num_workers``.
  """
  checks.require(master_estimate != "peer_mean" or num_workers >= 2,
                 "num_workers",
                 ">= 2 with master_estimate='peer_mean' (a worker needs"
                 " peers)", num_workers)


def _check_alpha(alpha: float) -> float:
  return checks.number_in(alpha, "alpha", 0.0, 1.0, low_closed=False)


def _check_threshold(threshold: float) -> float:
  checks.require(checks.is_real(threshold) and threshold < 0.0, "threshold",
                 "a number < 0", threshold)
  return float(threshold)


def _is_concrete_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _float_array(a: chex.Numeric) -> chex.Array:
  a = jnp.asarray(a)
  return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _score_array(a: chex.Numeric, k: chex.Numeric) -> chex.Array:
  """The scores as a float array, after checking a concrete threshold k."""
  if _is_concrete_number(k):
    checks.require(k < 0, "k", "< 0", k)
  return _float_array(a)


def h1(a: chex.Numeric, alpha: chex.Numeric, k: chex.Numeric) -> chex.Array:
  """The worker's pull toward the master as a function of the raw score (§V-B).

    h1(a) = 1                          if a < k
          = 1 + (1 − α)/k · (a − k)    if k ≤ a ≤ 0
          = α                          if a > 0

  Continuous: h1(k) = 1, h1(0) = α. Elementwise in `a`.

  Args:
    a: raw scores, any shape.
    alpha: the EASGD moving rate α in (0, 1].
    k: the threshold, < 0 (the paper's k; not a worker count).

  Returns:
    Array of the shape of `a`, at least float32.
  """
  a = _score_array(a, k)
  # α + (1 − α)·a/k is the middle piece rearranged; with the end pieces taking
  # the closed boundaries (equal there by continuity), h1(k) = 1 and
  # h1(0) = α hold exactly in floating point, so a = 0 is exactly EASGD.
  mid = alpha + (1.0 - alpha) * (a / k)
  return jnp.where(a <= k, 1.0, jnp.where(a >= 0, alpha, mid)).astype(a.dtype)


def h2(a: chex.Numeric, alpha: chex.Numeric, k: chex.Numeric) -> chex.Array:
  """The master's pull toward the worker as a function of the raw score (§V-B).

    h2(a) = 0                 if a < k
          = α − (α/k) · a     if k ≤ a ≤ 0
          = α                 if a > 0

  Continuous: h2(k) = 0, h2(0) = α. Elementwise in `a`; arguments and result
  as in `h1`.
  """
  a = _score_array(a, k)
  # α·(1 − a/k) is the middle piece rearranged; the end pieces take the closed
  # boundaries so that h2(k) = 0 and h2(0) = α hold exactly (see h1).
  mid = alpha * (1.0 - a / k)
  return jnp.where(a <= k, 0.0, jnp.where(a >= 0, alpha, mid)).astype(a.dtype)


def raw_score(u_history: chex.Array,
              coeffs: chex.Array,
              num_recorded: Optional[chex.Numeric] = None) -> chex.Array:
  """The raw score a of eq. (10), in the form of docs/algorithms.md §5.

    a_t = Σ_{j=0}^{p−1} c_j (u_{t−j} − u_{t−j−1})

  Args:
    u_history: (..., p + 1) values of u ordered OLDEST FIRST: u_history[..., -1]
      is u_t, u_history[..., -2] is u_{t−1}, and u_history[..., 0] is u_{t−p}.
    coeffs: (p,) weights, coeffs[0] = c_0 weighting the most recent difference
      u_t − u_{t−1}.
    num_recorded: how many values of u have really been recorded (scalar or
      broadcastable to the batch shape). Where it is below p + 1 the history is
      incomplete and the score is 0. None means the history is full.

  Returns:
    Array of shape u_history.shape[:-1].
  """
  u_history = _float_array(u_history)
  coeffs = jnp.asarray(coeffs, u_history.dtype)
  if coeffs.ndim != 1:
    raise ValueError(f"coeffs must be 1-D, got shape {coeffs.shape}")
  p = coeffs.shape[0]
  if u_history.shape[-1] != p + 1:
    raise ValueError(
        f"u_history must have p + 1 = {p + 1} values on its last axis, got"
        f" shape {u_history.shape}")
  diffs = jnp.diff(u_history, axis=-1)  # oldest first
  score = jnp.sum(coeffs * diffs[..., ::-1], axis=-1)
  if num_recorded is None:
    return score
  return jnp.where(jnp.asarray(num_recorded) >= p + 1, score, 0.0)


def _true_log_distance(inputs: WeightingInputs) -> chex.Array:
  return elastic.log_distance(inputs.workers, inputs.master)


def fixed(alpha: float) -> WeightingPolicy:
  """EASGD: h_worker = h_master = α for every worker, every round.

  Args:
    alpha: the moving rate, in (0, 1].

  Returns:
    A `WeightingPolicy` with state `FixedState()`.
  """
  alpha = _check_alpha(alpha)

  def init(num_workers: int) -> FixedState:
    del num_workers
    return FixedState()

  def update(state: FixedState,
             inputs: WeightingInputs) -> tuple[Weights, FixedState]:
    u = _true_log_distance(inputs)
    h = jnp.full(u.shape, alpha, jnp.float32)
    return Weights(h, h, jnp.zeros_like(u), u), state

  return WeightingPolicy(init, update)


ORACLE_VARIANTS = ("reset", "ignore", "graded")


def oracle(alpha: float, *, variant: str = "reset",
           threshold: float = DEFAULT_THRESHOLD) -> WeightingPolicy:
  """EAHES-OM: knows the failures; treats a rejoining worker specially.

  At a worker's first exchange after m ≥ 1 missed exchanges (a rejoin), the
  weights are, by ``variant``:

  * ``"reset"`` (the paper's EAHES-OM): h_worker = 1, h_master = 0; the
    worker takes the master's parameters and the master ignores it;
  * ``"ignore"``: h_worker = α, h_master = 0; the master ignores the worker,
    which moves toward the master as usual;
  * ``"graded"``: the dynamic policy's maps fed the true outage length,
    h_worker = h1(−m), h_master = h2(−m) with the threshold k: an outage of
    |k| or more exchanges is a full reset, shorter ones are partial.

  α for both at every other exchange. The missed-exchange counter m resets to
  0 when the worker is connected and grows by one when it is not.

  Args:
    alpha: the moving rate, in (0, 1].
    variant: one of ``ORACLE_VARIANTS``.
    threshold: the k < 0 of ``"graded"`` (unused otherwise).

  Returns:
    A `WeightingPolicy` with state `OracleState`.
  """
  alpha = _check_alpha(alpha)
  threshold = _check_threshold(threshold)
  checks.one_of(variant, "variant", ORACLE_VARIANTS)

  def rejoin_weights(missed: chex.Array) -> tuple[chex.Array, chex.Array]:
    if variant == "reset":
      return jnp.ones(missed.shape), jnp.zeros(missed.shape)
    if variant == "ignore":
      return jnp.full(missed.shape, alpha), jnp.zeros(missed.shape)
    a = -missed.astype(jnp.float32)
    return h1(a, alpha, threshold), h2(a, alpha, threshold)

  def init(num_workers: int) -> OracleState:
    return OracleState(missed=jnp.zeros((num_workers,), jnp.int32))

  def update(state: OracleState,
             inputs: WeightingInputs) -> tuple[Weights, OracleState]:
    u = _true_log_distance(inputs)
    connected = jnp.broadcast_to(jnp.asarray(inputs.connected, bool), u.shape)
    rejoin = connected & (state.missed > 0)
    back_worker, back_master = rejoin_weights(state.missed)
    h_worker = jnp.where(rejoin, back_worker, alpha).astype(jnp.float32)
    h_master = jnp.where(rejoin, back_master, alpha).astype(jnp.float32)
    missed = jnp.where(connected, 0, state.missed + 1).astype(jnp.int32)
    return (Weights(h_worker, h_master, jnp.zeros_like(u), u),
            OracleState(missed=missed))

  return WeightingPolicy(init, update)


def _default_coeffs(p: int) -> tuple[float, ...]:
  if p == DEFAULT_P:
    return DEFAULT_COEFFS
  # Linearly decreasing weights c_j ∝ p − j: most recent difference heaviest.
  total = p * (p + 1) / 2
  return tuple((p - j) / total for j in range(p))


def dynamic(alpha: float,
            *,
            p: int = DEFAULT_P,
            coeffs: Optional[Sequence[float]] = None,
            threshold: float = DEFAULT_THRESHOLD,
            master_estimate: str = "exact") -> WeightingPolicy:
  """DEAHES: weights from the trend of the worker–master distance (§V-B).

  Every round, failed or not, each worker records u_t = log‖θ_i − θ̃_m‖; once
  p + 1 values exist the raw score a = `raw_score` (eq. 10) gives h_worker =
  h1(a) and h_master = h2(a); before that a = 0, i.e. h = (α, α). A healthy
  worker (a > 0) gets exactly the EASGD weights; a worker whose distance drops
  fast (a < threshold) is reset to the master, which ignores it.

  Args:
    alpha: the moving rate, in (0, 1].
    p: number of differences in the score, >= 1.
    coeffs: p non-negative weights summing to 1, coeffs[0] for the most recent
      difference. None: (0.6, 0.3, 0.1) when p = 3, else c_j ∝ p − j.
    threshold: the paper's k (named `threshold` here), < 0.
    master_estimate: θ̃_m, "exact" (the true master) or "peer_mean" (for
      worker i, the mean of the other workers; needs num_workers >= 2).

  Returns:
    A `WeightingPolicy` with state `DynamicState`.

  Raises:
    ValueError: a hyperparameter out of range.
  """
  alpha = _check_alpha(alpha)
  threshold = _check_threshold(threshold)
  p = checks.count(p, "p", 1)
  if coeffs is None:
    coeffs = _default_coeffs(p)
  coeffs = tuple(coeffs)
  checks.require(len(coeffs) == p, "coeffs",
                 f"{p} numbers (one per difference, p = {p})", coeffs)
  checks.require(all(checks.is_real(c) and c >= 0 for c in coeffs), "coeffs",
                 "finite and >= 0", coeffs)
  checks.require(abs(sum(coeffs) - 1.0) <= _COEFFS_TOL, "coeffs",
                 f"numbers summing to 1 (tolerance {_COEFFS_TOL})", coeffs)
  checks.one_of(master_estimate, "master_estimate", MASTER_ESTIMATES)
  # A NumPy constant, not a device array: building a policy (as SimConfig's
  # checks do) must not start a JAX backend.
  coeffs_array = np.asarray(coeffs, np.float32)

  def init(num_workers: int) -> DynamicState:
    check_num_workers(master_estimate, num_workers)
    return DynamicState(
        u_history=jnp.zeros((num_workers, p + 1), jnp.float32),
        count=jnp.zeros((), jnp.int32))

  def update(state: DynamicState,
             inputs: WeightingInputs) -> tuple[Weights, DynamicState]:
    if master_estimate == "exact":
      u = elastic.log_distance(inputs.workers, inputs.master)
    else:
      u = elastic.log_distance(
          inputs.workers, elastic.peer_mean_estimate(inputs.workers),
          stacked_master=True)
    history = jnp.concatenate(
        [state.u_history[:, 1:], u[:, None].astype(state.u_history.dtype)],
        axis=1)
    count = state.count + 1
    a = raw_score(history, coeffs_array, count)
    weights = Weights(
        h_worker=h1(a, alpha, threshold).astype(jnp.float32),
        h_master=h2(a, alpha, threshold).astype(jnp.float32),
        score=a.astype(jnp.float32),
        log_distance=u)
    return weights, DynamicState(u_history=history, count=count)

  return WeightingPolicy(init, update)


_POLICIES = {"fixed": fixed, "oracle": oracle, "dynamic": dynamic}


def get_policy(name: str, **kwargs: Any) -> WeightingPolicy:
  """A policy by name: "fixed", "oracle" or "dynamic", built with `kwargs`."""
  if name not in _POLICIES:
    raise ValueError(
        f"name must be one of {tuple(_POLICIES)}, got {name!r}")
  return _POLICIES[name](**kwargs)
