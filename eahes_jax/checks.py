"""Argument checks of the constructors, with a typed error that names the
argument.

The constructors (``weighting.dynamic``, ``failures.bursty``,
``adahessian.adahessian``, ...) are the only gate for their hyperparameters,
as in optax; ``config.SimConfig`` asks them rather than repeating their rules,
and turns an ``ArgumentError``'s argument into the config field it came from.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Collection


class ArgumentError(ValueError):
  """An argument outside its allowed range.

  Attributes:
    argument: the argument's name, as the constructor spells it.
    requirement: what it must be ("in (0, 1]", "an integer >= 1").
    value: the value given.
  """

  def __init__(self, argument: str, requirement: str, value: Any):
    super().__init__(f"{argument} must be {requirement}, got {value!r}")
    self.argument = argument
    self.requirement = requirement
    self.value = value


def is_real(x: Any) -> bool:
  """A finite real number (not a bool)."""
  return (isinstance(x, numbers.Real) and not isinstance(x, bool)
          and math.isfinite(x))


def require(condition: bool, argument: str, requirement: str,
            value: Any) -> None:
  """Raises ``ArgumentError`` unless ``condition`` holds."""
  if not condition:
    raise ArgumentError(argument, requirement, value)


def number_in(value: Any, argument: str, low: float, high: float, *,
              low_closed: bool = True, high_closed: bool = True) -> float:
  """``value`` as a float, checked to be finite and inside the interval.

  Returns:
    ``float(value)``.

  Raises:
    ArgumentError: ``value`` is not a finite number in the interval.
  """
  interval = (("[" if low_closed else "(") + f"{low:g}, {high:g}"
              + ("]" if high_closed else ")"))
  above = is_real(value) and (value >= low if low_closed else value > low)
  below = is_real(value) and (value <= high if high_closed else value < high)
  require(above and below, argument, f"in {interval}", value)
  return float(value)


INT32_MAX = 2**31 - 1


def integer_at_least(value: Any, argument: str, low: int) -> int:
  """``value`` as an int, checked to be an integer (not a bool) >= ``low``."""
  require(isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= low, argument, f"an integer >= {low}", value)
  return int(value)


def count(value: Any, argument: str, low: int) -> int:
  """``value`` as an int in [low, 2**31 - 1]: a count that becomes an int32
  inside a compiled program, where a larger one would overflow."""
  require(isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and low <= value <= INT32_MAX, argument,
          f"an integer in [{low}, 2**31 - 1]", value)
  return int(value)


def one_of(value: Any, argument: str, allowed: Collection[Any]) -> Any:
  """``value``, checked to be one of ``allowed``."""
  require(value in tuple(allowed), argument, f"one of {tuple(allowed)}",
          value)
  return value
