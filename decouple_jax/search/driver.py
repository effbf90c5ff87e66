"""Searches a data set's training (or hold-out) split and fills a resumable target store.

:func:`run_search` is what ``launch/search.py`` calls. Work is done chunk by chunk (the store's
unit of resumption); a killed run started again redoes at most the chunk in flight and, since
every image's randomness derives from (seed, dataset index), ends with the same store.

The hold-out split is searched only for diagnostics (how well the student fits targets of
images it never trained on); its store lives beside the training one (:func:`store_dir`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import resource
import time

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.search import evolve
from decouple_jax.search import sharding
from decouple_jax.search.store import StoreSpec, TargetStore, indices_hash

LAYER_NAMES = ('block0', 'block1', 'block2', 'logits')
# Store directory of each searchable split, inside a run directory.
STORE_DIRS = {'train': 'targets', 'holdout': 'targets_holdout'}


def store_dir(workdir: str | pathlib.Path, split: str = 'train') -> pathlib.Path:
  """Where the store of ``split`` goes in run directory ``workdir``."""
  return pathlib.Path(workdir) / STORE_DIRS[split]


def split_arrays(ds: datalib.Dataset, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``split``'s uint8 images (N, H, W, C), int32 labels (N,) and int64 dataset indices (N,)."""
  if split not in STORE_DIRS:
    raise cfglib.ConfigError(f'split={split!r} is not one of {tuple(STORE_DIRS)}')
  return tuple(getattr(ds, f'{split}_{part}') for part in ('images', 'labels', 'index'))


# Bump when a change to the search code changes the targets of an unchanged config, so stores
# written by the old code are refused instead of silently mixed with new ones.
ENGINE_VERSION = 1
# The network_id of the untrained network that search_cfg.model and search_cfg.seed define.
UNTRAINED = 'untrained'


def network_hash(variables) -> str:
  """16 hex digits identifying a network's weights and statistics (every leaf's path, dtype,
  shape and bytes), so targets searched in one trained network are never mixed with
  another's."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def _qualified_name(fn) -> str:
  if isinstance(fn, functools.partial):
    return f'{_qualified_name(fn.func)}(*{fn.args!r}, **{fn.keywords!r})'
  return f'{getattr(fn, "__module__", "?")}.{getattr(fn, "__qualname__", type(fn).__name__)}'


def operators_id(ops: evolve.Operators) -> str:
  """'default' for the engine's operators, else a hash of the swapped ones' qualified names
  (rename an operator of your own when you change what it does)."""
  default = evolve.Operators()
  swapped = {f: _qualified_name(getattr(ops, f)) for f in ops._fields
             if getattr(ops, f) is not getattr(default, f)}
  return 'default' if not swapped else f'custom-{cfglib.hash_dict(swapped)}'


def targets_config(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
                   ds: datalib.Dataset, network_id: str = UNTRAINED,
                   operators: str = 'default') -> dict:
  """Exactly what changes the searched targets: the data (by content, see
  :func:`decouple_jax.data.identity`), the search settings, the network searched in
  (``network_id``: :data:`UNTRAINED` or a :func:`network_hash`), the operators
  (:func:`operators_id`) and the engine version.

  Where the files live, checksum checks, the test split, how many images run at once and how
  the convs are computed (``model.conv_impl``: every implementation gives bitwise the same
  forward values, and the search only runs forward) do not change a target, so a store stays
  reusable across them.
  """
  data_part = {k: v for k, v in datalib.identity(data_cfg, ds).items() if k != 'test_limit'}
  search_part = dataclasses.replace(search_cfg, batch_images=1, model=dataclasses.replace(
      search_cfg.model, conv_impl='xla'))
  return {'data': data_part, 'search': cfglib.to_dict(search_part), 'network': network_id,
          'operators': operators, 'engine_version': ENGINE_VERSION}


def targets_hash(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
                 ds: datalib.Dataset, network_id: str = UNTRAINED,
                 operators: str = 'default') -> str:
  """Hash of :func:`targets_config`."""
  config = targets_config(data_cfg, search_cfg, ds, network_id, operators)
  return f'{cfglib.hash_dict(config)}-v{ENGINE_VERSION}'


def open_store(directory: str | pathlib.Path, data_cfg: cfglib.DataConfig,
               search_cfg: cfglib.SearchConfig, ds: datalib.Dataset,
               model=None, split: str = 'train', network_id: str = UNTRAINED,
               operators: str = 'default') -> TargetStore:
  """Creates, or reopens to resume, the store of ``split`` for this data and search config
  (and network and operators, see :func:`targets_hash`); ``model`` gives the targets' shapes
  (default: the untrained network of ``search_cfg.model``)."""
  model = model or models.build(search_cfg.model, ds.num_classes, ds.image_shape[-1])
  _, _, index = split_arrays(ds, split)
  spec = StoreSpec(
      shapes=models.tap_shapes(model, ds.image_shape), dtype=search_cfg.store_dtype,
      num_images=len(index), chunk_size=search_cfg.chunk_size, seed=search_cfg.seed,
      **expected_store_fields(data_cfg, search_cfg, ds, split, network_id, operators))
  return TargetStore.create_or_open(directory, spec, index)


def expected_store_fields(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
                          ds: datalib.Dataset, split: str = 'train',
                          network_id: str = UNTRAINED, operators: str = 'default') -> dict:
  """What a store must match to serve as ``split``'s targets (for ``TargetStore.open``)."""
  _, _, index = split_arrays(ds, split)
  return {'config_hash': targets_hash(data_cfg, search_cfg, ds, network_id, operators),
          'config': targets_config(data_cfg, search_cfg, ds, network_id, operators),
          'data_name': ds.name, 'index_hash': indices_hash(index)}


def run_search(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
               directory: str | pathlib.Path, *, ds: datalib.Dataset | None = None,
               mesh: jax.sharding.Mesh | None = None, split: str = 'train',
               network: tuple | None = None,
               ops: evolve.Operators = evolve.Operators()) -> TargetStore:
  """Searches every image of ``split`` of ``data_cfg`` into the store at ``directory``.

  Args:
    data_cfg: the data set.
    search_cfg: the search.
    directory: the target store (created, or resumed if it holds this config's store; a
      store of another config, network, operators or split is refused).
    ds: the already loaded data set, if any.
    mesh: 1-D device mesh, axis 'images' (default: every device).
    split: 'train' (the training split, hold-out removed: the student's targets) or
      'holdout' (the hold-out split, searched with the same network, for diagnostics).
    network: (model, variables) of the network to search in, e.g. a trained student (its
      taps are then what is searched); default the untrained network of
      ``search_cfg.model``, initialised from ``search_cfg.seed``.
    ops: the search's operators; a store records which ones made it.

  Returns:
    The complete store. ``directory/search_log.jsonl`` gets one record per chunk (mean best
    loss per layer, images/s) and ``directory/summary.json`` the totals.
  """
  directory = pathlib.Path(directory)
  ds = ds if ds is not None else datalib.load_dataset(data_cfg)
  if network is None:
    model, variables = models.init_for_dataset(search_cfg.model, ds, search_cfg.seed)
    network_id = UNTRAINED
  else:
    model, variables = network
    network_id = network_hash(variables)
  images, labels, index = split_arrays(ds, split)
  store = open_store(directory, data_cfg, search_cfg, ds, model, split, network_id,
                     operators_id(ops))
  mesh = mesh if mesh is not None else sharding.make_mesh()
  search_fn = sharding.make_search_fn(model, variables, search_cfg, mesh, ops=ops)
  batch = search_cfg.batch_images * mesh.size
  log = runlog.JsonLines(directory / 'search_log.jsonl')
  todo = store.missing_chunks()
  n_todo = sum(np.subtract(*store.chunk_range(c)[::-1]) for c in todo)
  bar = runlog.progress(total=len(images), initial=len(images) - n_todo, desc=f'search {split}',
                        unit='img')
  t_start, done = time.perf_counter(), 0
  for c in todo:
    start, stop = store.chunk_range(c)
    t0 = time.perf_counter()
    parts = []
    for s in range(start, stop, batch):
      e = min(s + batch, stop)
      # Every call gets the same batch size (the last one padded) so nothing recompiles.
      pos = np.minimum(np.arange(s, s + batch), e - 1)
      x = datalib.normalize(images[pos], ds.mean, ds.std)
      result = search_fn(x, labels[pos], index[pos])
      parts.append(jax.tree.map(lambda a: np.asarray(a)[:e - s], result))
      bar.update(e - s)
      best = np.concatenate([p.best_loss for p in parts]).mean(0)
      bar.set_postfix({n: f'{v:.3f}' for n, v in zip(LAYER_NAMES, best)})
    targets = [np.concatenate([p.targets[l] for p in parts]) for l in range(len(LAYER_NAMES))]
    best_loss = np.concatenate([p.best_loss for p in parts])
    init_loss = np.concatenate([p.init_loss for p in parts])
    store.write_chunk(c, targets, best_loss, init_loss)
    done += stop - start
    log.write({'chunk': c, 'images': stop - start, 'seconds': time.perf_counter() - t0,
               'init_loss': float(init_loss.mean()),
               **{f'best_loss_{n}': float(v) for n, v in zip(LAYER_NAMES, best_loss.mean(0))}})
  bar.close()
  seconds = time.perf_counter() - t_start
  runlog.write_json(directory / 'summary.json', search_summary(store, done, seconds, mesh.size))
  return store


def search_summary(store: TargetStore, images_this_run: int, seconds: float,
                   devices: int) -> dict:
  """Mean initial and per-layer best losses over the store, and this run's speed."""
  best = store.best_loss
  return {
      'images': store.spec.num_images,
      'mean_init_loss': float(np.nanmean(store.init_loss)),
      'mean_best_loss': {n: float(v) for n, v in zip(LAYER_NAMES, np.nanmean(best, 0))},
      'images_this_run': images_this_run,
      'seconds_this_run': seconds,
      'images_per_s': images_this_run / seconds if seconds > 0 else None,
      'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      'devices': devices,
  }
