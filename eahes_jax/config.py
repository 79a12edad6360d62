"""One experiment's configuration, as data, validated once at the edge."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from eahes_jax import elastic
from eahes_jax import execution
from eahes_jax import failures
from eahes_jax import methods as methods_lib
from eahes_jax import models
from eahes_jax import weighting

# The allowed values come from the modules that implement them; "auto" picks
# per backend at run time.
MODELS = tuple(models.MODELS)
FAILURE_MODELS = ("none", "bernoulli", "bursty")
FAILURE_MODES = failures.MODES
EXCHANGE_ORDERS = elastic.ORDERS
MASTER_ESTIMATES = weighting.MASTER_ESTIMATES
ORACLE_VARIANTS = weighting.ORACLE_VARIANTS
EXECUTIONS = ("auto",) + execution.STRATEGIES
CONV_IMPLS = ("auto",) + models.CONV_IMPLS


class ConfigError(ValueError):
  """A configuration value out of its allowed range; the message names it.

  Attributes:
    field: the offending field (also the experiment binaries' flag name).
  """

  def __init__(self, message: str, field: str | None = None):
    super().__init__(message)
    self.field = field


def _check(cond: bool, field: str, allowed: str, value: Any) -> None:
  if not cond:
    raise ConfigError(f"{field} must be {allowed}, got {value!r}", field)


_INT32_MAX = 2**31 - 1


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
  return (isinstance(x, (int, float)) and not isinstance(x, bool)
          and math.isfinite(x))


@dataclasses.dataclass(frozen=True)
class SimConfig:
  """Everything that defines one simulated run (algorithms.md §7 defaults).

  Fields left as ``None`` take the method's default when the config is
  resolved (``resolve()``): the learning rate (0.01) and the overlap ratio
  (``methods.default_overlap_ratio``).

  Attributes:
    method: one of the registered methods (``methods.PAPER_METHODS``).
    model: ``"mlp"``, ``"small_cnn"`` (the paper's 2-layer CNN) or ``"cnn"``.
    num_workers: k, the number of simulated workers, >= 1.
    comm_period: τ, local steps per communication round, >= 1.
    rounds: communication rounds to run, >= 0.
    batch_size: minibatch size per worker and local step.
    lr: local learning rate η (None: 0.01, the paper's).
    momentum: Nesterov momentum δ of EAMSGD (the paper: 0.5).
    alpha: the elastic moving rate α (the paper: 0.1), in (0, 1].
    overlap_ratio: r, the shared fraction of the data, in [0, 1) (None: the
      method's default).
    label_skew: s in [0, 1], the fraction of each worker's own data dealt by
      label (``partition.label_skew_partition``); 0 is the paper's uniform
      partition.
    weight_decay: AdaHessian's decoupled weight decay.
    hessian_samples: Hutchinson probes per step (the paper: 1).
    hessian_power: AdaHessian's Hessian power k in (0, 1].
    failure_rate: long-run fraction of rounds a worker misses (paper: 1/3).
    failure_model: ``"bernoulli"`` (the paper's), ``"bursty"`` or ``"none"``.
    failure_mode: ``"disconnect"`` (a failed worker keeps training locally;
      the paper's reading) or ``"crash"`` (it also stops computing).
    mean_outage: mean outage length in rounds of the bursty model.
    straggler_rate: chance per round that a worker straggles.
    straggler_slowdown: fraction of the τ local steps a straggler loses.
    exchange_order: ``"sequential"`` (workers meet the master one after
      another in random order) or ``"parallel"`` (synchronous EASGD formula).
    dw_history: p, differences of u the dynamic score averages (§5).
    dw_coeffs: c_0..c_{p-1}, most recent first, non-negative, summing to 1.
    dw_threshold: the paper's k < 0, where h1 reaches 1 and h2 reaches 0.
    dw_master_estimate: ``"exact"`` or ``"peer_mean"`` (§5).
    oracle_variant: how the oracle (EAHES-OM) meets a rejoining worker:
      ``"reset"`` (the paper's), ``"ignore"`` or ``"graded"`` (the dynamic
      maps fed the true outage length, with ``dw_threshold`` as k); see
      ``weighting.oracle``.
    num_seeds: seeds run side by side in one compiled program (vmap).
    seed: first seed; the run covers seed, seed + 1, ..., seed + num_seeds - 1.
    eval_every: rounds between evaluations of the master.
    eval_batch_size: batch size of the evaluation passes.
    train_eval_size: size of the fixed training subset whose loss is the
      paper's "training loss" (Figure 5); 0 means the whole training set.
    execution: how the worker axis runs: ``"vmap"``, ``"map"`` (sequential
      ``lax.map`` inside jit), ``"sharded"`` (over a device mesh) or
      ``"auto"`` (map on CPU, vmap on accelerators).
    conv_impl: convolution formulation of the CNNs: ``"xla"``, ``"im2col"``
      or ``"auto"`` (im2col on CPU where it is faster, xla elsewhere).
  """

  method: str = "DEAHES-O"
  model: str = "small_cnn"
  num_workers: int = 4
  comm_period: int = 1
  rounds: int = 200
  batch_size: int = 64
  lr: float | None = None
  momentum: float = 0.5
  alpha: float = 0.1
  overlap_ratio: float | None = None
  label_skew: float = 0.0
  weight_decay: float = 0.0
  hessian_samples: int = 1
  hessian_power: float = 1.0
  failure_rate: float = 1.0 / 3.0
  failure_model: str = "bernoulli"
  failure_mode: str = "disconnect"
  mean_outage: float = 3.0
  straggler_rate: float = 0.0
  straggler_slowdown: float = 0.5
  exchange_order: str = "sequential"
  dw_history: int = 3
  dw_coeffs: tuple[float, ...] = (0.6, 0.3, 0.1)
  dw_threshold: float = -3.0
  dw_master_estimate: str = "exact"
  oracle_variant: str = "reset"
  num_seeds: int = 1
  seed: int = 0
  eval_every: int = 10
  eval_batch_size: int = 1000
  train_eval_size: int = 10000
  execution: str = "auto"
  conv_impl: str = "auto"

  def __post_init__(self):
    object.__setattr__(self, "dw_coeffs",
                       tuple(float(c) for c in self.dw_coeffs))
    self.validate()

  def validate(self) -> None:
    """Checks every field; raises ``ConfigError`` naming the first bad one."""
    _check(self.method in methods_lib.methods(), "method",
           f"one of {sorted(methods_lib.methods())}", self.method)
    _check(self.model in MODELS, "model", f"one of {MODELS}", self.model)
    for name, low in (("num_workers", 1), ("comm_period", 1), ("rounds", 0),
                      ("batch_size", 1), ("hessian_samples", 1),
                      ("dw_history", 1), ("num_seeds", 1), ("seed", 0),
                      ("eval_every", 1), ("eval_batch_size", 1),
                      ("train_eval_size", 0)):
      value = getattr(self, name)
      _check(_is_int(value) and value >= low, name, f"an integer >= {low}",
             value)
      if name != "seed":  # The seed has its own bound below.
        # Counts become int32 values inside the compiled program; a larger
        # one overflows there (a traceback from JAX, or a schedule too long
        # to build) instead of being refused here.
        _check(value <= _INT32_MAX, name,
               f"an integer in [{low}, 2**31 - 1]", value)
    # Seeds become uint32 PRNG seeds: a larger one would alias a smaller one.
    _check(self.seed + self.num_seeds - 1 < 2**32, "seed",
           f"an integer with seed + num_seeds - 1 < 2**32 (num_seeds"
           f" {self.num_seeds})", self.seed)
    if self.lr is not None:
      _check(_is_real(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
    _check(_is_real(self.momentum) and 0 <= self.momentum < 1, "momentum",
           "in [0, 1)", self.momentum)
    _check(_is_real(self.alpha) and 0 < self.alpha <= 1, "alpha", "in (0, 1]",
           self.alpha)
    if self.overlap_ratio is not None:
      _check(_is_real(self.overlap_ratio) and 0 <= self.overlap_ratio < 1,
             "overlap_ratio", "in [0, 1)", self.overlap_ratio)
    _check(_is_real(self.label_skew) and 0 <= self.label_skew <= 1,
           "label_skew", "in [0, 1]", self.label_skew)
    _check(_is_real(self.weight_decay) and self.weight_decay >= 0,
           "weight_decay", "a number >= 0", self.weight_decay)
    _check(_is_real(self.hessian_power) and 0 < self.hessian_power <= 1,
           "hessian_power", "in (0, 1]", self.hessian_power)
    _check(_is_real(self.failure_rate) and 0 <= self.failure_rate <= 1,
           "failure_rate", "in [0, 1]", self.failure_rate)
    _check(self.failure_model in FAILURE_MODELS, "failure_model",
           f"one of {FAILURE_MODELS}", self.failure_model)
    _check(self.failure_mode in FAILURE_MODES, "failure_mode",
           f"one of {FAILURE_MODES}", self.failure_mode)
    _check(_is_real(self.mean_outage) and self.mean_outage >= 1,
           "mean_outage", "a number >= 1 (rounds)", self.mean_outage)
    if self.failure_model == "bursty":
      _check(self.failure_rate < 1, "failure_rate",
             "< 1 with failure_model='bursty' (a chain that never recovers"
             " has no mean outage; use bernoulli for rate 1)",
             self.failure_rate)
    if self.failure_model == "bursty" and 0 < self.failure_rate < 1:
      # The chain's up->down probability rate / ((1 - rate) * mean_outage)
      # must be a probability.
      p_fail = self.failure_rate / ((1 - self.failure_rate) * self.mean_outage)
      _check(p_fail <= 1, "mean_outage",
             f">= failure_rate / (1 - failure_rate) = "
             f"{self.failure_rate / (1 - self.failure_rate):.3g} for a bursty "
             f"chain with failure_rate {self.failure_rate:.3g}",
             self.mean_outage)
    _check(_is_real(self.straggler_rate) and 0 <= self.straggler_rate <= 1,
           "straggler_rate", "in [0, 1]", self.straggler_rate)
    _check(_is_real(self.straggler_slowdown)
           and 0 <= self.straggler_slowdown <= 1, "straggler_slowdown",
           "in [0, 1]", self.straggler_slowdown)
    _check(self.exchange_order in EXCHANGE_ORDERS, "exchange_order",
           f"one of {EXCHANGE_ORDERS}", self.exchange_order)
    _check(len(self.dw_coeffs) == self.dw_history, "dw_coeffs",
           f"{self.dw_history} numbers (one per dw_history difference)",
           self.dw_coeffs)
    _check(all(math.isfinite(c) and c >= 0 for c in self.dw_coeffs),
           "dw_coeffs", "non-negative", self.dw_coeffs)
    _check(abs(sum(self.dw_coeffs) - 1) <= 1e-6, "dw_coeffs",
           "numbers summing to 1", self.dw_coeffs)
    _check(_is_real(self.dw_threshold) and self.dw_threshold < 0,
           "dw_threshold", "a number < 0", self.dw_threshold)
    _check(self.dw_master_estimate in MASTER_ESTIMATES, "dw_master_estimate",
           f"one of {MASTER_ESTIMATES}", self.dw_master_estimate)
    if (self.dw_master_estimate == "peer_mean"
        and methods_lib.get_method(self.method).weighting == "dynamic"):
      _check(self.num_workers >= 2, "num_workers",
             ">= 2 with dw_master_estimate='peer_mean' (a worker needs peers)",
             self.num_workers)
    _check(self.oracle_variant in ORACLE_VARIANTS, "oracle_variant",
           f"one of {ORACLE_VARIANTS}", self.oracle_variant)
    _check(self.execution in EXECUTIONS, "execution", f"one of {EXECUTIONS}",
           self.execution)
    _check(self.conv_impl in CONV_IMPLS, "conv_impl", f"one of {CONV_IMPLS}",
           self.conv_impl)

  @property
  def method_spec(self) -> methods_lib.Method:
    return methods_lib.get_method(self.method)

  def resolve(self) -> "SimConfig":
    """Returns a copy with every ``None`` default filled in from the method."""
    method = self.method_spec
    lr = 0.01 if self.lr is None else self.lr
    r = (methods_lib.default_overlap_ratio(method, self.num_workers)
         if self.overlap_ratio is None else self.overlap_ratio)
    return dataclasses.replace(self, lr=lr, overlap_ratio=r)

  def replace(self, **changes: Any) -> "SimConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["dw_coeffs"] = list(self.dw_coeffs)
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SimConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"unknown config fields {unknown}", unknown[0])
    d = dict(d)
    if "dw_coeffs" in d:
      d["dw_coeffs"] = tuple(d["dw_coeffs"])
    return cls(**d)
