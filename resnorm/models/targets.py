"""What a family's projected kernels are projected to: the targets of :func:`resnorm.procrustes.procrustes`."""

from __future__ import annotations

import dataclasses

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
