"""Runs the paper's analyses (docs/method.md section 7) for one experiment: searches, training
runs, figures.

:func:`run_analysis` is what ``launch/analyze.py`` calls; ``exp.analysis``
(:class:`decouple_jax.config.AnalysisConfig`) says how much each analysis searches and trains.
"""

from __future__ import annotations

import dataclasses
import pathlib

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import locks
from decouple_jax.analysis import plots
from decouple_jax.analysis import scaling
from decouple_jax.analysis import trajectories
from decouple_jax.search import driver

# Paper figures: scaling Fig. 2, diversity Fig. 3, accuracy Fig. 4, trajectories Figs. 5-7.
ANALYSES = ('scaling', 'diversity', 'accuracy', 'trajectories')


def training_experiment(exp: cfglib.ExperimentConfig) -> cfglib.ExperimentConfig:
  """``exp`` with the training split cut to ``exp.analysis.train_images`` (if > 0): the data
  the accuracy and trajectory analyses search and train on."""
  if not exp.analysis.train_images:
    return exp
  return dataclasses.replace(exp, data=dataclasses.replace(
      exp.data, train_limit=exp.analysis.train_images))


@locks.holding('workdir')
def run_analysis(exp: cfglib.ExperimentConfig, workdir: str | pathlib.Path, which: str) -> dict:
  """Runs analysis ``which`` of ``exp``, sized by ``exp.analysis``; resumable.

  Args:
    exp: the experiment; its data set, search, student and SGD settings are analysed.
    workdir: gets ``<analysis>.png`` and ``<analysis>.json`` per analysis (the trajectories:
      ``target_distance`` and ``class_entropy``), and the runs behind them: ``searches/``
      (target stores by config hash, shared by the analyses), ``accuracy/`` (a student per
      search setting) and ``trajectories/`` (an SGD run and a student).
    which: one of :data:`ANALYSES` or 'all':
      'scaling' (paper Fig. 2): mean best loss per search layer vs population and generations,
        on the first ``n_images`` training images.
      'diversity' (Fig. 3): effective number of distinct targets vs independent runs.
      'accuracy' (Fig. 4): student test accuracy vs the population and generations of the
        search of its ``train_images`` training images.
      'trajectories' (Figs. 5-7): per epoch of an SGD run and a student of the same network,
        the cosine distance of block outputs to the searched targets and within/between-class
        collision entropy, on ``probe_images`` training and hold-out images.

  Returns:
    {analysis name: its result dict (also in its JSON)}.
  """
  if which not in ANALYSES + ('all',):
    raise cfglib.ConfigError(f'analysis={which!r} is not one of {ANALYSES + ("all",)}')
  todo = ANALYSES if which == 'all' else (which,)
  workdir = pathlib.Path(workdir)
  a = exp.analysis
  ds = datalib.load_dataset(exp.data)
  about = plots.describe(ds.name, exp.name, exp.scale)
  pop = exp.search.population
  populations = a.populations or (pop // 2, pop, 2 * pop)
  out = {}
  if 'scaling' in todo:
    out['scaling'] = scaling.search_scaling(exp.data, exp.search, ds, populations=populations,
                                            generations=a.generations, n_images=a.n_images)
    plots.plot_scaling(out['scaling'], workdir / 'scaling.png', about)
  if 'diversity' in todo:
    out['diversity'] = scaling.search_diversity(exp.data, exp.search, ds, n_runs=a.n_runs,
                                                n_images=a.n_images, threshold=a.threshold)
    plots.plot_diversity(out['diversity'], workdir / 'diversity.png', about)
  train_exp = training_experiment(exp)
  if {'accuracy', 'trajectories'} & set(todo):
    train_ds = datalib.load_dataset(train_exp.data) if train_exp is not exp else ds
  if 'accuracy' in todo:
    out['accuracy'] = scaling.accuracy_vs_compute(
        train_exp, workdir / 'accuracy', populations=populations, generations=a.generations,
        searches=workdir / 'searches', ds=train_ds)
    plots.plot_accuracy(out['accuracy'], workdir / 'accuracy.png', about)
  if 'trajectories' in todo:
    stores = [driver.cached_search(train_exp.data, train_exp.search, train_ds,
                                   workdir / 'searches', split)
              for split in ('train', 'holdout')]
    runs = trajectories.run_trajectories(train_exp, workdir / 'trajectories', train_ds, *stores)
    plots.plot_target_distance(runs, workdir / 'target_distance.png', about)
    plots.plot_class_entropy(runs, workdir / 'class_entropy.png', about)
    out['trajectories'] = runs
  return out
