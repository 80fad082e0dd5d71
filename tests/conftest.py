"""Shared test fixtures (helpers that are not fixtures live in helpers.py)."""

import jax
import pytest


@pytest.fixture
def x64():
  """float64 inside one test only (never globally): ``def test_x(x64): ...``."""
  with jax.enable_x64(True):
    yield
