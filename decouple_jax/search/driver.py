"""Searches a data set's training (or hold-out) split and fills a resumable target store.

:func:`run_search` is what ``launch/search.py`` calls: the in-memory search
(:meth:`decouple_jax.search.sharding.SearchFn.search`) of each missing chunk (the store's unit
of resumption), written to the store. A killed run started again redoes at most the chunks in
flight and, since every image's randomness derives from (seed, dataset index), ends with the
same store. Which store a search fills and where it lives: :mod:`decouple_jax.search.store_ids`.

Several processes (``jax.distributed``, one per host) fill one store on a shared filesystem
together: each searches its share of the missing chunks on its own devices and commits them
itself; a process killed mid-search leaves its chunks missing, and the next run redoes them.
The store is the same as one process's.
"""

from __future__ import annotations

import pathlib
import resource
import time

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import distributed
from decouple_jax import identity
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.search import sharding
from decouple_jax.search import store_ids
from decouple_jax.search.target_store import TargetStore


def run_search(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
               directory: str | pathlib.Path, *, ds: datalib.Dataset | None = None,
               mesh: jax.sharding.Mesh | None = None, split: str = 'train',
               network: tuple | None = None, memory_bytes: int | None = None) -> TargetStore:
  """Searches every image of ``split`` of ``data_cfg`` into the store at ``directory``.

  Args:
    data_cfg: the data set.
    search_cfg: the search, its operators by name too (``search_cfg.operators``).
    directory: the target store (created, or resumed if it holds this search's store; a
      store of another config, network, operators' code or split is refused). A complete store with
      its summary is returned as it is.
    ds: the already loaded data set, if any.
    mesh: 1-D device mesh, axis 'images' (default: this process's devices).
    split: 'train' (the training split, hold-out removed: the student's targets) or
      'holdout' (the hold-out split, searched with the same network, for diagnostics).
    network: (model, variables) of the network to search in, e.g. a trained student (its
      taps are then what is searched); default the untrained network of
      ``search_cfg.model``, initialised from ``search_cfg.untrained_network_seed``.
    memory_bytes: usable memory per device for sizing ``search_cfg.batch_images`` (see
      :func:`decouple_jax.search.sharding.images_per_call`); default the device's.

  Returns:
    The complete store. ``directory/search_log.jsonl`` gets one record per chunk (the
    process that searched it, mean best loss per layer, seconds) and ``directory/summary.json``
    the totals, with the store's identity (its record, :func:`decouple_jax.identity.finished`).
    With ``search_cfg.average_of`` R > 1 (targets the mean of R searches per image) the seconds
    are those of all R searches, the best and initial losses the searches' mean, and both files
    add the loss of the mean targets per layer, in float32 before the store's rounding
    (``target_loss_<layer>``; the summary's ``mean_target_loss``, over the chunks' last log
    records).
  """
  directory = pathlib.Path(directory)
  ds = ds if ds is not None else datalib.load_dataset(data_cfg)
  if network is None:
    model, variables = models.init_for_dataset(search_cfg.model, ds,
                                                search_cfg.untrained_network_seed)
    network_id = store_ids.UNTRAINED
  else:
    model, variables = network
    network_id = cfglib.hash_tree(variables)
  store_id = store_ids.StoreId(data_cfg, search_cfg, ds, split, network_id)
  store = store_ids.open_for_search(directory, store_id, model)
  # Which chunks are missing and whether the store was summarised, as process 0 sees them:
  # the processes must decide alike, or one would wait for the others forever.
  state = np.zeros(store.num_chunks + 1, bool)
  state[store.missing_chunks()] = True
  state[-1] = (directory / 'summary.json').exists()
  state = distributed.agree(state)
  missing = np.flatnonzero(state[:-1]).tolist()
  if not missing and state[-1]:
    return store
  images, labels, index = store_ids.split_arrays(ds, split)
  todo = distributed.share(missing)
  search_fn = sharding.make_search_fn(model, variables, search_cfg, mesh)
  log = runlog.JsonLines(directory / 'search_log.jsonl')
  bar = runlog.progress(total=sum(np.subtract(*store.chunk_range(c)[::-1]) for c in todo),
                        desc=f'search {split}', unit='img')
  t_start, done = time.perf_counter(), 0
  for c in todo:
    start, stop = store.chunk_range(c)
    t0 = time.perf_counter()
    best = []

    def progress(part):
      best.append(part.best_loss)
      bar.update(len(part.best_loss))
      bar.set_postfix({n: f'{v:.3f}' for n, v in zip(search_cfg.layers,
                                                      np.concatenate(best).mean(0))})
    result = search_fn.search(
        np.asarray(datalib.normalize(images[start:stop], ds.mean, ds.std)),
        labels[start:stop], index[start:stop], memory_bytes=memory_bytes, on_batch=progress)
    store.write_chunk(c, result.targets, result.best_loss, result.init_loss)
    done += stop - start
    losses = {'best_loss': result.best_loss}
    if search_cfg.average_of > 1:
      losses['target_loss'] = result.target_loss
    log.write({'chunk': c, 'process': jax.process_index(), 'images': stop - start,
               'seconds': time.perf_counter() - t0, 'init_loss': float(result.init_loss.mean()),
               **{f'{what}_{n}': float(v) for what, loss in losses.items()
                  for n, v in zip(search_cfg.layers, loss.mean(0))}})
  bar.close()
  seconds = time.perf_counter() - t_start
  distributed.barrier(f'search {directory}')
  store.refresh()
  done = distributed.total(done)
  if distributed.is_main():
    devices = search_fn.mesh.size * jax.process_count()
    batch = search_fn.sized_batch(ds.image_shape)  # None if this process searched nothing
    summary = search_summary(store, list(search_cfg.layers), done, seconds, devices,
                             batch and batch // search_fn.mesh.size)
    if search_cfg.average_of > 1:
      summary['mean_target_loss'] = _logged_mean(log.records(), 'target_loss',
                                                 list(search_cfg.layers))
    runlog.write_json(directory / 'summary.json', identity.record(store_id.config(), **summary))
  distributed.barrier(f'summary {directory}')
  return store


def search_summary(store: TargetStore, layer_names: list[str], images_this_run: int,
                   seconds: float, devices: int, images_per_device: int | None) -> dict:
  """Mean initial and per-layer best losses over the store (by ``layer_names``, the search's
  layers), and this run's speed (``images_per_device``: searched at once, None if this process
  searched nothing)."""
  best = store.best_loss
  return {
      'images': store.spec.num_images,
      'mean_init_loss': float(np.nanmean(store.init_loss)),
      'mean_best_loss': {n: float(v) for n, v in zip(layer_names, np.nanmean(best, 0))},
      'images_this_run': images_this_run,
      'seconds_this_run': seconds,
      'images_per_s': images_this_run / seconds if seconds > 0 else None,
      'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      'devices': devices,
      'images_per_device': images_per_device,
  }


def _logged_mean(records: list[dict], what: str, layer_names: list[str]) -> dict:
  """Per layer (by ``layer_names``), the mean over images of a loss the search log holds per
  chunk as ``{what}_{layer}``, from the last record of each chunk (a chunk searched again
  after damage is logged again)."""
  last = {r['chunk']: r for r in records if f'{what}_{layer_names[0]}' in r}
  images = sum(r['images'] for r in last.values())
  return {n: sum(r['images'] * r[f'{what}_{n}'] for r in last.values()) / images
          for n in layer_names}


def cached_search(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
                  ds: datalib.Dataset, root: str | pathlib.Path, split: str = 'train'
                  ) -> pathlib.Path:
  """The target store of ``split`` under these configs in a cache of searches at ``root``
  (:func:`decouple_jax.search.store_ids.cache_dir`): searched on first use, resumed if
  unfinished, reused once finished, so analyses sharing a setting search it once."""
  directory = store_ids.cache_dir(root, store_ids.StoreId(data_cfg, search_cfg, ds, split))
  run_search(data_cfg, search_cfg, directory, ds=ds, split=split)
  return directory
