"""BatchNorm statistics of a trained network, measured over a data set.

Students train with batch statistics (the paper keeps no running statistics), and with the
paper's momentum of 0.6 their running averages remember only the last few batches. A network
that is to be searched in needs statistics that treat every candidate alike (inference form),
so they are measured once: a training-mode pass over whole batches of the data, each
BatchNorm's batch mean and variance averaged over the batches (precise BN).
"""

from __future__ import annotations

import jax
import numpy as np

from decouple_jax import data as datalib


def population_batch_stats(model, variables, images: np.ndarray, mean: np.ndarray,
                           std: np.ndarray, batch_size: int):
  """``variables`` with every BatchNorm's statistics replaced by their mean over ``images``.

  Args:
    model: the network (an :class:`~decouple_jax.models.AirbenchNet`).
    variables: its {'params', 'batch_stats'}.
    images: (N, H, W, C) uint8 images; whole batches of ``batch_size`` are used (at least
      one, the remainder dropped), each normalised with the training statistics as in
      training.
    mean, std: (C,) normalisation statistics of pixels / 255.
    batch_size: images per batch: the batch statistics are those a training step sees.

  Returns:
    {'params': unchanged, 'batch_stats': per BatchNorm, 'mean' and 'var' averaged over the
    batches}.
  """
  batches = max(1, len(images) // batch_size)
  # Momentum 0: the "running" statistics a step returns are exactly that batch's.
  current = model.clone(bn_momentum=0.0)

  @jax.jit
  def batch_stats(x):
    _, updates = current.apply(variables, datalib.normalize(x, mean, std),
                               use_running_average=False, mutable=['batch_stats'])
    return updates['batch_stats']

  total = None
  for b in range(batches):
    stats = batch_stats(images[b * batch_size:(b + 1) * batch_size])
    total = stats if total is None else jax.tree.map(lambda a, s: a + s, total, stats)
  return {**variables, 'batch_stats': jax.tree.map(lambda a: a / batches, total)}
