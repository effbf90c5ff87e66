"""Which target store belongs to which search, and where it lives.

A store's targets depend on exactly five things, and a store records all five (:class:`StoreId`):
the data (by content, :func:`decouple_jax.data.identity`), the search settings (the operators'
names and parameters among them), the network it was searched in (``network_id``:
:data:`UNTRAINED`, or :func:`~decouple_jax.config.hash_tree` of a trained network's variables,
as the feedback loop searches in its students), the code of operators registered outside the
library (:func:`decouple_jax.search.registry.operators_id`) and the engine version. Everything
else (where the files are, and the speed-only settings: how many images run at once, how the
convs are computed) leaves the targets unchanged, so a store stays reusable across them. A store
of another id is refused, naming the settings that differ.

Where stores live:

  RUN/targets             the training split's store of a run directory (:func:`store_dir`)
  RUN/targets_holdout     its hold-out split's, beside it (:func:`holdout_beside`)
  ROOT/<id hash>/targets  a cache of searches by id, shared by analyses (:func:`cache_dir`)

Writing a store (the search) is :mod:`decouple_jax.search.driver`'s; this module only says
which store is which and opens it. It is named for what it holds, the stores' ids: the format
of one store on disk, which knows nothing of configs, is :mod:`decouple_jax.search.target_store`.
The two levels open stores by different names: here :func:`open_for_search` and
:func:`open_finished` take a :class:`StoreId` and build the spec from it; there
``TargetStore.create_or_open`` and ``TargetStore.open`` take a spec.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import identity
from decouple_jax import models
from decouple_jax.search import registry
from decouple_jax.search.target_store import StoreError, StoreSpec, TargetStore, indices_hash

SPLITS = ('train', 'holdout')
# The training split's store in a run directory; the hold-out split's sits beside it.
_TRAIN_DIR = 'targets'
_HOLDOUT_SUFFIX = '_holdout'
# Bump when a change to the search code changes the targets of an unchanged config, so stores
# written by the old code are refused instead of silently mixed with new ones; a tiny search's
# targets are pinned to it (tests/test_engine_version.py). 2: the fitness clamped at 0.
ENGINE_VERSION = 2
# The network_id of the untrained network that search_cfg.model and
# search_cfg.untrained_network_seed define.
UNTRAINED = 'untrained'


def store_dir(workdir: str | pathlib.Path, split: str = 'train') -> pathlib.Path:
  """Where the store of ``split`` goes in run directory ``workdir``."""
  _check_split(split)
  train = pathlib.Path(workdir) / _TRAIN_DIR
  return train if split == 'train' else holdout_beside(train)


def holdout_beside(train_store: str | pathlib.Path) -> pathlib.Path:
  """Where the hold-out split's store sits beside the training store ``train_store``."""
  train_store = pathlib.Path(train_store)
  return train_store.with_name(train_store.name + _HOLDOUT_SUFFIX)


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise cfglib.ConfigError(f'split={split!r} is not one of {SPLITS}')


def split_arrays(ds: datalib.Dataset, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``split``'s uint8 images (N, H, W, C), int32 labels (N,) and int64 dataset indices (N,)."""
  _check_split(split)
  return tuple(getattr(ds, f'{split}_{part}') for part in ('images', 'labels', 'index'))


@dataclasses.dataclass(frozen=True, eq=False)
class StoreId:
  """What a store's targets depend on (see the module docstring).

  Attributes:
    data_cfg: the data set's config.
    search_cfg: the search's.
    ds: the data set as loaded with ``data_cfg`` (its content is part of the id).
    split: 'train' (the students' targets) or 'holdout' (searched for diagnostics only).
    network_id: :data:`UNTRAINED` or the :func:`~decouple_jax.config.hash_tree` of the
      variables of the network searched in (targets of one trained network are never mixed
      with another's).
  """
  data_cfg: cfglib.DataConfig
  search_cfg: cfglib.SearchConfig
  ds: datalib.Dataset
  split: str = 'train'
  network_id: str = UNTRAINED

  def __post_init__(self):
    _check_split(self.split)

  @property
  def indices(self) -> np.ndarray:
    """(N,) dataset indices of the split's images, in store order."""
    return split_arrays(self.ds, self.split)[2]

  def config(self) -> dict:
    """The JSON-ready settings the id's hash covers (:mod:`decouple_jax.identity`). The test
    split and ``test_limit`` are left out (the search never sees them), and so are the speed-only
    fields, as in every identity."""
    data_part = {k: v for k, v in datalib.identity(self.data_cfg, self.ds).items()
                 if k != 'test_limit'}
    return {'data': data_part, 'search': identity.of(self.search_cfg),
            'network': self.network_id,
            'operators': registry.operators_id(self.search_cfg.operators),
            'engine_version': ENGINE_VERSION}

  def hash(self) -> str:
    """Hash of :meth:`config`, with the engine version."""
    return f'{identity.hash_of(self.config())}-v{ENGINE_VERSION}'

  def expected_fields(self) -> dict:
    """The :class:`~decouple_jax.search.target_store.StoreSpec` fields a store must have to be this
    id's (for ``TargetStore.open(expect=...)``)."""
    return {'config_hash': self.hash(), 'config': self.config(), 'data_name': self.ds.name,
            'index_hash': indices_hash(self.indices)}

  def spec(self, model: models.AirbenchNet | None = None) -> StoreSpec:
    """The spec of this id's store; ``model`` (the network searched in) gives the targets'
    shapes, by default the untrained network of ``search_cfg.model``."""
    model = model or models.build(self.search_cfg.model, self.ds.num_classes,
                                  self.ds.image_shape[-1])
    return StoreSpec(
        shapes=models.tap_shapes(model, self.ds.image_shape), dtype=self.search_cfg.store_dtype,
        num_images=len(self.indices), chunk_size=self.search_cfg.chunk_size,
        seed=self.search_cfg.seed, **self.expected_fields())


def cache_dir(root: str | pathlib.Path, store_id: StoreId) -> pathlib.Path:
  """Where ``store_id``'s store goes in a cache of searches under ``root``: one directory per
  id (of its training split), the hold-out split's store beside the training one."""
  train_id = dataclasses.replace(store_id, split='train')
  return store_dir(pathlib.Path(root) / train_id.hash(), store_id.split)


def open_for_search(directory: str | pathlib.Path, store_id: StoreId,
                    model: models.AirbenchNet | None = None, *,
                    cooperate: bool | None = None) -> TargetStore:
  """The writable store of ``store_id`` at ``directory``, for the search to fill: created, or
  reopened to resume (``model`` as for :meth:`StoreId.spec`); ``cooperate`` shares it with the
  other processes of one search (by default, those of a ``jax.distributed`` run; see
  :meth:`~decouple_jax.search.target_store.TargetStore.create_or_open`)."""
  return TargetStore.create_or_open(directory, store_id.spec(model), store_id.indices,
                                    cooperate=cooperate)


def open_finished(directory: str | pathlib.Path, store_id: StoreId) -> TargetStore:
  """The complete, read-only store of ``store_id`` at ``directory``.

  Raises:
    StoreError: no store there, a store of another id (each differing setting named), or an
      unfinished one.
  """
  store = TargetStore.open(directory, expect=store_id.expected_fields())
  if not store.is_complete():
    raise StoreError(
        f'the target store {directory} is incomplete ({len(store.missing_chunks())} of '
        f'{store.num_chunks} chunks missing): finish it with launch/search.py (it resumes) '
        'before reading its targets')
  return store
