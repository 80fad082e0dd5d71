r"""Linear recurrences in matrix form: Fibonacci as the model of unstable growth, and its residual twin.

A k-step recurrence x_n = a_1 x_{n−1} + … + a_k x_{n−k} advances the state
s_n = (x_n, x_{n−1}, …, x_{n−k+1}) by s_n = C s_{n−1} with the companion matrix

    C = [[a_1, a_2, …, a_{k−1}, a_k],
         [1,   0,   …, 0,       0  ],
         [0,   1,   …, 0,       0  ],
          …
         [0,   0,   …, 1,       0  ]],

whose eigenvalues are the roots of z^k − a_1 z^{k−1} − … − a_k. Fibonacci is a = (1, 1):
A = [[1, 1], [1, 0]], eigenvalues φ = (1+√5)/2 and ψ = (1−√5)/2, Aⁿ = [[F_{n+1}, F_n], [F_n, F_{n−1}]],
and ‖Aⁿx‖ grows like φⁿ for every x off ψ's eigenvector: at rate log φ per step.

The residual counterpart of A over L steps is A_L = I + (A − I)/L: each step adds a 1/L-scaled branch
to the identity, as a residual block with branch scale 1/L does. With M = A − I,

    A_L^L = exp(L log(I + M/L)) = exp(M − M²/(2L) + O(1/L²)) = expm(M) − expm(M) M²/(2L) + O(1/L²),

so the L-fold product stays bounded as L grows, its error from the limit expm(M) is of order 1/L
(with constant ‖expm(M) M²‖/2), and the singular values of one step are 1 + O(1/L): the seed's
norm-preservation argument in two dimensions.

Everything here runs on the host in float64 NumPy, and in Python integers for exact Fibonacci
numbers: the matrices are k×k with k small, and the errors measured reach 1e-15, far below
float32's resolution.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import scipy.linalg

from resnorm import validation

FIBONACCI = (1, 1)
TRIBONACCI = (1, 1, 1)
SQRT5 = math.sqrt(5.0)
PHI = (1.0 + SQRT5) / 2.0  # the golden ratio, the dominant eigenvalue of [[1, 1], [1, 0]]
PSI = (1.0 - SQRT5) / 2.0  # its conjugate, 1 − φ = −1/φ
LOG_PHI = math.log(PHI)


def _square_matrix(field: str, matrix) -> np.ndarray:
  """``matrix`` as a float64 array, or a ValueError unless it is a finite, non-empty square matrix."""
  array = np.asarray(matrix, dtype=np.float64)
  if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
    raise validation.invalid(field, matrix, f"a non-empty square matrix, not shape {array.shape}")
  if not np.all(np.isfinite(array)):
    raise validation.invalid(field, matrix, "a matrix with finite entries")
  return array


def companion(coefficients) -> np.ndarray:
  """The k×k companion matrix of x_n = a_1 x_{n−1} + … + a_k x_{n−k}, ``coefficients`` = (a_1, …, a_k)."""
  a = np.asarray(coefficients, dtype=np.float64)
  if a.ndim != 1 or a.size == 0:
    raise validation.invalid("coefficients", coefficients, "a non-empty 1-D sequence (a_1, ..., a_k)")
  if not np.all(np.isfinite(a)):
    raise validation.invalid("coefficients", coefficients, "finite numbers")
  matrix = np.eye(a.size, k=-1)
  matrix[0] = a
  return matrix


def fibonacci_matrix() -> np.ndarray:
  """A = [[1, 1], [1, 0]], the companion matrix of F_n = F_{n−1} + F_{n−2}."""
  return companion(FIBONACCI)


def eigenvalues(matrix) -> np.ndarray:
  """Eigenvalues (complex), sorted by decreasing modulus, ties by decreasing real part."""
  values = np.linalg.eigvals(_square_matrix("matrix", matrix)).astype(np.complex128)
  return values[np.lexsort((-values.real, -np.abs(values)))]


def spectral_radius(matrix) -> float:
  """ρ(A) = max |λ_i(A)|; ‖Aⁿ‖^{1/n} → ρ(A) as n → ∞ (Gelfand's formula)."""
  return float(np.max(np.abs(np.linalg.eigvals(_square_matrix("matrix", matrix)))))


@dataclasses.dataclass(frozen=True)
class Stability:
  """How a linear map A behaves under repetition, two ways.

  Attributes:
    spectral_radius: ρ(A).
    by_radius: ``'unstable'`` (ρ > 1 + tol), ``'marginal'`` (|ρ − 1| ≤ tol) or ``'stable'`` (ρ < 1 − tol):
      the behaviour of Aⁿ as n → ∞.
    steps: n, the number of repetitions the product classification looks at.
    rates: (log σ_max(Aⁿ)/n, log σ_min(Aⁿ)/n), the per-step log gains of the most amplified and the
      most attenuated direction after n steps. As n → ∞ the first tends to log ρ (Gelfand), but at
      finite n a non-normal A can grow although ρ < 1.
    by_products: ``'exploding'`` (first rate > tol), ``'vanishing'`` (second rate < −tol), both
      joined by ``' and '``, or ``'norm-preserving'`` (both rates within ±tol).
  """

  spectral_radius: float
  by_radius: str
  steps: int
  rates: tuple[float, float]
  by_products: str

  def __str__(self) -> str:
    return (
      f"ρ = {self.spectral_radius:.6f} ({self.by_radius}); over {self.steps} steps, per-step log gains "
      f"of σ_max, σ_min: {self.rates[0]:+.3e}, {self.rates[1]:+.3e} ({self.by_products})"
    )


def stability(matrix, steps: int = 64, tol: float = 1e-2) -> Stability:
  """Classifies A by its spectral radius and by the singular values of Aⁿ, n = ``steps``.

  ``tol`` is per step: rates within ±0.01 mean a gain within e^{±0.01} per application.
  """
  matrix = _square_matrix("matrix", matrix)
  steps = validation.positive_int("steps", steps)
  validation.positive_float("tol", tol)
  radius = spectral_radius(matrix)
  by_radius = "unstable" if radius > 1 + tol else "stable" if radius < 1 - tol else "marginal"
  rates = (_log_norm_power(matrix, steps) / steps, _log_min_singular_value_power(matrix, steps) / steps)
  labels = [label for label, hit in (("exploding", rates[0] > tol), ("vanishing", rates[1] < -tol)) if hit]
  return Stability(radius, by_radius, steps, rates, " and ".join(labels) or "norm-preserving")


def _log_norm_power(matrix: np.ndarray, n: int) -> float:
  """log σ_max(Aⁿ) = log ‖Aⁿ‖₂ without overflow: repeated squaring, every product renormalised.

  The largest singular value of a computed product is accurate relative to itself, so this holds
  to float64 precision where Aⁿ itself would overflow.
  """
  result, result_log = np.eye(matrix.shape[0]), 0.0
  base, base_log = matrix, 0.0
  while n:
    if n & 1:
      result, result_log = _renormalized(result @ base, result_log + base_log)
    n >>= 1
    if n:
      base, base_log = _renormalized(base @ base, 2 * base_log)
  norm = np.linalg.norm(result, 2)
  return result_log + math.log(norm) if norm > 0 else -math.inf


def _log_min_singular_value_power(matrix: np.ndarray, n: int) -> float:
  """log σ_min(Aⁿ) = −log ‖A^{−n}‖₂, or −inf for a singular A.

  Taken from the inverse because σ_min of a computed product is lost below ε·σ_max (for Fibonacci,
  σ_min(Aⁿ)/σ_max(Aⁿ) = φ^{−2n} is 1e-27 at n = 64).
  """
  if np.linalg.cond(matrix) * np.finfo(np.float64).eps >= 1:
    return -math.inf
  return -_log_norm_power(np.linalg.inv(matrix), n)


def _renormalized(product: np.ndarray, log_scale: float) -> tuple[np.ndarray, float]:
  norm = np.linalg.norm(product, 2)
  if norm == 0:
    return product, log_scale
  return product / norm, log_scale + math.log(norm)


# ----------------------------------------------------------------------------- Fibonacci numbers


def fibonacci_pair(n: int) -> tuple[int, int]:
  """(F_n, F_{n+1}) exactly, by fast doubling in O(log n) big-integer products.

  From (F_k, F_{k+1}): F_{2k} = F_k (2 F_{k+1} − F_k) and F_{2k+1} = F_k² + F_{k+1}², one doubling
  (and, for a 1 bit, one step) per bit of n read from the top.
  """
  n = validation.non_negative_int("n", n)
  a, b = 0, 1
  for bit in bin(n)[2:]:
    a, b = a * (2 * b - a), a * a + b * b
    if bit == "1":
      a, b = b, a + b
  return a, b


def fibonacci(n: int) -> int:
  """F_n exactly (F_0 = 0, F_1 = 1), a Python integer of any size: F_10000 has 2090 digits."""
  return fibonacci_pair(n)[0]


def binet(n: int) -> float:
  """Binet's formula in float64: (φⁿ − ψⁿ)/√5, which equals F_n in exact arithmetic (inf past n ≈ 1474)."""
  n = validation.non_negative_int("n", n)
  with np.errstate(over="ignore"):
    return float((np.float64(PHI) ** n - np.float64(PSI) ** n) / SQRT5)


def binet_relative_error(n: int) -> float:
  """|binet(n) − F_n| / F_n, evaluated exactly (the float as a fraction); 0 for n = 0.

  φ carries a rounding error of relative size ε ≈ 1.1e-16, which φⁿ multiplies by n, so the error
  grows linearly in n; once it exceeds 1/(2 F_n) the rounded float is no longer F_n (past n = 70).
  """
  exact = fibonacci(n)
  approx = binet(n)
  if exact == 0:
    return abs(approx)
  if math.isinf(approx):
    return math.inf
  return float(abs(Fraction(approx) - exact) / exact)


# ----------------------------------------------------------------------------- growth


def log_orbit_norms(matrix, x0, steps: int) -> np.ndarray:
  """log ‖Aⁿ x0‖ for n = 0, …, ``steps`` (float64), renormalising every step so nothing overflows."""
  matrix = _square_matrix("matrix", matrix)
  x = np.asarray(x0, dtype=np.float64)
  if x.shape != (matrix.shape[0],) or not np.all(np.isfinite(x)) or not np.any(x):
    raise validation.invalid("x0", x0, f"a finite non-zero vector of length {matrix.shape[0]}")
  validation.non_negative_int("steps", steps)
  logs = np.empty(steps + 1)
  log_scale = 0.0
  for n in range(steps + 1):
    norm = np.linalg.norm(x)
    logs[n] = log_scale + (math.log(norm) if norm > 0 else -math.inf)
    if norm == 0:
      logs[n + 1 :] = -math.inf
      break
    x, log_scale = matrix @ (x / norm), logs[n]
  return logs


def growth_rate(matrix, x0=None, steps: int = 64) -> float:
  """The per-step growth rate of ‖Aⁿ x0‖, estimated over the second half of the orbit.

  rate = (log ‖A^N x0‖ − log ‖A^{N/2} x0‖) / (N − N/2), N = ``steps``; ``x0`` defaults to e_1 (for
  Fibonacci, the state (F_1, F_0)). For a diagonalisable A whose dominant eigenvalue λ_1 is simple and
  strictly largest in modulus, the error from log |λ_1| decays like (|λ_2|/|λ_1|)^N: for Fibonacci,
  (|ψ|/φ)^N = φ^{−2N}, below 1e-6 from N = 16 on. Discarding the first half removes the transient
  log |c_1| (the weight of x0 on the dominant eigenvector), which would otherwise cost O(1/N).
  """
  matrix = _square_matrix("matrix", matrix)
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
    raise validation.invalid("steps", steps, "an integer >= 2")
  x0 = np.eye(matrix.shape[0])[0] if x0 is None else x0
  logs = log_orbit_norms(matrix, x0, steps)
  half = steps // 2
  return float((logs[steps] - logs[half]) / (steps - half))


# ----------------------------------------------------------------------------- residual counterpart


def residual_step(matrix, depth: int) -> np.ndarray:
  """A_L = I + (A − I)/L: one step of the residual counterpart of A over L = ``depth`` steps."""
  matrix = _square_matrix("matrix", matrix)
  depth = validation.positive_int("depth", depth)
  return np.eye(matrix.shape[0]) + (matrix - np.eye(matrix.shape[0])) / depth


def residual_product(matrix, depth: int) -> np.ndarray:
  """A_L^L, the L-fold product of residual steps; tends to expm(A − I) as L → ∞."""
  return np.linalg.matrix_power(residual_step(matrix, depth), validation.positive_int("depth", depth))


def residual_limit(matrix) -> np.ndarray:
  """lim_{L→∞} (I + (A − I)/L)^L = expm(A − I)."""
  matrix = _square_matrix("matrix", matrix)
  return scipy.linalg.expm(matrix - np.eye(matrix.shape[0]))


def residual_error_constant(matrix) -> float:
  """c = ‖expm(M) M²‖₂ / 2, M = A − I: ‖A_L^L − expm(M)‖₂ = c/L + O(1/L²) (module docstring)."""
  matrix = _square_matrix("matrix", matrix)
  m = matrix - np.eye(matrix.shape[0])
  return float(np.linalg.norm(scipy.linalg.expm(m) @ m @ m, 2) / 2)


@dataclasses.dataclass(frozen=True)
class ResidualConvergence:
  """The residual counterpart of A at several depths (arrays aligned with ``depths``).

  Attributes:
    depths: L.
    error: ‖A_L^L − expm(A − I)‖₂.
    step_singular_values: (len(depths), k) σ(A_L), descending; → 1 as L grows.
    product_singular_values: (len(depths), k) σ(A_L^L), descending; → σ(expm(A − I)).
    order: the fitted p in error ∝ L^{−p} (least squares in log–log); 1 for this scheme.
  """

  depths: np.ndarray
  error: np.ndarray
  step_singular_values: np.ndarray
  product_singular_values: np.ndarray
  order: float


def residual_convergence(matrix, depths) -> ResidualConvergence:
  """Products, errors from the limit, singular values and the error's order in L."""
  depths = validation.positive_ints("depths", depths)
  if len(set(depths)) < 2:
    raise validation.invalid("depths", depths, "at least two distinct depths (to fit the order)")
  limit = residual_limit(matrix)
  products = [residual_product(matrix, L) for L in depths]
  error = np.array([np.linalg.norm(p - limit, 2) for p in products])
  slope = np.polyfit(np.log(depths), np.log(error), 1)[0]
  return ResidualConvergence(
    depths=np.array(depths),
    error=error,
    step_singular_values=np.array([np.linalg.svd(residual_step(matrix, L), compute_uv=False) for L in depths]),
    product_singular_values=np.array([np.linalg.svd(p, compute_uv=False) for p in products]),
    order=float(-slope),
  )


# ----------------------------------------------------------------------------- tables


def fibonacci_table(ns) -> list[dict]:
  """One row per n: F_n (exact), φⁿ/√5, Binet's error, F_{n+1}/F_n and the step rate log(F_{n+1}/F_n).

  F_{n+1}/F_n → φ and log(F_{n+1}/F_n) → log φ, both with error O(φ^{−2n}); φⁿ/√5 rounds to F_n
  because |ψⁿ/√5| < 1/2.
  """
  rows = []
  for n in validation.positive_ints("ns", ns):
    f, f_next = fibonacci_pair(n)
    with np.errstate(over="ignore"):
      approx = float(np.float64(PHI) ** n / SQRT5)
    ratio = f_next / f  # exact big integers, correctly rounded to float64
    rows.append(
      dict(n=n, fibonacci=f, phi_power=approx, binet_error=binet_relative_error(n), ratio=ratio, rate=math.log(ratio))
    )
  return rows


def _short_int(value: int, width: int = 22) -> str:
  digits = str(value)
  if len(digits) <= width:
    return digits
  return f"{digits[0]}.{digits[1:7]}e{len(digits) - 1} ({len(digits)} digits)"


def format_fibonacci_table(rows: list[dict]) -> str:
  """The rows of :func:`fibonacci_table` as a fixed-width text table."""
  header = f"{'n':>6}  {'F_n':>28}  {'φⁿ/√5':>13}  {'Binet rel. err':>14}  {'F_{n+1}/F_n':>18}  {'rate − log φ':>12}"
  lines = [header, "-" * len(header)]
  for r in rows:
    lines.append(
      f"{r['n']:>6}  {_short_int(r['fibonacci']):>28}  {r['phi_power']:>13.6e}  {r['binet_error']:>14.2e}"
      f"  {r['ratio']:>18.15f}  {r['rate'] - LOG_PHI:>12.2e}"
    )
  lines.append(f"φ = {PHI:.15f}, log φ = {LOG_PHI:.15f}")
  return "\n".join(lines)


def format_residual_table(convergence: ResidualConvergence) -> str:
  """A :class:`ResidualConvergence` as text: L, error, L·error, the local order, σ(A_L), σ(A_L^L).

  The local order between consecutive depths is log(e_{i−1}/e_i) / log(L_i/L_{i−1}).
  """
  depths, error = convergence.depths, convergence.error
  local = [""] + [
    f"{np.log(error[i - 1] / error[i]) / np.log(depths[i] / depths[i - 1]):.4f}" for i in range(1, len(depths))
  ]
  steps = [_pair(values) for values in convergence.step_singular_values]
  products = [_pair(values) for values in convergence.product_singular_values]
  width = max(len("σ(A_L^L)"), *(len(text) for text in steps + products))
  header = (
    f"{'L':>6}  {'‖A_L^L − e^(A−I)‖':>18}  {'L·error':>9}  {'order':>6}  {'σ(A_L)':>{width}}  {'σ(A_L^L)':>{width}}"
  )
  lines = [header, "-" * len(header)]
  for L, err, order, step, product in zip(depths, error, local, steps, products):
    lines.append(f"{L:>6}  {err:>18.3e}  {L * err:>9.4f}  {order:>6}  {step:>{width}}  {product:>{width}}")
  lines.append(f"order fitted over all depths: {convergence.order:.4f}")
  return "\n".join(lines)


def _pair(values: np.ndarray) -> str:
  return ", ".join(f"{v:.4f}" for v in values)
