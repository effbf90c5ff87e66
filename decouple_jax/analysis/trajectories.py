"""Representations over training (PAPER.md section 6, paper Figs. 5-7), logged per epoch.

:func:`make_epoch_callback` gives an ``epoch_callback`` for
:func:`decouple_jax.learn.trainer.fit`: after every epoch it runs the model on a fixed set of
training images and logs, per block, the mean cosine distance between the model's block
outputs and the searched targets of those images (Fig. 5), and the within- and between-class
collision entropy of the block outputs (Figs. 6-7). It is opt-in: a run without it computes
nothing extra. The records land in the run's ``metrics.jsonl`` under :func:`metric_name` keys.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from decouple_jax import data as datalib
from decouple_jax.analysis import diversity
from decouple_jax.learn import trainer

# What is logged per block, in the order the plots read them.
MEASURES = ('cosine_distance', 'within_entropy', 'between_entropy')


def metric_name(measure: str, block: int) -> str:
  """The ``metrics.jsonl`` key of ``measure`` (one of :data:`MEASURES`) of block ``block``."""
  return f'repr_{measure}_block{block}'


def representation_metrics(blocks: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                           labels: np.ndarray) -> dict:
  """Per block: mean cosine distance to the targets and within/between-class entropies.

  Args:
    blocks: per block, the model's outputs (N, H_l, W_l, C_l) for N images.
    targets: per block, the searched targets of the same images, same shapes.
    labels: (N,) their classes.

  Returns:
    {metric_name(measure, l): float} for every measure and block; distances are 1 - cos
    averaged over images, entropies in nats (see :mod:`decouple_jax.analysis.diversity`).
  """
  out = {}
  for l, (h, t) in enumerate(zip(blocks, targets)):
    within, between = diversity.class_collision_entropy(h, labels)
    out[metric_name('cosine_distance', l)] = float(diversity.cosine_distance(h, t).mean())
    out[metric_name('within_entropy', l)] = within
    out[metric_name('between_entropy', l)] = between
  return out


def make_epoch_callback(model, ds: datalib.Dataset, targets: Sequence[np.ndarray], *,
                        batch_size: int, bn_batch_stats: bool
                        ) -> Callable[[int, dict], dict]:
  """An ``epoch_callback`` for :func:`decouple_jax.learn.trainer.fit` logging
  :func:`representation_metrics` of ``model`` on the first N training images of ``ds``.

  Args:
    model: the network being trained; its block taps must have the targets' shapes (the
      search network's widths).
    ds: the data set trained on.
    targets: per block, the searched targets (N, H_l, W_l, C_l) of ``ds``'s first N training
      images (e.g. ``TargetStore.read(np.arange(N))[:3]``). The logits are not compared.
    batch_size: images per forward pass.
    bn_batch_stats: BatchNorm as in the run's evaluation (``TrainConfig.bn_batch_stats``).

  Returns:
    ``callback(epoch, {'variables': ...}) -> dict`` of floats.
  """
  n = len(targets[0])
  images, labels = ds.train_images[:n], ds.train_labels[:n]
  predict = trainer.make_predict_fn(model, bn_batch_stats, ds.mean, ds.std)

  def callback(epoch: int, state: dict) -> dict:
    del epoch
    parts = [predict(state['variables'], images[s:s + batch_size]) for s in range(0, n,
                                                                                  batch_size)]
    blocks = [np.concatenate([np.asarray(p[l]) for p in parts]) for l in range(len(targets))]
    for l, (h, t) in enumerate(zip(blocks, targets)):
      if h.shape != np.shape(t):
        raise ValueError(f'block {l} output {h.shape} and target {np.shape(t)} differ: the '
                         'model needs the search network\'s widths')
    return representation_metrics(blocks, targets, labels)
  return callback


def trajectory(records: Sequence[dict], measure: str, blocks: int = 3
               ) -> tuple[list[int], np.ndarray]:
  """(epochs, values (epochs, blocks)) of ``measure`` from a run's ``metrics.jsonl`` records
  (those that logged it)."""
  logged = [r for r in records if metric_name(measure, 0) in r]
  return ([r['epoch'] for r in logged],
          np.array([[r[metric_name(measure, l)] for l in range(blocks)] for r in logged]))
