"""Flax's lifted module classes (``nn.scan``, ``nn.remat``), defined once per signature.

``nn.scan(Block, ...)`` and ``nn.remat(Block, ...)`` define a new subclass of ``Block`` at every call,
and defining a flax subclass edits its bases' dataclass fields in place for a moment
(``flax.linen.kw_only_dataclasses``, flax 0.12): a thread that instantiates ``Block`` meanwhile fails
with "dictionary changed size during iteration", or builds a module without its ``name`` field. A
sweep traces several groups at once in threads (``config.parallel_runs``), and a model that lifts
its blocks inside ``__call__`` defines such a class at every trace. Through :func:`scan` and
:func:`remat` a model defines each lifted class the first time it is traced and reuses it after;
the sweep traces every model once before its threads start (:func:`resnorm.loop.models_define_no_class`)
and trains the groups one at a time when a model still defines a class per trace.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import flax.linen as nn


def scan(module, *, length: int, variable_axes: Mapping[str, int], unroll: int = 1) -> type[nn.Module]:
  """``nn.scan(module, variable_axes=..., split_rngs={'params': True}, length=..., unroll=...)``,
  the same class object for the same arguments: ``length`` copies of ``module`` applied one after
  another, each collection in ``variable_axes`` stacked on that axis, fresh parameters per copy."""
  return _scan(module, length, unroll, tuple(sorted(variable_axes.items())))


@functools.cache
def _scan(module, length: int, unroll: int, variable_axes: tuple) -> type[nn.Module]:
  return nn.scan(module, variable_axes=dict(variable_axes), split_rngs={"params": True}, length=length, unroll=unroll)


def remat(module, *, prevent_cse: bool = True, policy: Callable | None = None):
  """``nn.remat(module, prevent_cse=..., policy=...)``, the same class object for the same class and
  arguments. A ``functools.partial`` of a module class (a block with some fields bound) is lifted as
  its class, with the same fields bound again."""
  if isinstance(module, functools.partial):
    return functools.partial(_remat(module.func, prevent_cse, policy), *module.args, **module.keywords)
  return _remat(module, prevent_cse, policy)


@functools.cache
def _remat(module: type[nn.Module], prevent_cse: bool, policy: Callable | None) -> type[nn.Module]:
  return nn.remat(module, prevent_cse=prevent_cse, policy=policy)
