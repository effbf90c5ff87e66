"""Representations over training (paper section 4.5, Figs. 5-7), logged per epoch.

:func:`make_epoch_callback` gives an ``epoch_callback`` for
:func:`decouple_jax.learn.trainer.fit`: after every epoch it runs the model on fixed sets of
images ("probes": training images, and hold-out images that were searched too) and logs, per
block, the mean cosine distance between the model's block outputs and the searched targets of
those images (Fig. 5), and the within- and between-class collision entropy of the block
outputs (Figs. 6-7). It is opt-in: a run without it computes nothing extra. The records land in
the run's ``metrics.jsonl`` under :func:`metric_name` keys.

:func:`run_trajectories` is the experiment of the figures: the same network trained end to end
with SGD and as the student, both logging these measures.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import runlog
from decouple_jax.analysis import diversity
from decouple_jax.learn import sgd
from decouple_jax.learn import student
from decouple_jax.learn import trainer
from decouple_jax.search import store_ids
from decouple_jax.search.target_store import TargetStore

# What is logged per block, in the order the plots read them.
MEASURES = ('cosine_distance', 'within_entropy', 'between_entropy')


class Probe(NamedTuple):
  """Images whose block outputs are measured after every epoch.

  Attributes:
    images: (N, H, W, C) uint8, as the data set stores them.
    labels: (N,) int classes.
    targets: per block, the searched targets (N, H_l, W_l, C_l) of those images.
  """
  images: np.ndarray
  labels: np.ndarray
  targets: Sequence[np.ndarray]


def metric_name(measure: str, block: int, probe: str = 'train') -> str:
  """The ``metrics.jsonl`` key of ``measure`` (one of :data:`MEASURES`) of block ``block`` on
  the probe set ``probe``."""
  return f'repr_{probe}_{measure}_block{block}'


def representation_metrics(blocks: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                           labels: np.ndarray, probe: str = 'train') -> dict:
  """Per block: mean cosine distance to the targets and within/between-class entropies.

  Args:
    blocks: per block, the model's outputs (N, H_l, W_l, C_l) for N images.
    targets: per block, the searched targets of the same images, same shapes.
    labels: (N,) their classes.
    probe: name of the image set, part of the metric names.

  Returns:
    {metric_name(measure, l, probe): float} for every measure and block; distances are
    1 - cos averaged over images, entropies in nats (see
    :mod:`decouple_jax.analysis.diversity`).
  """
  out = {}
  for l, (h, t) in enumerate(zip(blocks, targets)):
    if h.shape != np.shape(t):
      raise ValueError(f'block {l} output {h.shape} and target {np.shape(t)} differ: the '
                       'model needs the search network\'s widths')
    within, between = diversity.class_collision_entropy(h, labels)
    out[metric_name('cosine_distance', l, probe)] = float(diversity.cosine_distance(h, t).mean())
    out[metric_name('within_entropy', l, probe)] = within
    out[metric_name('between_entropy', l, probe)] = between
  return out


def probes_from_stores(ds: datalib.Dataset, n: int, train_store: TargetStore,
                       holdout_store: TargetStore | None = None) -> dict[str, Probe]:
  """{'train': the first ``n`` training images, 'holdout': the first ``n`` hold-out images}
  with their searched targets (the hold-out set only if its store is given)."""
  def probe(images, labels, store):
    k = min(n, len(images))
    return Probe(images[:k], labels[:k], store.read(np.arange(k), layers=range(3)))
  probes = {'train': probe(ds.train_images, ds.train_labels, train_store)}
  if holdout_store is not None:
    probes['holdout'] = probe(ds.holdout_images, ds.holdout_labels, holdout_store)
  return probes


def make_epoch_callback(ds: datalib.Dataset, probes: Mapping[str, Probe], *, batch_size: int,
                        bn_batch_stats: bool) -> Callable[[int, dict], dict]:
  """An ``epoch_callback`` for :func:`decouple_jax.learn.trainer.fit` logging
  :func:`representation_metrics` of the model being trained on every probe set.

  Args:
    ds: the data set trained on (its normalisation is used).
    probes: {name: :class:`Probe`}, e.g. :func:`probes_from_stores`. The model's block taps
      must have the targets' shapes (the search network's widths); logits are not compared.
    batch_size: images per forward pass.
    bn_batch_stats: BatchNorm as in the run's evaluation (``TrainConfig.bn_batch_stats``).

  Returns:
    ``callback(epoch, {'model': ..., 'variables': ...}) -> dict`` of floats.
  """
  predict = {}

  def callback(epoch: int, state: dict) -> dict:
    del epoch
    model = state['model']
    # One jitted forward per model: the SGD run and the student share a callback.
    if id(model) not in predict:
      predict[id(model)] = trainer.make_predict_fn(model, bn_batch_stats, ds.mean, ds.std)
    out = {}
    for name, (images, labels, targets) in probes.items():
      parts = [predict[id(model)](state['variables'], images[s:s + batch_size])
               for s in range(0, len(images), batch_size)]
      blocks = [np.concatenate([np.asarray(p[l]) for p in parts]) for l in range(len(targets))]
      out.update(representation_metrics(blocks, targets, labels, name))
    return out
  return callback


def trajectory(records: Sequence[dict], measure: str, probe: str = 'train', blocks: int = 3
               ) -> tuple[list[int], np.ndarray]:
  """(epochs, values (epochs, blocks)) of ``measure`` on ``probe`` from a run's
  ``metrics.jsonl`` records (those that logged it)."""
  logged = [r for r in records if metric_name(measure, 0, probe) in r]
  return ([r['epoch'] for r in logged],
          np.array([[r[metric_name(measure, l, probe)] for l in range(blocks)]
                    for r in logged]).reshape(len(logged), blocks))


def run_trajectories(exp: cfglib.ExperimentConfig, workdir: str | pathlib.Path,
                     ds: datalib.Dataset, train_targets: str | pathlib.Path,
                     holdout_targets: str | pathlib.Path, *, mesh=None) -> dict:
  """Trains one network twice, logging :func:`representation_metrics` after every epoch on
  ``exp.analysis.probe_images`` training and hold-out images (paper Figs. 5-7).

  The network is ``exp.student.model`` (the search network's widths, so its block outputs
  have the targets' shapes): once end to end with cross-entropy under ``exp.sgd.train``
  ('SGD'), once as the student on the searched targets under ``exp.student``. Both runs
  resume from ``workdir/sgd`` and ``workdir/student``.

  Args:
    exp: the experiment (its data config must be the one ``ds`` was loaded with).
    workdir: where the two runs go.
    ds: the data set.
    train_targets, holdout_targets: the target stores of ``ds``'s training and hold-out
      splits under ``exp.search``.
    mesh: data-parallel mesh; default every device.

  Returns:
    {method label: the run's ``metrics.jsonl`` records}, as the plots take them.
  """
  workdir = pathlib.Path(workdir)
  train_store = store_ids.open_finished(train_targets, store_ids.StoreId(exp.data, exp.search, ds))
  holdout_store = store_ids.open_finished(holdout_targets,
                                          store_ids.StoreId(exp.data, exp.search, ds, 'holdout'))
  callback = make_epoch_callback(
      ds, probes_from_stores(ds, exp.analysis.probe_images, train_store, holdout_store),
      batch_size=exp.student.train.eval_batch, bn_batch_stats=exp.student.train.bn_batch_stats)
  sgd_cfg = cfglib.SGDConfig(model=exp.student.model, train=exp.sgd.train)
  sgd.train_sgd(exp.data, sgd_cfg, workdir / 'sgd', ds=ds, mesh=mesh, epoch_callback=callback)
  student.train_student(exp.data, exp.search, exp.student, workdir / 'student', train_targets,
                        ds=ds, mesh=mesh, epoch_callback=callback)
  label = f'search-based ({exp.student.variant})'
  return {name: runlog.JsonLines(workdir / run / 'metrics.jsonl').records()
          for name, run in (('SGD', 'sgd'), (label, 'student'))}
