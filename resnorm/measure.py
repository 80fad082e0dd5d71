"""A group's measurements: every member's backward ratios, and δ in every direction, compiled once.

A run is measured on the first ``config.signal.num_examples`` held-out examples: the ratios
r_k = ‖∂E/∂x_k‖ / ‖∂E/∂x_{k+1}‖ of every layer and example from one backward pass
(:func:`resnorm.signal.measure`), in eval mode; with ``config.signal.direction_free_examples`` > 0 and a
family that extracts its identical blocks, the block Jacobians' extreme singular values on the
first that many examples (:func:`resnorm.spectra.block_extremes`: dense SVDs up to width
:data:`DENSE_WIDTH`, else Lanczos), which bound every ratio; with ``config.signal.train_batch``,
also the ratios in train mode on a member's training batch (the reference ProcResNet code's
measure). Each program is vmapped over the group's members.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from resnorm import data, models, records, signal, spectra, train

DENSE_WIDTH = 256  # block Jacobians up to this width are formed and decomposed


class Measure:
  """The measurement programs of one group of runs (:func:`resnorm.loop.train_group`), compiled
  for a group of ``parameters`` parameters in all (:func:`resnorm.train.few_calls_options`)."""

  def __init__(self, config, model, loss_fn, dataset: data.Dataset, parameters: int = 0):
    self.config, self.dataset = config, dataset
    self.inputs = dataset.x_test[: config.signal.num_examples]
    self.targets = dataset.y_test[: config.signal.num_examples]
    ratios = functools.partial(signal.measure, model, loss_fn=loss_fn)
    self.ratios = train.jit_few_calls(jax.vmap(functools.partial(ratios, train=False), (0, None, None)), parameters)
    self.train_mode_ratios = config.signal.train_batch and train.jit_few_calls(
      jax.vmap(functools.partial(ratios, train=True)), parameters
    )
    family = models.family(config.model.name)
    calibrate = family.calibrate_batch_stats
    self.calibrate = calibrate and train.jit_few_calls(
      jax.vmap(functools.partial(calibrate, model), in_axes=(0, None)), parameters
    )
    examples = min(config.signal.direction_free_examples, len(self.inputs))
    self.extremes = None
    if examples and family.block_stack is not None:
      self.direction_free_inputs = self.inputs[:examples]

      def extremes(variables, inputs):
        blocks = family.block_stack(model, variables, inputs)
        return spectra.block_extremes(blocks, dense=math.prod(blocks.inputs.shape[2:]) <= DENSE_WIDTH)

      self.extremes = train.jit_few_calls(jax.vmap(extremes, in_axes=(0, None)), parameters)

  def __call__(
    self,
    variables,
    *,
    calibrate: bool = False,
    direction_free: bool = False,
    train_batch_step: int | None = None,
    seeds: list[int] | None = None,
  ) -> list[records.Measurement]:
    """The measurements of the stacked ``variables``, one per member.

    Args:
      variables: the group's variables, stacked on a leading member axis.
      calibrate: first set BatchNorm's running statistics to those of the measured examples (at
        initialisation, eval mode with the initial statistics, mean 0 and variance 1, would make
        every BatchNorm the identity).
      direction_free: add δ in every direction (where the family extracts its blocks).
      train_batch_step: with ``config.signal.train_batch``, add the train-mode ratios on each
        member's training batch of this (0-based) step, the batch the step after the measurement
        trains on; ``seeds`` are the members' data seeds.
    """
    if calibrate and self.calibrate is not None:
      variables = self.calibrate(variables, self.inputs)
    reports = jax.device_get(self.ratios(variables, self.inputs, self.targets))
    extremes = None
    if direction_free and self.extremes is not None:
      extremes = jax.device_get(self.extremes(variables, self.direction_free_inputs))
    in_train_mode = None
    if self.train_mode_ratios and train_batch_step is not None:
      padding = data.augment_padding(self.config)
      batches = [
        data.training_batch(self.dataset, self.config.batch_size, seed, train_batch_step, padding) for seed in seeds
      ]
      in_train_mode = jax.device_get(self.train_mode_ratios(variables, *map(np.stack, zip(*batches))))
    return [
      records.Measurement.from_report(
        _member(reports, m),
        None if extremes is None else signal.direction_free(*_member(extremes, m)),
        None if in_train_mode is None else _member(in_train_mode, m),
      )
      for m in range(len(reports.grad_norm))
    ]


def _member(tree, m: int):
  """Member ``m`` of a tree of host arrays stacked on a leading member axis."""
  return jax.tree.map(lambda leaf: leaf[m], tree)
