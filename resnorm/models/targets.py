"""What families are built toward: the kernels Procrustes projects to, and the maps the theorem's
constructed networks represent."""

from __future__ import annotations

import dataclasses

import numpy as np

from resnorm import procrustes, validation


@dataclasses.dataclass(frozen=True)
class ConvTarget:
  """What one kernel is projected to.

  :func:`resnorm.procrustes.procrustes` reads only the attributes below (``convention`` when
  present), so any object holding them serves; this one checks them when it is made.

  Attributes:
    spatial_shape: input (height, width) of the convolution; ignored for a 2-D Dense kernel
      (pass (1, 1)).
    stride: 1, or the stride of a 1×1 transition convolution.
    scale: target operator singular value; None: sqrt(c_out / c_in) (sqrt(out / in) for Dense).
    convention: how a k×k kernel's projected spectrum is read back into a kernel: "correct", or
      a reference code's "pytorch" / "chainer" (:func:`resnorm.procrustes.project_conv`).
  """

  spatial_shape: tuple[int, int]
  stride: int = 1
  scale: float | None = None
  convention: str = "correct"

  def __post_init__(self):
    object.__setattr__(self, "spatial_shape", validation.spatial_shape("spatial_shape", self.spatial_shape))
    validation.positive_int("stride", self.stride)
    if self.scale is not None:
      validation.positive_float("scale", self.scale)
    validation.one_of("convention", self.convention, procrustes.CONVENTIONS)


@dataclasses.dataclass(frozen=True)
class FlowTarget:
  """A map of R^d built from flows: h = Q ∘ Φ_K ∘ … ∘ Φ_1, with Φ_k the flow for time s of the
  vector field v_k(z) = V_k relu(U_k z + b_k).

  Written as one time-dependent field on t ∈ [0, K), v(z, t) = s·v_⌊t⌋(z), h is Q times the
  time-K flow of v. Each v_k is Lipschitz with constant ‖V_k‖₂‖U_k‖₂, so by Grönwall's
  inequality Φ_k and its inverse are e^{s‖V_k‖‖U_k‖}-Lipschitz: h is invertible and bi-Lipschitz,
  and smooth away from the hyperplanes where a ReLU switches.

  Attributes:
    u: (K, hidden, d); b: (K, hidden); v: (K, d, hidden); rotation: Q, (d, d) orthogonal.
    strength: s, the time each field flows for.
    substeps: classical Runge–Kutta (RK4) steps per field when :meth:`__call__` integrates.
  """

  u: np.ndarray
  b: np.ndarray
  v: np.ndarray
  rotation: np.ndarray
  strength: float
  substeps: int = 32

  @property
  def num_maps(self) -> int:
    return self.u.shape[0]

  @property
  def dim(self) -> int:
    return self.u.shape[2]

  @property
  def hidden(self) -> int:
    return self.u.shape[1]

  def field(self, k: int, z: np.ndarray) -> np.ndarray:
    """v_k at the rows of ``z``."""
    return np.maximum(z @ self.u[k].T + self.b[k], 0.0) @ self.v[k].T

  def lipschitz(self) -> np.ndarray:
    """(K,) ‖V_k‖₂‖U_k‖₂, the Lipschitz constant of each field."""
    return np.array([np.linalg.norm(v, 2) * np.linalg.norm(u, 2) for u, v in zip(self.u, self.v)])

  def __call__(self, x: np.ndarray) -> np.ndarray:
    """h at the rows of ``x``, integrated in float64 by RK4 with ``substeps`` steps per field
    (fourth order where no ReLU switches within a step, lower where one does; the default is
    accurate to the float32 resolution of the datasets built from it, tests/test_data.py)."""
    z = np.asarray(x, np.float64)
    h = self.strength / self.substeps
    for k in range(self.num_maps):
      for _ in range(self.substeps):
        k1 = self.field(k, z)
        k2 = self.field(k, z + h / 2 * k1)
        k3 = self.field(k, z + h / 2 * k2)
        k4 = self.field(k, z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z @ self.rotation.T
