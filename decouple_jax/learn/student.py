"""The student (paper section 4.2; docs/method.md section 4): a network that regresses onto the
cached searched targets.

Loss per batch, with S the supervised blocks (every block: {0, 1, 2} for the three-block
family, or all but block 0 for 'skip_block0'):

  (1/|S|) * sum_{l in S} mse_coef * MSE(tap_l(x), target_l(x))
  + kl_weight * KL(softmax(target_logits) || softmax(head(stop_gradient(block2(x)))))

The head sits behind ``stop_gradient`` (``AirbenchNet(detach_head=True)``), so the conv body
only ever sees the MSE terms and the KL term only ever trains the head. True labels are
never used by the loss; they only appear in the logged training accuracy (and in the
diagnostics computed after training, see :mod:`decouple_jax.learn.diagnostics`).
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import distributed
from decouple_jax import identity
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.learn import diagnostics
from decouple_jax.learn import trainer
from decouple_jax.search import store_ids


def supervised_blocks(variant: str, num_blocks: int) -> tuple[int, ...]:
  """Blocks whose outputs regress onto targets, of ``num_blocks``: 'all_layers' -> every one
  (0, 1, 2 for three), 'skip_block0' -> all but block 0."""
  return tuple(range({'all_layers': 0, 'skip_block0': 1}[variant], num_blocks))


def squared_error(pred: jax.Array, target: jax.Array, reduction: str) -> jax.Array:
  """Squared error of (B, ...) arrays: per-element mean ('mean') or per-image sum ('sum'),
  averaged over the batch. Scalar."""
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  err = err.reshape(err.shape[0], -1)
  per_image = err.mean(1) if reduction == 'mean' else err.sum(1)
  return per_image.mean()


def kl_to_searched(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """Batch-mean KL(softmax(target_logits) || softmax(logits)); (B, K) inputs, nats, computed in
  float32."""
  log_p = jax.nn.log_softmax(target_logits.astype(jnp.float32))
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32))
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def student_loss_fn(model: models.AirbenchNet, cfg: cfglib.StudentConfig) -> trainer.LossFn:
  """The student's loss for :func:`decouple_jax.learn.trainer.fit`.

  ``batch.extras`` are the searched targets at the batch's positions, one per tap:
  (B, H_l, W_l, w_l) for each block, then (B, K) logits. ``cfg.augmented_targets`` says
  whether the block targets of an augmented view are mirrored with it ('flip') or also shifted
  with its crop ('follow', :func:`decouple_jax.data.follow_views`); the logits have no layout.
  """
  if not model.detach_head:
    raise ValueError('the student needs AirbenchNet(detach_head=True): the head must sit '
                     'behind stop_gradient')
  num_blocks = len(model.widths)
  blocks = supervised_blocks(cfg.variant, num_blocks)

  def loss_fn(params, batch_stats, batch: trainer.Batch):
    taps, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch.images,
                                use_running_average=False, mutable=['batch_stats'])
    targets = batch.extras[:num_blocks]
    if batch.views is not None and cfg.augmented_targets == 'flip':
      targets = [datalib.flip_with_mask(t, batch.views.flipped) for t in targets]
    elif batch.views is not None and cfg.augmented_targets == 'follow':
      targets = [datalib.follow_views(t, batch.views, batch.images.shape[1:3]) for t in targets]
    mse = {l: squared_error(taps[l], targets[l], cfg.mse_reduction) for l in range(num_blocks)}
    body = sum(cfg.mse_coef * mse[l] for l in blocks) / len(blocks)
    kl = kl_to_searched(batch.extras[-1], taps[-1])
    metrics = {f'mse_block{l}': v for l, v in mse.items()}
    metrics.update(kl=kl, train_accuracy=jnp.mean(jnp.argmax(taps[-1], -1) == batch.labels))
    return body + cfg.kl_weight * kl, (updates['batch_stats'], metrics)
  return loss_fn


def fit_student(ds: datalib.Dataset, targets, student_cfg: cfglib.StudentConfig, *,
                workdir: str | pathlib.Path | None = None, config: dict | None = None,
                mesh=None, epoch_callback=None, init_variables=None) -> dict:
  """Trains a student on searched targets: arrays in, trained variables and metrics out.

  The in-memory entry point (:func:`train_student` is the same over a target store on disk).

  Args:
    ds: the data set; the student trains on its training split, selects its epoch on the
      hold-out split and is tested on the test split.
    targets: the searched targets of ``ds.train_images``, one array per search layer,
      (N, *S_l) in image order (e.g. ``search_images(...).targets``; host or device arrays,
      kept in their dtype), or ``read(positions (B,)) -> arrays (B, *S_l)`` for targets too
      large for the devices (streamed with prefetch).
    student_cfg: the learning network, loss and training settings.
    workdir: None (default) trains in memory; a directory makes the run resumable there
      (checkpoints, ``metrics.jsonl``, ``results.json``).
    config: the run's identity, recorded in ``workdir`` (default: a note that the run is the
      caller's own; :func:`train_student` gives :func:`decouple_jax.identity.student`).
    mesh: data-parallel mesh; default every device.
    epoch_callback: extra per-epoch metrics, as for :func:`decouple_jax.learn.trainer.fit`.
    init_variables: start from these {'params', 'batch_stats'} (e.g. a previous student's:
      a warm start) instead of a fresh initialisation from ``student_cfg.train.seed``.

  Returns:
    :func:`decouple_jax.learn.trainer.fit`'s results (test accuracy of the hold-out-selected
    weights, the per-epoch history is in ``workdir/metrics.jsonl`` if any, ...), with
    ``variables`` (the selected weights) and ``model``.
  """
  model, variables = models.init_for_dataset(student_cfg.model, ds, student_cfg.train.seed,
                                             detach_head=True)
  if init_variables is not None:
    if jax.tree.structure(init_variables) != jax.tree.structure(variables):
      raise cfglib.ConfigError('init_variables do not fit student.model: a warm start needs '
                               'a network of the same configuration')
    variables = init_variables
  shapes = models.tap_shapes(model, ds.image_shape)
  found = tuple(tuple(t.shape[1:]) for t in (targets(np.arange(1)) if callable(targets)
                                              else targets))
  if found != shapes:
    raise cfglib.ConfigError(f'student taps {shapes} do not match the targets {found}: set '
                             'student.model.widths to search.model.widths')
  train_data = trainer.TrainData.from_dataset(
      ds, extras=() if callable(targets) else tuple(targets),
      stream=targets if callable(targets) else None)
  results = trainer.fit(
      model, variables, student_loss_fn(model, student_cfg), train_data, student_cfg.train,
      workdir, config=config if config is not None else {'run': 'fit_student'},
      name=f'student {student_cfg.variant}', mesh=mesh, epoch_callback=epoch_callback)
  return {**results, 'model': model}


def train_student(data_cfg: cfglib.DataConfig, search_cfg: cfglib.SearchConfig,
                  student_cfg: cfglib.StudentConfig, workdir: str | pathlib.Path,
                  targets: str | pathlib.Path, *,
                  holdout_targets: str | pathlib.Path | None = None,
                  ds: datalib.Dataset | None = None, mesh=None, epoch_callback=None,
                  network_id: str = store_ids.UNTRAINED, init_variables=None) -> dict:
  """:func:`fit_student` on the searched targets in the store ``targets``; resumable from
  ``workdir``.

  Args:
    data_cfg, search_cfg: the configs the target store was made with (checked).
    student_cfg: the learning network, loss and training settings.
    workdir: checkpoints, ``metrics.jsonl``, ``results.json``.
    targets: the target store directory (``launch/search.py`` writes WORKDIR/targets). Kept
      on the devices if it needs at most ``student.device_targets_gb``, else streamed.
    holdout_targets: the hold-out split's target store (``run_search(split='holdout')``), or
      None; with it the diagnostics include R^2 on images the student never trained on.
    ds: the loaded data set, if any.
    mesh, epoch_callback, init_variables: as for :func:`fit_student`.
    network_id: the network the targets were searched in (default the untrained one); the
      stores must say the same.

  Returns:
    The results dict (test accuracy of the hold-out-selected weights, ..., and the
    ``diagnostics`` of :func:`decouple_jax.learn.diagnostics.student_diagnostics` of the
    selected weights), also written to ``workdir/results.json``, with ``variables`` of the
    selected student.
  """
  ds = ds if ds is not None else datalib.load_dataset(data_cfg)
  store_id = lambda split: store_ids.StoreId(data_cfg, search_cfg, ds, split, network_id)
  store = store_ids.open_finished(targets, store_id('train'))
  # Opened before training, so a wrong path fails now rather than after the last epoch.
  holdout_store = (store_ids.open_finished(holdout_targets, store_id('holdout'))
                   if holdout_targets is not None else None)
  on_device = store.put_on_devices(int(student_cfg.device_targets_gb * 2**30))
  # Streamed targets keep the store dtype, as put_on_devices does, so both paths feed the
  # train step the same dtypes.
  start = 'fresh' if init_variables is None else cfglib.hash_tree(init_variables)
  results = fit_student(
      ds, on_device or functools.partial(store.read, dtype=store.value_dtype), student_cfg,
      workdir=workdir, mesh=mesh, epoch_callback=epoch_callback, init_variables=init_variables,
      config=identity.student(data_cfg, ds, search_cfg, student_cfg, network_id, start))
  model = results.pop('model')
  results['diagnostics'] = diagnostics.student_diagnostics(
      model, results['variables'], ds, store, holdout_store, student_cfg)
  if distributed.is_main():
    runlog.write_json(pathlib.Path(workdir) / 'results.json',
                      {k: v for k, v in results.items() if k != 'variables'})
  return results
