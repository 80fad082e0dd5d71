"""Tests for resnorm.recurrence against closed forms and exact integer arithmetic."""

import decimal
import math
import re
from fractions import Fraction

import numpy as np
import pytest

from resnorm import recurrence

SQRT5 = math.sqrt(5)


def iterate_fibonacci(n_max):
  """F_0, …, F_{n_max} by the defining recurrence, in Python integers."""
  values = [0, 1]
  while len(values) <= n_max:
    values.append(values[-1] + values[-2])
  return values[: n_max + 1]


def fibonacci_mod(n, modulus):
  """F_n mod m from [[1, 1], [1, 0]]ⁿ by square-and-multiply over the integers mod m."""

  def mul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(2)) % modulus for j in range(2)] for i in range(2)]

  result, base = [[1, 0], [0, 1]], [[1, 1], [1, 0]]
  while n:
    if n & 1:
      result = mul(result, base)
    base, n = mul(base, base), n >> 1
  return result[0][1]


def test_golden_ratio_eigenvalues_closed_form():
  assert abs(recurrence.PHI - (1 + SQRT5) / 2) <= 1e-15
  assert abs(recurrence.PHI**2 - recurrence.PHI - 1) <= 1e-14
  assert abs(recurrence.PHI * recurrence.PSI + 1) <= 1e-14
  eig = recurrence.eigenvalues(recurrence.fibonacci_matrix())
  np.testing.assert_allclose(eig.real, [1.618033988749895, -0.6180339887498949], rtol=0, atol=1e-14)
  np.testing.assert_allclose(eig.real, [recurrence.PHI, recurrence.PSI], rtol=0, atol=1e-14)
  assert np.all(eig.imag == 0)
  assert recurrence.spectral_radius(recurrence.fibonacci_matrix()) == pytest.approx(recurrence.PHI, abs=1e-14)


def test_tribonacci_constant():
  root = math.sqrt(33)
  constant = (1 + (19 + 3 * root) ** (1 / 3) + (19 - 3 * root) ** (1 / 3)) / 3  # real root of z³ − z² − z − 1
  eig = recurrence.eigenvalues(recurrence.companion(recurrence.TRIBONACCI))
  assert eig[0].real == pytest.approx(constant, abs=1e-14)
  assert abs(eig[0].imag) <= 1e-15
  np.testing.assert_allclose(np.abs(eig[1:]), 1 / math.sqrt(constant), rtol=1e-13)  # |λ₂|² λ₁ = 1


def test_companion_advances_the_recurrence():
  rng = np.random.default_rng(0)
  coefficients = rng.standard_normal(4)
  sequence = list(rng.standard_normal(4))  # x_0 … x_3
  for _ in range(10):
    sequence.append(sum(a * sequence[-1 - i] for i, a in enumerate(coefficients)))
  matrix = recurrence.companion(coefficients)
  state = np.array(sequence[3::-1])  # (x_3, x_2, x_1, x_0)
  for n in range(4, len(sequence)):
    state = matrix @ state
    assert state[0] == pytest.approx(sequence[n], rel=1e-12)
  # Characteristic polynomial z⁴ − a_1 z³ − … − a_4.
  np.testing.assert_allclose(np.poly(matrix), np.concatenate([[1.0], -coefficients]), atol=1e-12)


def test_fibonacci_exact_up_to_2000():
  expected = iterate_fibonacci(2000)
  assert [recurrence.fibonacci(n) for n in range(2001)] == expected
  assert recurrence.fibonacci_pair(2000) == (expected[2000], expected[1999] + expected[2000])


def test_fibonacci_10000():
  value = recurrence.fibonacci(10000)
  assert len(str(value)) == 2090
  assert len(str(value)) == math.floor(10000 * math.log10(recurrence.PHI) - math.log10(SQRT5)) + 1
  assert value % 1_000_000_007 == fibonacci_mod(10000, 1_000_000_007)
  with decimal.localcontext() as context:  # Binet with 2200 significant digits rounds to F_n exactly
    context.prec = 2200
    root5 = decimal.Decimal(5).sqrt()
    phi = (1 + root5) / 2
    assert int((phi**10000 / root5).to_integral_value()) == value


def test_binet_error_grows_linearly_with_n():
  # Binet's float error is n times the relative rounding error δ of fl(φ) (the ψⁿ term is negligible).
  with decimal.localcontext() as context:
    context.prec = 50
    phi = (1 + decimal.Decimal(5).sqrt()) / 2
    delta = abs(
      float(
        (decimal.Decimal(Fraction(recurrence.PHI).numerator) / decimal.Decimal(Fraction(recurrence.PHI).denominator))
        / phi
        - 1
      )
    )
  for n in (500, 1000, 1400):
    assert recurrence.binet_relative_error(n) == pytest.approx(n * delta, rel=0.05)
  for n in range(1, 71):
    assert recurrence.binet_relative_error(n) <= (n + 3) * 2.3e-16
    assert round(recurrence.binet(n)) == recurrence.fibonacci(n)
  assert recurrence.binet(1500) == math.inf


def test_growth_rate_approaches_log_phi():
  matrix = recurrence.fibonacci_matrix()
  assert abs(recurrence.growth_rate(matrix, steps=64) - math.log(recurrence.PHI)) <= 1e-6
  assert abs(recurrence.growth_rate(matrix, x0=[1.0, -2.0], steps=32) - math.log(recurrence.PHI)) <= 1e-6
  assert abs(recurrence.growth_rate(matrix, steps=4) - math.log(recurrence.PHI)) > 1e-6  # still transient


def test_log_orbit_norms_beyond_float_range():
  logs = recurrence.log_orbit_norms(recurrence.fibonacci_matrix(), [1.0, 0.0], 3000)
  fib = iterate_fibonacci(3001)
  for n in (0, 1, 10, 100, 1500, 3000):  # Aⁿ e_1 = (F_{n+1}, F_n)
    exact = 0.5 * math.log(fib[n + 1] ** 2 + fib[n] ** 2)
    assert logs[n] == pytest.approx(exact, rel=1e-12, abs=1e-14)


def test_stability_classification():
  fib = recurrence.stability(recurrence.fibonacci_matrix(), steps=64)
  assert (fib.by_radius, fib.by_products) == ("unstable", "exploding and vanishing")
  np.testing.assert_allclose(fib.rates, [math.log(recurrence.PHI), -math.log(recurrence.PHI)], rtol=1e-12)
  rotation = recurrence.stability([[0.0, -1.0], [1.0, 0.0]])
  assert (rotation.by_radius, rotation.by_products) == ("marginal", "norm-preserving")
  contraction = recurrence.stability(np.diag([0.5, 0.8]), steps=8)
  assert (contraction.by_radius, contraction.by_products) == ("stable", "vanishing")
  np.testing.assert_allclose(contraction.rates, [math.log(0.8), math.log(0.5)], rtol=1e-12)
  # Non-normal: ρ = 0.9 < 1, yet ‖A¹⁰‖ = 10·10·0.9⁹ + … ≫ 1 — the two classifications disagree.
  transient = recurrence.stability([[0.9, 10.0], [0.0, 0.9]], steps=10)
  assert transient.by_radius == "stable" and transient.by_products.startswith("exploding")
  assert transient.rates[0] == pytest.approx(
    math.log(np.linalg.norm(np.linalg.matrix_power([[0.9, 10.0], [0.0, 0.9]], 10), 2)) / 10, rel=1e-12
  )
  residual = recurrence.stability(recurrence.residual_step(recurrence.fibonacci_matrix(), 1000), steps=1000)
  assert residual.by_products == "norm-preserving"
  singular = recurrence.stability([[1.0, 0.0], [0.0, 0.0]], steps=4)
  assert singular.rates[1] == -math.inf and singular.by_products == "vanishing"


def test_residual_product_converges_at_order_one():
  matrix = recurrence.fibonacci_matrix()
  depths = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
  result = recurrence.residual_convergence(matrix, depths)
  # A − I is symmetric with eigenvalues φ − 1 and ψ − 1: closed forms for every singular value.
  np.testing.assert_allclose(
    np.linalg.svd(recurrence.residual_limit(matrix), compute_uv=False),
    [math.exp(recurrence.PHI - 1), math.exp(recurrence.PSI - 1)],
    rtol=1e-13,
  )
  L = np.array(depths, dtype=float)
  np.testing.assert_allclose(
    result.step_singular_values,
    np.stack([1 + (recurrence.PHI - 1) / L, np.abs(1 + (recurrence.PSI - 1) / L)], axis=1),
    rtol=1e-13,
  )
  np.testing.assert_allclose(
    result.product_singular_values,
    np.stack([(1 + (recurrence.PHI - 1) / L) ** L, np.abs(1 + (recurrence.PSI - 1) / L) ** L], axis=1),
    rtol=1e-11,
  )
  assert result.order == pytest.approx(1.0, abs=0.01)
  local_orders = -np.diff(np.log(result.error)) / np.diff(np.log(L))
  np.testing.assert_allclose(local_orders[-3:], 1.0, atol=2e-3)
  constant = recurrence.residual_error_constant(matrix)
  assert L[-1] * result.error[-1] == pytest.approx(constant, rel=2e-3)
  assert np.all(result.product_singular_values[:, 0] < math.exp(recurrence.PHI - 1))  # bounded for every L
  last_row = recurrence.format_residual_table(result).splitlines()[-2].split()
  assert last_row[0] == "4096" and float(last_row[3]) == pytest.approx(local_orders[-1], abs=1e-4)


def test_fibonacci_table_rows():
  rows = recurrence.fibonacci_table([1, 10, 40, 70, 500])
  for row in rows:
    n = row["n"]
    assert row["fibonacci"] == recurrence.fibonacci(n)
    assert row["ratio"] == recurrence.fibonacci(n + 1) / recurrence.fibonacci(n)
    assert row["phi_power"] == pytest.approx(recurrence.PHI**n / SQRT5, rel=1e-15)
  assert round(rows[3]["phi_power"]) == recurrence.fibonacci(70)
  assert abs(rows[-1]["rate"] - math.log(recurrence.PHI)) <= 1e-15
  assert abs(rows[-1]["ratio"] - recurrence.PHI) <= 4e-16
  text = recurrence.format_fibonacci_table(rows)
  assert "12586269025" not in text and "190392490709135" in text  # F_50 not asked for; F_70 printed


@pytest.mark.parametrize(
  "call, field",
  [
    (lambda: recurrence.companion([]), "coefficients"),
    (lambda: recurrence.companion([[1, 1]]), "coefficients"),
    (lambda: recurrence.companion([1, np.nan]), "coefficients"),
    (lambda: recurrence.eigenvalues(np.ones((2, 3))), "matrix"),
    (lambda: recurrence.spectral_radius([[1.0, np.inf], [0.0, 1.0]]), "matrix"),
    (lambda: recurrence.stability(np.ones(3)), "matrix"),
    (lambda: recurrence.fibonacci(-1), "n"),
    (lambda: recurrence.fibonacci(2.0), "n"),
    (lambda: recurrence.growth_rate(recurrence.fibonacci_matrix(), x0=[0.0, 0.0]), "x0"),
    (lambda: recurrence.growth_rate(recurrence.fibonacci_matrix(), steps=1), "steps"),
    (lambda: recurrence.residual_step(recurrence.fibonacci_matrix(), 0), "depth"),
    (lambda: recurrence.residual_convergence(recurrence.fibonacci_matrix(), [8]), "depths"),
    (lambda: recurrence.residual_limit(np.ones((2, 3))), "matrix"),
  ],
)
def test_bad_input_names_the_argument(call, field):
  with pytest.raises(ValueError, match=rf"(?s)^{re.escape(field)} = .*: expected "):
    call()
