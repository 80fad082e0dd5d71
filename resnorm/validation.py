"""Argument checks that fail before anything compiles, raising :class:`ArgumentError`.

Every error names the argument, the value it got and what is allowed, as optax and Flax do:
``width = -3: expected a positive integer``. It is a ``ValueError`` that also carries the three
as attributes, so the config layer puts the config path in front of ``name`` without reading the
message (:func:`resnorm.config_validation.fields`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


class ArgumentError(ValueError):
  """``name = value`` is not allowed; ``allowed`` says what is. The message is
  ``"{name} = {value!r}: expected {allowed}"``."""

  def __init__(self, name: str, value: Any, allowed: str):
    self.name, self.value, self.allowed = name, value, allowed
    super().__init__(f"{name} = {value!r}: expected {allowed}")

  def __reduce__(self):  # pickles (across processes) with its attributes
    return type(self), (self.name, self.value, self.allowed)


def invalid(name: str, value: Any, allowed: str) -> ArgumentError:
  """The error for ``name = value`` (raise it)."""
  return ArgumentError(name, value, allowed)


def _is_int(value: Any) -> bool:
  """Python and NumPy integers; not bools."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
  if not _is_int(value) or value <= 0:
    raise invalid(name, value, "a positive integer")
  return int(value)


def non_negative_int(name: str, value: Any) -> int:
  if not _is_int(value) or value < 0:
    raise invalid(name, value, "a non-negative integer")
  return int(value)


def positive_float(name: str, value: Any) -> float:
  """A finite number > 0 (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
    raise invalid(name, value, "a positive number")
  return float(value)


def level(name: str, value: Any) -> float:
  """A coverage or confidence level: a number strictly between 0 and 1."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
    raise invalid(name, value, "a number strictly between 0 and 1")
  return float(value)


def boolean(name: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise invalid(name, value, "True or False")
  return value


def one_of(name: str, value: Any, allowed: Collection[Any]) -> Any:
  if value not in allowed:
    raise invalid(name, value, f"one of {sorted(allowed)}")
  return value


def positive_ints(name: str, values: Any) -> tuple[int, ...]:
  """A non-empty sequence of positive integers (a single integer counts as one; NumPy arrays too)."""
  if _is_int(values):
    values = (values,)
  if hasattr(values, "tolist"):
    values = values.tolist()
  if not isinstance(values, (tuple, list)) or not values or not all(_is_int(v) and v > 0 for v in values):
    raise invalid(name, values, "a non-empty list of positive integers")
  return tuple(int(v) for v in values)


def spatial_shape(name: str, value: Any, kernel_size: tuple[int, int] = (1, 1)) -> tuple[int, int]:
  """A spatial shape (H, W) of integers covering a kernel: H ≥ kh ≥ 1 and W ≥ kw ≥ 1 (NumPy arrays too)."""
  if hasattr(value, "tolist"):
    value = value.tolist()
  low = (max(kernel_size[0], 1), max(kernel_size[1], 1))
  if (
    not isinstance(value, (tuple, list))
    or len(value) != 2
    or not all(_is_int(v) and v >= m for v, m in zip(value, low))
  ):
    covers = "" if low == (1, 1) else " (the kernel's size)"
    raise invalid(name, value, f"a pair (H, W) of integers with H >= {low[0]} and W >= {low[1]}{covers}")
  return int(value[0]), int(value[1])
