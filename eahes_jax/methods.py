"""The paper's six methods as data (algorithms.md §7).

A method is a small frozen record, not a class hierarchy: which local
optimizer the workers run, whether they share an overlap set of the data, and
which elastic weighting policy meets them with the master. New methods are
added by registering another record under its own name.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

OPTIMIZERS = ("sgd", "nesterov", "adahessian", "adam")
WEIGHTINGS = ("fixed", "oracle", "dynamic")


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of algorithms.md §7.

  Attributes:
    name: the method's name as the paper writes it (``"DEAHES-O"``).
    optimizer: the workers' local optimizer, one of ``OPTIMIZERS``:
      ``"sgd"`` (plain SGD), ``"nesterov"`` (SGD with Nesterov momentum, as
      EAMSGD), ``"adahessian"`` (AdaHessian with Hutchinson's diagonal) or
      ``"adam"`` (AdaHessian's chain with Adam's squared gradient in place of
      the squared Hessian diagonal: adaptivity without second-order
      information).
    overlap: whether workers share a random overlap set of the training data
      (paper §V-A). Without it the shards are disjoint (r = 0).
    weighting: the elastic weighting policy, one of ``WEIGHTINGS``: ``"fixed"``
      (EASGD's constant α), ``"oracle"`` (EAHES-OM: knows when a worker
      rejoins) or ``"dynamic"`` (DEAHES, paper §V-B).
  """

  name: str
  optimizer: str
  overlap: bool
  weighting: str

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(
          f"Method {self.name!r}: optimizer must be one of {OPTIMIZERS}, got"
          f" {self.optimizer!r}")
    if self.weighting not in WEIGHTINGS:
      raise ValueError(
          f"Method {self.name!r}: weighting must be one of {WEIGHTINGS}, got"
          f" {self.weighting!r}")

  @property
  def second_order(self) -> bool:
    """Whether the local step needs Hutchinson's Hessian diagonal."""
    return self.optimizer == "adahessian"


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


for _m in (
    Method("EASGD", optimizer="sgd", overlap=False, weighting="fixed"),
    Method("EAMSGD", optimizer="nesterov", overlap=False, weighting="fixed"),
    Method("EAHES", optimizer="adahessian", overlap=False, weighting="fixed"),
    Method("EAHES-O", optimizer="adahessian", overlap=True, weighting="fixed"),
    Method("EAHES-OM", optimizer="adahessian", overlap=True,
           weighting="oracle"),
    Method("DEAHES-O", optimizer="adahessian", overlap=True,
           weighting="dynamic"),
    # Beyond the paper: elastic Adam on the overlapping shards, the control
    # that tells second-order information from adaptivity (issue 11).
    Method("EAADAM-O", optimizer="adam", overlap=True, weighting="fixed"),
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
