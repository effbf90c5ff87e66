"""The data-source registry: which loader reads data set ``data.name`` from ``data.source``.

Each source is one module that registers its loader, as in big_vision's ``datasets/core.get``
(one module per source), minus the import by name: the built-in modules are imported by
:mod:`decouple_jax.data.datasets`, a notebook's own loader registers when its cell runs::

  @data.register_source('files', ('svhn',), num_classes=lambda cfg: 10,
                        obtain='Put train_32x32.mat and test_32x32.mat into data.dir.')
  def load_svhn(cfg: DataConfig) -> data.Arrays:
    ...

:func:`decouple_jax.data.load_dataset` does the rest the same way for every source: the
hold-out split, the limits, the statistics and the fingerprint.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from decouple_jax.config import ConfigError
from decouple_jax.config import DataConfig

# (train_images (N, H, W, C) uint8, train_labels (N,) int32, test_images (M, H, W, C) uint8,
# test_labels (M,) int32): a whole data set in its source's order, before splitting.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Loader = Callable[[DataConfig], Arrays]


@dataclasses.dataclass(frozen=True)
class Source:
  """A registered loader and what it knows without loading.

  Attributes:
    load: ``DataConfig -> Arrays``, the whole data set.
    num_classes: ``DataConfig -> int``.
    obtain: one sentence telling a user whose ``data.dir`` is missing how to get the files;
      None for a source that does not read ``data.dir``.
  """
  load: Loader
  num_classes: Callable[[DataConfig], int]
  obtain: str | None


# source -> data set name -> Source; the name None reads any data set (an image folder).
_REGISTRY: dict[str, dict[str | None, Source]] = {}


def register_source(source: str, names: Sequence[str] | None, *,
                    num_classes: Callable[[DataConfig], int],
                    obtain: str | None) -> Callable[[Loader], Loader]:
  """Decorator registering a loader as ``source`` for the data sets ``names``.

  Args:
    source: the value of ``data.source`` that selects it.
    names: the values of ``data.name`` it reads; None for any name (a name it does not know
      is then the user's label for their own data set).
    num_classes: ``DataConfig -> int``.
    obtain: see :class:`Source`.

  Returns:
    The decorator, which returns the loader unchanged. Registering the same (source, name)
    again replaces the earlier loader, so a notebook cell can be rerun.
  """
  def register(load: Loader) -> Loader:
    entries = _REGISTRY.setdefault(source, {})
    for name in (None,) if names is None else names:
      entries[name] = Source(load, num_classes, obtain)
    return load
  return register


def get_source(cfg: DataConfig) -> Source:
  """The :class:`Source` registered for ``(cfg.source, cfg.name)``.

  Raises:
    ConfigError: no such source, or the source does not read that data set (the message lists
      the choices).
  """
  if cfg.source not in _REGISTRY:
    raise ConfigError(f'data.source={cfg.source!r} is not one of {tuple(sorted(_REGISTRY))}')
  entries = _REGISTRY[cfg.source]
  source = entries.get(cfg.name, entries.get(None))
  if source is None:
    raise ConfigError(f'data.name={cfg.name!r} is not one of {tuple(sorted(entries))}, the '
                      f'data sets data.source={cfg.source!r} reads')
  return source
