"""How the search scales with compute, and how diverse its targets are (paper sections 3.2, 4.4).

The first two analyses search the first ``n_images`` training images with the experiment's fixed
(untrained) search network, initialised from ``search_cfg.untrained_network_seed`` once, so
every setting and every run searches the same network:

* :func:`search_scaling` (paper Fig. 2): mean best loss per search layer as the population
  grows (its top-k / exploratory / refinement parts kept in proportion) and as every layer's
  generations are multiplied.
* :func:`search_diversity` (paper Fig. 3): independent runs (search seeds ``seed``,
  ``seed + 1``, ...); per layer, each run's best candidate is kept when it gives the true class
  a probability above ``threshold``, and the effective number of distinct targets among the
  kept ones of the first k runs is averaged over images, for k = 1 .. n_runs.

:func:`accuracy_vs_compute` (paper Fig. 4) instead searches the whole training split under each
setting and trains a student on it.

Losses are cross-entropies in nats, as everywhere in the search (lower is better).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Sequence

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import identity
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.analysis import diversity
from decouple_jax.learn import student
from decouple_jax.search import driver
from decouple_jax.search import sharding
from decouple_jax.search import store_ids


def scale_population(cfg: cfglib.SearchConfig, population: int) -> cfglib.SearchConfig:
  """``cfg`` with ``population`` candidates, split into top-k, exploratory and refinement
  children in ``cfg``'s proportions (at least one parent; refinement takes the rounding)."""
  top_k = max(1, round(population * cfg.top_k / cfg.population))
  n_explore = round(population * cfg.n_explore / cfg.population)
  n_refine = population - top_k - n_explore
  if n_refine < 0:
    raise cfglib.ConfigError(f'population {population} is too small to split like '
                             f'{cfg.top_k} + {cfg.n_explore} + {cfg.n_refine}')
  return dataclasses.replace(cfg, population=population, top_k=top_k, n_explore=n_explore,
                             n_refine=n_refine)


def scale_generations(cfg: cfglib.SearchConfig, multiplier: float) -> cfglib.SearchConfig:
  """``cfg`` with every layer's generations multiplied by ``multiplier`` (at least 1)."""
  layers = {name: dataclasses.replace(l, generations=max(1, round(multiplier * l.generations)))
            for name, l in cfg.layers.items()}
  return dataclasses.replace(cfg, layers=layers)


def _first_images(ds: datalib.Dataset, n_images: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Normalised images (n, H, W, C), labels (n,) and dataset indices (n,) of the first
  ``n_images`` training images."""
  if not 1 <= n_images <= len(ds.train_images):
    raise cfglib.ConfigError(f'n_images={n_images} must be between 1 and the '
                             f'{len(ds.train_images)} training images')
  images = np.asarray(datalib.normalize(ds.train_images[:n_images], ds.mean, ds.std))
  return images, ds.train_labels[:n_images], ds.train_index[:n_images]


class Searcher:
  """Searches the first ``n_images`` training images with one fixed network under any
  search config (same network shape and seed of its weights as ``base``)."""

  def __init__(self, base: cfglib.SearchConfig, ds: datalib.Dataset, n_images: int,
               mesh: jax.sharding.Mesh | None):
    self.model, self.variables = models.init_for_dataset(base.model, ds,
                                                         base.untrained_network_seed)
    self.images, self.labels, self.index = _first_images(ds, n_images)
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self._done: dict[cfglib.SearchConfig, dict] = {}

  def __call__(self, cfg: cfglib.SearchConfig) -> dict:
    """{'targets': L arrays (n, *S_l), 'best_loss': (n, L), 'init_loss': (n,),
    'curves': L arrays (n, G_l)} of ``cfg``'s L search layers (searched once per config)."""
    if cfg not in self._done:
      gens = '/'.join(str(l.generations) for l in cfg.layers.values())
      bar = runlog.progress(total=len(self.images), unit='img',
                            desc=f'search (population {cfg.population}, generations {gens}, '
                            f'seed {cfg.seed})')
      result = sharding.search_images(
          self.images, self.labels, self.index, cfg, (self.model, self.variables),
          mesh=self.mesh, on_batch=lambda part: bar.update(len(part.init_loss)))
      bar.close()
      self._done[cfg] = {'targets': result.targets, 'best_loss': result.best_loss,
                         'init_loss': result.init_loss, 'curves': result.curves}
    return self._done[cfg]


def _mean_losses(result: dict) -> dict:
  """Image means of a search's losses: best per layer, initial, and the curves."""
  return {'mean_best_loss': np.nanmean(result['best_loss'], 0).tolist(),
          'mean_init_loss': float(np.nanmean(result['init_loss'])),
          'mean_curves': [np.nanmean(c, 0).tolist() for c in result['curves']]}


def search_scaling(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
                   ds: datalib.Dataset | None = None, *, populations: Sequence[int],
                   generations: Sequence[float], n_images: int,
                   mesh: jax.sharding.Mesh | None = None) -> dict:
  """Mean best loss per search layer vs population size and vs generations (paper Fig. 2).

  Args:
    data_cfg: the data set (loaded if ``ds`` is None).
    search_cfg: the base search; every other setting is this one with the population or the
      generations changed.
    ds: the loaded data set, if any.
    populations: population sizes (see :func:`scale_population`).
    generations: multipliers of every layer's generations (see :func:`scale_generations`).
    n_images: how many of the first training images are searched.
    mesh: 1-D mesh with axis 'images' (default: every device).

  Returns:
    {'layers', 'n_images', 'base': {'population', 'generations'},
     'population': {'sizes', 'parts': [top_k, n_explore, n_refine] per size, 'mean_best_loss':
       (len(populations), 4), 'mean_init_loss', 'mean_curves'},
     'generations': {'multipliers', 'per_layer': (len(generations), L) generations,
       'mean_best_loss': (len(generations), 4), 'mean_init_loss', 'mean_curves'}},
    losses in nats averaged over the images; 'mean_curves' holds each setting's mean best
    loss after every generation of every layer.
  """
  ds = ds if ds is not None else datalib.load_dataset(data_cfg)
  searcher = Searcher(search_cfg, ds, n_images, mesh)
  by_population = [scale_population(search_cfg, p) for p in populations]
  by_generations = [scale_generations(search_cfg, m) for m in generations]

  def sweep(cfgs):
    stats = [_mean_losses(searcher(c)) for c in cfgs]
    return {k: [s[k] for s in stats] for k in stats[0]}
  return {
      'layers': list(search_cfg.layers), 'n_images': n_images,
      'base': {'population': search_cfg.population,
               'generations': [l.generations for l in search_cfg.layers.values()]},
      'population': {'sizes': list(populations),
                     'parts': [[c.top_k, c.n_explore, c.n_refine] for c in by_population],
                     **sweep(by_population)},
      'generations': {'multipliers': list(generations),
                      'per_layer': [[l.generations for l in c.layers.values()]
                                    for c in by_generations],
                      **sweep(by_generations)},
  }


def kept_effective_numbers(targets: np.ndarray, loss: np.ndarray, threshold: float = 0.5
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """N_eff of the kept candidates of the first k runs, averaged over images, k = 1 .. R.

  Args:
    targets: (R, n, ...) each run's best candidate for each of n images (one layer).
    loss: (R, n) their losses (cross-entropy of the true class, nats); a candidate is kept
      when its true-class probability exp(-loss) exceeds ``threshold``.
    threshold: the probability a candidate must exceed.

  Returns:
    (n_eff, images, kept), each (R,): for k = 1 .. R, the mean effective number over the
    images with at least one kept candidate among the first k runs (NaN if none has), how
    many images that is, and the mean number of kept candidates per image.
  """
  runs, n = loss.shape
  keep = np.exp(-np.asarray(loss, np.float64)) > threshold
  n_eff, images, kept = [], [], []
  for k in range(1, runs + 1):
    values = [diversity.effective_number(targets[:k][keep[:k, i], i])
              for i in range(n) if keep[:k, i].any()]
    n_eff.append(np.mean(values) if values else np.nan)
    images.append(len(values))
    kept.append(keep[:k].sum() / n)
  return np.asarray(n_eff), np.asarray(images), np.asarray(kept)


def search_diversity(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
                     ds: datalib.Dataset | None = None, *, n_runs: int, n_images: int,
                     threshold: float = 0.5, mesh: jax.sharding.Mesh | None = None) -> dict:
  """Effective number of distinct targets vs number of independent runs (paper Fig. 3).

  Args:
    data_cfg: the data set (loaded if ``ds`` is None).
    search_cfg: the search; run r uses search seed ``search_cfg.seed + r`` on the one network
      of ``search_cfg.untrained_network_seed``.
    ds: the loaded data set, if any.
    n_runs: independent runs.
    n_images: how many of the first training images are searched.
    threshold: a run's best candidate of a layer is kept when it gives the true class a
      probability (softmax of the final logits with that layer fixed to it) above this.
    mesh: 1-D mesh with axis 'images' (default: every device).

  Returns:
    {'layers', 'n_images', 'threshold', 'seeds': (n_runs,), 'runs': 1 .. n_runs, and per layer
    name a dict of (n_runs,) lists 'n_eff' (None where no image kept a candidate), 'images',
    'kept' (see :func:`kept_effective_numbers`) and 'n_eff_all' (N_eff of every run's
    candidate, no threshold)}.
  """
  if n_runs < 1:
    raise cfglib.ConfigError(f'n_runs={n_runs} must be at least 1')
  ds = ds if ds is not None else datalib.load_dataset(data_cfg)
  searcher = Searcher(search_cfg, ds, n_images, mesh)
  seeds = [search_cfg.seed + r for r in range(n_runs)]
  results = [searcher(dataclasses.replace(search_cfg, seed=s)) for s in seeds]
  return {'n_images': n_images, 'seeds': seeds, 'runs': list(range(1, n_runs + 1)),
          **runs_diversity(list(search_cfg.layers),
                           lambda layer: [r['targets'][layer] for r in results],
                           [r['best_loss'] for r in results], threshold)}


def runs_diversity(layer_names: Sequence[str], targets: Callable[[int], Sequence[np.ndarray]],
                   best_loss: Sequence[np.ndarray], threshold: float) -> dict:
  """Per search layer, the effective number of distinct targets among R runs' targets of the
  same n images (:func:`kept_effective_numbers`, for k = 1 .. R runs).

  Args:
    layer_names: the search's L layers (``search_cfg.layers``).
    targets: ``targets(layer)`` -> R arrays (n, ...): each run's best candidate of that layer.
    best_loss: R arrays (n, L): each run's best loss per layer (nats).
    threshold: the true-class probability a candidate must exceed to be kept.

  Returns:
    {'layers', 'threshold', and per layer name a dict of (R,) lists 'n_eff' (None where no
    image kept a candidate), 'images', 'kept' and 'n_eff_all' (N_eff of every run's
    candidate, no threshold)}.
  """
  out = {'layers': list(layer_names), 'threshold': threshold}
  for layer, name in enumerate(layer_names):
    layer_targets = np.stack(targets(layer))
    loss = np.stack([b[:, layer] for b in best_loss])
    n_eff, images, kept = kept_effective_numbers(layer_targets, loss, threshold)
    # Threshold 0 keeps every finite candidate: how far apart the runs' targets are at all,
    # which a small search that seldom reaches the threshold would otherwise hide.
    n_eff_all, _, _ = kept_effective_numbers(layer_targets, loss, 0.0)
    # None (JSON null), not NaN, where no image kept a candidate: NaN is not valid JSON.
    out[name] = {'n_eff': [None if np.isnan(v) else float(v) for v in n_eff],
                 'images': images.tolist(), 'kept': kept.tolist(),
                 'n_eff_all': [None if np.isnan(v) else float(v) for v in n_eff_all]}
  return out


def accuracy_vs_compute(exp: cfglib.ExperimentConfig, workdir: str | pathlib.Path, *,
                        populations: Sequence[int], generations: Sequence[float],
                        searches: str | pathlib.Path, ds: datalib.Dataset | None = None
                        ) -> dict:
  """Student test accuracy vs the search compute its targets got (paper Fig. 4).

  Every setting searches the whole training split and trains ``exp.student`` on the result,
  so each costs a full search plus a student run: scale the data down (``data.train_limit``)
  for a quick look. Resumable: the searches are kept by
  :func:`decouple_jax.search.driver.cached_search` in
  ``searches``, the students in ``workdir/<config hash>/``, and a finished student is read,
  not retrained.

  Args:
    exp: the experiment; its search is the base setting.
    workdir: where the students go.
    populations: population sizes (see :func:`scale_population`).
    generations: multipliers of every layer's generations (see :func:`scale_generations`).
    searches: where the target stores go.
    ds: the loaded data set, if any.

  Returns:
    {'population': {'sizes', 'test_accuracy'}, 'generations': {'multipliers', 'per_layer',
    'test_accuracy'}, 'train_images'}: test accuracies as fractions, of the student's
    hold-out-selected epoch.
  """
  ds = ds if ds is not None else datalib.load_dataset(exp.data)
  workdir = pathlib.Path(workdir)

  def accuracy(search_cfg: cfglib.SearchConfig) -> float:
    config = identity.student(exp.data, ds, search_cfg, exp.student, store_ids.UNTRAINED)
    run = workdir / identity.hash_of(config) / 'student'
    results = identity.finished(run / 'results.json', config, required='diagnostics')
    if results is None:
      targets = driver.cached_search(exp.data, search_cfg, ds, searches)
      results = student.train_student(exp.data, search_cfg, exp.student, run, targets, ds=ds)
    return results['test_accuracy']

  by_generations = [scale_generations(exp.search, m) for m in generations]
  return {
      'train_images': len(ds.train_images),
      'population': {'sizes': list(populations),
                     'test_accuracy': [accuracy(scale_population(exp.search, p))
                                       for p in populations]},
      'generations': {'multipliers': list(generations),
                      'per_layer': [[l.generations for l in c.layers.values()]
                                    for c in by_generations],
                      'test_accuracy': [accuracy(c) for c in by_generations]},
  }
