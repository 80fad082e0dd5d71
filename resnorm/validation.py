"""Config and argument checks that fail before anything compiles.

Every error names the field, the value it got and what is allowed, so that a typo in
``--config.model.width=-3`` reads as ``config.model.width = -3: expected a positive
integer``.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection
from typing import Any


class ConfigError(ValueError):
  """A config field or argument holds a value that is not allowed."""

  def __init__(self, field: str, value: Any, allowed: str):
    self.field, self.value, self.allowed = field, value, allowed
    super().__init__(f"{field} = {value!r}: expected {allowed}")


def _is_int(value: Any) -> bool:
  """Python and NumPy integers; not bools."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(field: str, value: Any) -> int:
  if not _is_int(value) or value <= 0:
    raise ConfigError(field, value, "a positive integer")
  return int(value)


def non_negative_int(field: str, value: Any) -> int:
  if not _is_int(value) or value < 0:
    raise ConfigError(field, value, "a non-negative integer")
  return int(value)


def positive_float(field: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
    raise ConfigError(field, value, "a positive number")
  return float(value)


def one_of(field: str, value: Any, allowed: Collection[Any]) -> Any:
  if value not in allowed:
    raise ConfigError(field, value, f"one of {sorted(allowed)}")
  return value


def positive_ints(field: str, values: Any) -> tuple[int, ...]:
  """A non-empty sequence of positive integers (a single integer counts as one; NumPy arrays too)."""
  if _is_int(values):
    values = (values,)
  if hasattr(values, "tolist"):
    values = values.tolist()
  if not isinstance(values, (tuple, list)) or not values or not all(_is_int(v) and v > 0 for v in values):
    raise ConfigError(field, values, "a non-empty list of positive integers")
  return tuple(int(v) for v in values)
