"""One experiment's configuration, as data, validated once at the edge."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from eahes_jax.adahessian import adahessian as adahessian_transform
from eahes_jax import checks
from eahes_jax import elastic
from eahes_jax import execution
from eahes_jax import failures
from eahes_jax import microbatch
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
SEED_EXECUTIONS = ("auto", "vmap", "map")
DEFAULT_LR = methods_lib.DEFAULT_LR


def choices() -> dict[str, tuple[str, ...]]:
  """The allowed values of each ``SimConfig`` field that has a fixed set.

  A function, not a constant: methods can be registered after import.
  """
  return {"method": tuple(methods_lib.methods()), "model": MODELS,
          "failure_model": FAILURE_MODELS, "failure_mode": FAILURE_MODES,
          "exchange_order": EXCHANGE_ORDERS,
          "dw_master_estimate": MASTER_ESTIMATES,
          "oracle_variant": ORACLE_VARIANTS, "execution": EXECUTIONS,
          "conv_impl": CONV_IMPLS, "seed_execution": SEED_EXECUTIONS}


class ConfigError(ValueError):
  """A configuration value out of its allowed range; the message names it.

  Attributes:
    field: the offending field (also the experiment binaries' flag name).
  """

  def __init__(self, message: str, field: str | None = None):
    super().__init__(message)
    self.field = field


def current_fields(d: dict[str, Any]) -> dict[str, Any]:
  """A copy of a stored config dict with fields renamed since put under
  their current names and values, so that it describes the same run:
  ``single_seed`` (``"plain"``) became ``seed_execution`` (``"map"``)."""
  d = dict(d)
  if "single_seed" in d:
    legacy = d.pop("single_seed")
    renamed = {"plain": "map"}.get(legacy, legacy)
    if d.setdefault("seed_execution", renamed) != renamed:
      raise ConfigError(
          f"single_seed={legacy!r} (the earlier name of seed_execution)"
          f" contradicts seed_execution={d['seed_execution']!r}",
          "single_seed")
  return d


def _check(cond: bool, field: str, allowed: str, value: Any) -> None:
  if not cond:
    raise ConfigError(f"{field} must be {allowed}, got {value!r}", field)


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


_is_real = checks.is_real

# Constructor arguments -> the SimConfig fields they are given.
_POLICY_FIELDS = {"alpha": "alpha", "p": "dw_history", "coeffs": "dw_coeffs",
                  "threshold": "dw_threshold",
                  "master_estimate": "dw_master_estimate",
                  "variant": "oracle_variant", "num_workers": "num_workers"}


def _ask(build: Callable[[], Any], fields: dict[str, str]) -> None:
  """Runs a constructor for its checks; its ``ArgumentError`` becomes a
  ``ConfigError`` naming the field (``fields`` maps argument names that
  differ from the field's)."""
  try:
    build()
  except checks.ArgumentError as e:
    field = fields.get(e.argument, e.argument)
    raise ConfigError(f"{field} must be {e.requirement}, got {e.value!r}",
                      field) from None


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
    micro_batches: m, the parts each local step's minibatch is computed in,
      one after another, their loss, gradient and Hutchinson estimate (one
      probe for all) averaged (``microbatch.mean_over_micro_batches``): the
      same step, rounded differently and with each part's own dropout
      masks. A CPU speed option: activations m times smaller stay in the
      caches (``cnn`` under ``conv_impl="winograd"``: m = 2 is the fastest,
      README, Performance). 1 (the default) computes the minibatch at once;
      m must divide ``batch_size``.
    lr: local learning rate η (unset: ``DEFAULT_LR``, 0.01, the paper's).
    momentum: Nesterov momentum δ of EAMSGD (the paper: 0.5).
    alpha: the elastic moving rate α (the paper: 0.1), in (0, 1].
    overlap_ratio: r, the shared fraction of the data, in [0, 1) (unset: the
      method's default, 1/k for the overlap methods and 0 for the others).
    label_skew: s in [0, 1], the fraction of each worker's own data dealt by
      label (``partition.label_skew_partition``); 0 is the paper's uniform
      partition, 1 gives each worker about 10/k classes.
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
    num_seeds: seeds run in one compiled program (side by side by vmap,
      or one after another: ``seed_execution``).
    seed: first seed; the run covers seed, seed + 1, ..., seed + num_seeds - 1.
    eval_every: rounds between evaluations of the master.
    eval_batch_size: batch size of the evaluation passes.
    train_eval_size: size of the fixed training subset whose loss is the
      paper's "training loss" (Figure 5); 0 means the whole training set.
    execution: how the worker axis runs: ``"vmap"``, ``"map"`` (sequential
      ``lax.map`` inside jit), ``"sharded"`` (over a device mesh) or
      ``"auto"`` (map on CPU, vmap on accelerators).
    conv_impl: convolution formulation of the CNNs (``models.CONV_IMPLS``:
      ``"xla"``, ``"im2col"``, ``"im2col_lax"``, ``"im2col_cf"``,
      ``"winograd"``) or ``"auto"`` (im2col on CPU where it is faster, xla
      elsewhere). Two are faster on CPU but round differently, so
      ``"auto"`` never picks them: ``"im2col_cf"`` (channel-first
      activations), with
      ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot``,
      for small_cnn; ``"winograd"`` (3 × 3 convolutions by Winograd's
      F(4 × 4, 3 × 3), a quarter of the multiplications) for cnn.
    seed_execution: how a run's seeds are compiled: ``"vmap"``, all in one
      program vmapped over a leading seed axis (a single seed as a stack
      of one: the program of earlier versions, whose runs it reproduces bit
      for bit); ``"map"``, each seed's program without that axis, several
      seeds one after another in a ``lax.map`` (faster on CPU for the CNNs:
      the seed axis makes XLA's CPU backend lay out their matmuls with
      transposing copies, and under ``execution="map"`` each seed can skip
      the steps its crashed workers do not compute; the README's
      Performance section. The matmuls round differently, so runs are not
      bit-identical to ``"vmap"``'s; a seed's run is the same under
      ``"map"`` alone or among others); ``"auto"``: ``"map"`` for a single
      seed under ``im2col_cf`` or ``winograd`` (which round differently
      anyway), else
      ``"vmap"``. No effect on the Ray runtime, which runs each worker
      apart. Called ``single_seed`` (``"plain"`` for ``"map"``) before;
      config files with that name still load.
  """

  # What is trained.
  method: str = "DEAHES-O"
  model: str = "small_cnn"
  # By how many workers, how often they meet the master, for how long.
  num_workers: int = 4
  comm_period: int = 1
  rounds: int = 200
  batch_size: int = 64
  micro_batches: int = 1
  # The local step.
  lr: float | None = None
  momentum: float = 0.5
  # The elastic exchange and the data each worker sees.
  alpha: float = 0.1
  overlap_ratio: float | None = None
  label_skew: float = 0.0
  # AdaHessian and its Hutchinson probes.
  weight_decay: float = 0.0
  hessian_samples: int = 1
  hessian_power: float = 1.0
  # Failures.
  failure_rate: float = 1.0 / 3.0
  failure_model: str = "bernoulli"
  failure_mode: str = "disconnect"
  mean_outage: float = 3.0
  straggler_rate: float = 0.0
  straggler_slowdown: float = 0.5
  # The exchange's order and the weighting policies (§5).
  exchange_order: str = "sequential"
  dw_history: int = weighting.DEFAULT_P
  dw_coeffs: tuple[float, ...] = weighting.DEFAULT_COEFFS
  dw_threshold: float = weighting.DEFAULT_THRESHOLD
  dw_master_estimate: str = "exact"
  oracle_variant: str = "reset"
  # Seeds: run side by side, as one program.
  num_seeds: int = 1
  seed: int = 0
  # Evaluation and execution.
  eval_every: int = 10
  eval_batch_size: int = 1000
  train_eval_size: int = 10000
  execution: str = "auto"
  conv_impl: str = "auto"
  seed_execution: str = "auto"

  def __post_init__(self):
    object.__setattr__(self, "dw_coeffs",
                       tuple(float(c) for c in self.dw_coeffs))
    self.validate()

  def validate(self) -> None:
    """Checks every field; raises ``ConfigError`` naming the first bad one."""
    for name, allowed in choices().items():
      _check(getattr(self, name) in allowed, name, f"one of {allowed}",
             getattr(self, name))
    for name, low in (("num_workers", 1), ("comm_period", 1), ("rounds", 0),
                      ("batch_size", 1), ("hessian_samples", 1),
                      ("num_seeds", 1), ("seed", 0),
                      ("eval_every", 1), ("eval_batch_size", 1),
                      ("train_eval_size", 0)):
      value = getattr(self, name)
      if name == "seed":  # The seed has its own bound below.
        _check(_is_int(value) and value >= low, name, f"an integer >= {low}",
               value)
      else:
        # Counts become int32 values inside the compiled program; a larger
        # one overflows there (a traceback from JAX, or a schedule too long
        # to build) instead of being refused here.
        _ask(lambda v=value, n=name, lo=low: checks.count(v, n, lo), {})
    _ask(lambda: microbatch.check_micro_batches(self.micro_batches,
                                                self.batch_size), {})
    # Seeds become uint32 PRNG seeds: a larger one would alias a smaller one.
    _check(self.seed + self.num_seeds - 1 < 2**32, "seed",
           f"an integer with seed + num_seeds - 1 < 2**32 (num_seeds"
           f" {self.num_seeds})", self.seed)
    if self.lr is not None:
      _check(_is_real(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
    _check(_is_real(self.momentum) and 0 <= self.momentum < 1, "momentum",
           "in [0, 1)", self.momentum)
    if self.overlap_ratio is not None:
      _check(_is_real(self.overlap_ratio) and 0 <= self.overlap_ratio < 1,
             "overlap_ratio", "in [0, 1)", self.overlap_ratio)
    _check(_is_real(self.label_skew) and 0 <= self.label_skew <= 1,
           "label_skew", "in [0, 1]", self.label_skew)
    # The rest is checked where it is consumed: by the constructors of the
    # policies, the failure model and AdaHessian, asked here so that a bad
    # value fails at once, named after its field.
    _ask(lambda: weighting.dynamic(
        self.alpha, p=self.dw_history, coeffs=self.dw_coeffs,
        threshold=self.dw_threshold,
        master_estimate=self.dw_master_estimate), _POLICY_FIELDS)
    _ask(lambda: weighting.oracle(self.alpha, variant=self.oracle_variant,
                                  threshold=self.dw_threshold),
         _POLICY_FIELDS)
    if self.method_spec.weighting == "dynamic":
      # The peer-mean estimate's k >= 2 rule, as the policy's init asks it.
      _ask(lambda: weighting.check_num_workers(self.dw_master_estimate,
                                               self.num_workers),
           _POLICY_FIELDS)
    _ask(lambda: failures.from_settings(
        failure_model=self.failure_model, failure_rate=self.failure_rate,
        failure_mode=self.failure_mode, mean_outage=self.mean_outage,
        straggler_rate=self.straggler_rate,
        straggler_slowdown=self.straggler_slowdown), {})
    _ask(lambda: adahessian_transform(
        1.0, weight_decay=self.weight_decay,
        hessian_power=self.hessian_power), {})

  @property
  def method_spec(self) -> methods_lib.Method:
    return methods_lib.get_method(self.method)

  def resolve(self) -> "SimConfig":
    """Returns a copy with every ``None`` default filled in from the method."""
    method = self.method_spec
    lr = DEFAULT_LR if self.lr is None else self.lr
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
    d = current_fields(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"unknown config fields {unknown}", unknown[0])
    if "dw_coeffs" in d:
      d["dw_coeffs"] = tuple(d["dw_coeffs"])
    return cls(**d)
