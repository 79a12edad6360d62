"""The paper's six methods as data (algorithms.md §7).

A method is a small frozen record, not a class hierarchy: the factory of the
workers' local optimizer, whether they share an overlap set of the data, and
the factory of the elastic weighting policy that meets them with the master.
Both factories take the run's ``SimConfig`` (for its hyperparameters); the
simulator calls them and never dispatches on a name. New methods are added by
registering another record under its own name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import optax

# The package exports the transform under its module's name, so import the
# functions rather than the module.
from eahes_jax.adahessian import adahessian as adahessian_transform
from eahes_jax.adahessian import elastic_adam
from eahes_jax import weighting

OPTIMIZERS = ("sgd", "nesterov", "adahessian", "adam")
WEIGHTINGS = ("fixed", "oracle", "dynamic")

# The paper's local learning rate, for every method (algorithms.md §7).
DEFAULT_LR = 0.01

# A factory from the run's config (a ``config.SimConfig``; typed loosely here
# because the config module builds on this one).
OptimizerFactory = Callable[[Any], optax.GradientTransformationExtraArgs]
PolicyFactory = Callable[[Any], weighting.WeightingPolicy]


def _lr(config: Any) -> float:
  return DEFAULT_LR if config.lr is None else config.lr


def sgd(config: Any) -> optax.GradientTransformationExtraArgs:
  """Plain SGD at the config's learning rate (EASGD)."""
  return optax.sgd(_lr(config))


def nesterov(config: Any) -> optax.GradientTransformationExtraArgs:
  """SGD with Nesterov momentum δ = ``config.momentum`` (EAMSGD)."""
  return optax.sgd(_lr(config), momentum=config.momentum, nesterov=True)


def adahessian_optimizer(config: Any) -> optax.GradientTransformationExtraArgs:
  """AdaHessian with Hutchinson's diagonal (the EAHES family)."""
  return adahessian_transform(_lr(config), weight_decay=config.weight_decay,
                               hessian_power=config.hessian_power)


def adam_optimizer(config: Any) -> optax.GradientTransformationExtraArgs:
  """AdaHessian's chain with Adam's squared gradient (no second order)."""
  return elastic_adam(_lr(config),
                                 weight_decay=config.weight_decay)


def fixed_policy(config: Any) -> weighting.WeightingPolicy:
  """EASGD's constant α (eqs. 12-13)."""
  return weighting.fixed(config.alpha)


def oracle_policy(config: Any) -> weighting.WeightingPolicy:
  """EAHES-OM's oracle, in the config's ``oracle_variant``."""
  return weighting.oracle(config.alpha, variant=config.oracle_variant,
                          threshold=config.dw_threshold)


def dynamic_policy(config: Any) -> weighting.WeightingPolicy:
  """DEAHES's dynamic weighting (paper §V-B) with the config's p, c, k."""
  return weighting.dynamic(
      config.alpha, p=config.dw_history, coeffs=config.dw_coeffs,
      threshold=config.dw_threshold,
      master_estimate=config.dw_master_estimate)


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of algorithms.md §7.

  Attributes:
    name: the method's name as the paper writes it (``"DEAHES-O"``).
    optimizer: the name of the workers' local optimizer, one of
      ``OPTIMIZERS`` (a label for tables; ``make_optimizer`` builds it):
      ``"sgd"`` (plain SGD), ``"nesterov"`` (SGD with Nesterov momentum, as
      EAMSGD), ``"adahessian"`` (AdaHessian with Hutchinson's diagonal) or
      ``"adam"`` (AdaHessian's chain with Adam's squared gradient in place of
      the squared Hessian diagonal: adaptivity without second-order
      information).
    overlap: whether workers share a random overlap set of the training data
      (paper §V-A). Without it the shards are disjoint (r = 0).
    weighting: the name of the elastic weighting policy, one of
      ``WEIGHTINGS``: ``"fixed"`` (EASGD's constant α), ``"oracle"``
      (EAHES-OM: knows when a worker rejoins) or ``"dynamic"`` (DEAHES, paper
      §V-B).
    make_optimizer: builds the local optimizer from the run's config.
    make_policy: builds the weighting policy from the run's config.
    second_order: whether the local step needs Hutchinson's Hessian diagonal
      (passed to the optimizer as ``hessian_diag``).
  """

  name: str
  optimizer: str
  overlap: bool
  weighting: str
  make_optimizer: OptimizerFactory
  make_policy: PolicyFactory
  second_order: bool = False

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(
          f"Method {self.name!r}: optimizer must be one of {OPTIMIZERS}, got"
          f" {self.optimizer!r}")
    if self.weighting not in WEIGHTINGS:
      raise ValueError(
          f"Method {self.name!r}: weighting must be one of {WEIGHTINGS}, got"
          f" {self.weighting!r}")


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
  """Adds ``method`` to the registry under ``method.name``.

  Args:
    method: the method to add; its name must be new.

  Returns:
    The method, so the call can be used as an expression.
  """
  if method.name in _REGISTRY:
    raise ValueError(f"a method named {method.name!r} is already registered")
  _REGISTRY[method.name] = method
  return method


_SGD = dict(optimizer="sgd", make_optimizer=sgd)
_NESTEROV = dict(optimizer="nesterov", make_optimizer=nesterov)
_ADAHESSIAN = dict(optimizer="adahessian", make_optimizer=adahessian_optimizer,
                   second_order=True)
_ADAM = dict(optimizer="adam", make_optimizer=adam_optimizer)
_FIXED = dict(weighting="fixed", make_policy=fixed_policy)
_ORACLE = dict(weighting="oracle", make_policy=oracle_policy)
_DYNAMIC = dict(weighting="dynamic", make_policy=dynamic_policy)

for _m in (
    Method("EASGD", overlap=False, **_SGD, **_FIXED),
    Method("EAMSGD", overlap=False, **_NESTEROV, **_FIXED),
    Method("EAHES", overlap=False, **_ADAHESSIAN, **_FIXED),
    Method("EAHES-O", overlap=True, **_ADAHESSIAN, **_FIXED),
    Method("EAHES-OM", overlap=True, **_ADAHESSIAN, **_ORACLE),
    Method("DEAHES-O", overlap=True, **_ADAHESSIAN, **_DYNAMIC),
    # Beyond the paper: elastic Adam on the overlapping shards, the control
    # that tells second-order information from adaptivity (issue 11).
    Method("EAADAM-O", overlap=True, **_ADAM, **_FIXED),
):
  register_method(_m)

PAPER_METHODS = ("EASGD", "EAMSGD", "EAHES", "EAHES-O", "EAHES-OM",
                 "DEAHES-O")


def methods() -> Mapping[str, Method]:
  """All registered methods by name (the paper's six first)."""
  return dict(_REGISTRY)


def get_method(name: str) -> Method:
  """Looks a method up by name.

  Args:
    name: a registered method name, e.g. ``"EAHES-O"``.

  Returns:
    The method's record.

  Raises:
    ValueError: naming the registered methods when ``name`` is unknown.
  """
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"method must be one of {sorted(_REGISTRY)}, got {name!r}") from None


def default_overlap_ratio(method: Method, num_workers: int) -> float:
  """The overlap ratio r a method uses when none is given.

  The paper uses r = 25 % with 4 workers and 12.5 % with 8 (§VII), that is
  r = 1/k; we take that rule for every k (and r = 0 for a single worker, who
  sees all the data anyway). Methods without overlap use r = 0.

  Args:
    method: the method.
    num_workers: k.

  Returns:
    The ratio r in [0, 1).
  """
  if not method.overlap or num_workers <= 1:
    return 0.0
  return 1.0 / num_workers
