"""The SGD baseline: the same network family trained end to end with cross-entropy."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import optax

from decouple_jax import config as cfglib
from decouple_jax import data
from decouple_jax import identity
from decouple_jax import models

from decouple_jax.learn import trainer


def cross_entropy_loss_fn(model, num_classes: int, label_smoothing: float = 0.0
                          ) -> trainer.LossFn:
  """Batch-mean cross-entropy of the logits tap (in float32 whatever the compute dtype), with
  batch-statistics BatchNorm."""
  def loss_fn(params, batch_stats, batch: trainer.Batch):
    taps, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch.images,
                                use_running_average=False, mutable=['batch_stats'])
    logits = taps[-1].astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(batch.labels, num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == batch.labels)
    return loss, (updates['batch_stats'], {'train_accuracy': acc})
  return loss_fn


def with_network(sgd_cfg: cfglib.SGDConfig, model_cfg: cfglib.ModelConfig) -> cfglib.SGDConfig:
  """``sgd_cfg`` training the network of ``model_cfg`` (e.g. the student's) end to end; the
  tap settings, which only a student's loss reads, are dropped."""
  return dataclasses.replace(sgd_cfg, model=dataclasses.replace(
      model_cfg, tap='post_gelu', tap_scale=False))


def train_sgd(data_cfg: cfglib.DataConfig, sgd_cfg: cfglib.SGDConfig,
              workdir: str | pathlib.Path, *, ds=None, mesh=None,
              epoch_callback=None) -> dict:
  """Trains the SGD baseline; resumable from ``workdir``.

  Args:
    data_cfg: the data set (loaded unless ``ds`` is given).
    sgd_cfg: network and training settings.
    workdir: checkpoints, ``metrics.jsonl`` and ``results.json``.
    ds: an already loaded :class:`decouple_jax.data.Dataset` for ``data_cfg``.
    mesh: data-parallel mesh; default every device.
    epoch_callback: extra per-epoch metrics, see :func:`decouple_jax.learn.trainer.fit` (e.g.
      :func:`decouple_jax.analysis.trajectories.make_epoch_callback`).

  Returns:
    The results dict of :func:`decouple_jax.learn.trainer.fit` (test accuracy of the
    hold-out-selected weights, ...), also written to ``workdir/results.json``.
  """
  ds = ds if ds is not None else data.load_dataset(data_cfg)
  model, variables = models.init_for_dataset(sgd_cfg.model, ds, sgd_cfg.train.seed)
  loss_fn = cross_entropy_loss_fn(model, ds.num_classes, sgd_cfg.train.optim.label_smoothing)
  return trainer.fit(model, variables, loss_fn, trainer.TrainData.from_dataset(ds),
                     sgd_cfg.train, workdir, config=identity.sgd(data_cfg, ds, sgd_cfg),
                     name=f'sgd convs{sgd_cfg.model.convs_per_block}', mesh=mesh,
                     epoch_callback=epoch_callback,
                     frozen=tuple(f'block{b}' for b in sgd_cfg.frozen_blocks))
