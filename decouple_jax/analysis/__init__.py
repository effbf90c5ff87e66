"""The paper's analyses (PAPER.md section 6): search compute scaling, target diversity, and
representations over training.

:func:`run_analysis` is what ``launch/analyze.py`` calls (scaling, diversity, accuracy). The
trajectories over training (:mod:`decouple_jax.analysis.trajectories`) are logged by a training
run given its ``make_epoch_callback`` and drawn by ``plots.plot_target_distance`` and
``plots.plot_class_entropy``.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax.analysis import plots
from decouple_jax.analysis import scaling
from decouple_jax.analysis import trajectories
from decouple_jax.analysis.diversity import class_collision_entropy
from decouple_jax.analysis.diversity import collision_entropy
from decouple_jax.analysis.diversity import cosine_distance
from decouple_jax.analysis.diversity import effective_number

ANALYSES = ('scaling', 'diversity', 'accuracy')
# 'all' leaves out 'accuracy': it searches the whole training split per setting.
ALL = ('scaling', 'diversity')


def run_analysis(exp: cfglib.ExperimentConfig, workdir: str | pathlib.Path, which: str, *,
                 populations: Sequence[int] = (), generations: Sequence[float] = (0.5, 1, 2),
                 n_images: int = 64, n_runs: int = 4, threshold: float = 0.5) -> dict:
  """Runs analysis ``which`` of ``exp``'s search.

  Args:
    exp: the experiment; its data set and search config are analysed.
    workdir: gets ``<analysis>.png`` and ``<analysis>.json`` per analysis run (and
      ``accuracy/``, the searches and students of the accuracy analysis, resumable).
    which: 'scaling' (paper Fig. 2), 'diversity' (Fig. 3), 'all' (both), or 'accuracy'
      (Fig. 4: a search of the whole training split and a student per setting; costly).
    populations: population sizes of the scaling and accuracy sweeps; empty: half, one and
      two times the config's.
    generations: multipliers of every layer's generations in those sweeps.
    n_images: how many of the first training images scaling and diversity search.
    n_runs: independent search runs of the diversity analysis.
    threshold: true-class probability a diversity run's candidate must exceed to be kept.

  Returns:
    {analysis name: its result dict (also in its JSON)}.
  """
  if which not in ANALYSES + ('all',):
    raise cfglib.ConfigError(f'analysis={which!r} is not one of {ANALYSES + ("all",)}')
  todo = ALL if which == 'all' else (which,)
  workdir = pathlib.Path(workdir)
  ds = datalib.load_dataset(exp.data)
  about = plots.describe(ds.name, exp.name, exp.scale)
  pop = exp.search.population
  populations = tuple(populations) or (pop // 2, pop, 2 * pop)
  out = {}
  if 'scaling' in todo:
    out['scaling'] = scaling.search_scaling(exp.data, exp.search, ds, populations=populations,
                                            generations=generations, n_images=n_images)
    plots.plot_scaling(out['scaling'], workdir / 'scaling.png', about)
  if 'diversity' in todo:
    out['diversity'] = scaling.search_diversity(exp.data, exp.search, ds, n_runs=n_runs,
                                                n_images=n_images, threshold=threshold)
    plots.plot_diversity(out['diversity'], workdir / 'diversity.png', about)
  if 'accuracy' in todo:
    out['accuracy'] = scaling.accuracy_vs_compute(exp, workdir / 'accuracy', ds=ds,
                                                  populations=populations,
                                                  generations=generations)
    plots.plot_accuracy(out['accuracy'], workdir / 'accuracy.png', about)
  return out
