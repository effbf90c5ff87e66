"""Config files (``configs/*.py``), loaded by their path: one way for launch scripts,
benchmarks, tests and notebooks to read ``configs/mnist.py:cpu``.

A config file is a Python file defining ``get_config(variant)``, which returns an
``ml_collections.ConfigDict`` (:func:`decouple_jax.config.from_dict` makes it an
``ExperimentConfig``), and ``VARIANTS``, the variants it knows. It is executed from its path,
never imported: ``configs/`` is not a package and is not installed with one (it sits beside
the package in the repository), and the library itself never reads a config file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import types
import typing

import ml_collections
from ml_collections import config_dict

from decouple_jax import config as cfglib
from decouple_jax.config import ConfigError


def defaults() -> ml_collections.ConfigDict:
  """:class:`~decouple_jax.config.ExperimentConfig`'s defaults as a ConfigDict: what a config
  file's ``get_config`` starts from. A field whose default is None (``search.network_seed``)
  is a placeholder of its type, so ``--config.search.network_seed=3`` sets it (config_flags
  cannot override a plain None)."""
  exp = cfglib.ExperimentConfig()
  c = ml_collections.ConfigDict(cfglib.to_dict(exp))
  _type_nones(exp, c)
  return c


def _type_nones(cfg, c: ml_collections.ConfigDict) -> None:
  """Makes each None field of config dataclass ``cfg`` (nested ones too) a placeholder of
  its type (``int | None``: int) in ``c``, its ConfigDict."""
  hints = typing.get_type_hints(type(cfg))
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    if dataclasses.is_dataclass(value):
      _type_nones(value, c[field.name])
    elif value is None:
      (tp,) = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
      c[field.name] = config_dict.placeholder(tp)


def load_module(path: str | os.PathLike) -> types.ModuleType:
  """The config file at ``path``, executed as a module of its own (not put in sys.modules).

  Raises:
    ConfigError: ``path`` is not a file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f'no such config file {path}')
  # A name of its own per file, so that two files of one stem never share a module.
  digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
  spec = importlib.util.spec_from_file_location(f'decouple_jax_config_{path.stem}_{digest}',
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config that ``spec`` names, in ``--config``'s syntax: ``FILE:VARIANT``, or ``FILE``
  for the file's default variant.

  Args:
    spec: e.g. ``'configs/mnist.py:cpu'`` (FILE relative to the working directory).

  Returns:
    ``get_config(VARIANT)`` of FILE: a ConfigDict, to change and then build with
    ``config.from_dict(config.ExperimentConfig, c)``.

  Raises:
    ConfigError: no such file, or a variant (an empty one included) the file does not have.
  """
  file, colon, variant = str(spec).partition(':')
  module = load_module(file)
  variants = getattr(module, 'VARIANTS', None)
  if colon and variants is not None and variant not in variants:
    # An empty variant (an unset shell variable) would reach get_config('').
    what = f'unknown variant {variant!r}' if variant else 'no variant after the colon'
    raise ConfigError(f'{what}; {file} has {", ".join(variants)}')
  return module.get_config(*([variant] if colon else []))
