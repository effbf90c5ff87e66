"""The epoch loop every network in this library is trained with.

One loop serves the SGD baseline and the student; they differ only in their loss function.
The training split lives on the device as uint8 (airbench): shuffling, augmentation and
normalisation run there. Each optimiser step is one jitted call, dispatched from a Python loop
over the epoch's batches (:func:`make_step_fn` says why not a ``lax.scan``). Per-image side data
(the searched targets) rides along, gathered at the same positions as the images, so an
augmented view gets its image's targets; the batch says how each view was cut and whether it
was mirrored, so a loss can move the targets with it (``StudentConfig.augmented_targets``).

A run in ``workdir`` is resumable: an Orbax checkpoint every ``checkpoint_every`` epochs holds
the train state, the best-so-far (hold-out selected) weights and the history; restarting the
same command continues from it and, because every epoch's randomness derives from
(seed, epoch), ends with the same result as an uninterrupted run. Each checkpoint records
checksums of its history and of its arrays (:func:`decouple_jax.config.hash_tree`), checked on
restore; the last :data:`CHECKPOINTS_KEPT` are kept, so a damaged newest one (a flipped bit, a
truncated file) is set aside, named in a warning, and the run resumes from the one before.

Precision: the forward and backward pass run in ``train.compute_dtype`` (bfloat16 on GPU/TPU by
default); parameters, optimiser state, BatchNorm statistics, losses and evaluation stay float32.

More than one process (``jax.distributed``): the mesh spans every process's devices and one
step updates one replicated state. Every process holds the training split on its devices and
gathers its own devices' rows of each batch there; streamed side data is read by each process
for its own rows only. The main process writes the log and the results, Orbax the checkpoints
(it coordinates the processes); every process returns the same results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
import signal
import threading
import time
import warnings
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from decouple_jax import config as cfglib
from decouple_jax import distributed
from decouple_jax import identity
from decouple_jax import locks
from decouple_jax import memory
from decouple_jax import runlog
from decouple_jax.config import TrainConfig
from decouple_jax import data as datalib
from decouple_jax.learn import optim
from decouple_jax.mesh import mesh_1d


class TrainError(RuntimeError):
  """A run that cannot continue as asked (e.g. a workdir holding another config's run)."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


class Batch(NamedTuple):
  """One training batch, on the device.

  images: (B, H, W, C) float32, normalised (and augmented).
  labels: (B,) int32.
  extras: per-image side data gathered at the batch's positions (e.g. targets per layer).
  views: how augmentation made each image (:class:`decouple_jax.data.Views`); None without
    augmentation or in a batch built by hand.
  """
  images: jax.Array
  labels: jax.Array
  extras: tuple
  views: datalib.Views | None = None


# loss_fn(params, batch_stats, batch) -> (loss, (new_batch_stats, metrics)); metrics is a dict
# of scalars averaged over the epoch.
LossFn = Callable[[Any, Any, Batch], tuple[jax.Array, tuple[Any, dict]]]


@dataclasses.dataclass(frozen=True)
class TrainData:
  """Everything a run reads, as host arrays; see :meth:`from_dataset`.

  images: (N, H, W, C) uint8 training split; labels (N,) int32.
  extras: per-image arrays with leading axis N (kept in their dtype on the device).
  holdout_*, test_*: evaluation splits, uint8 images and int32 labels.
  mean, std: (C,) float32 normalisation statistics (of pixels / 255).
  stream: instead of ``extras``, ``read(positions (B,)) -> per-image arrays (B, ...)`` for
    side data too large for the device (e.g. a target store's ``read``); each batch's are
    read ahead by a :class:`decouple_jax.data.Prefetcher`.
  """
  images: np.ndarray
  labels: np.ndarray
  holdout_images: np.ndarray
  holdout_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  extras: tuple = ()
  stream: Callable[[np.ndarray], tuple[np.ndarray, ...]] | None = None

  @classmethod
  def from_dataset(cls, ds, extras: tuple = (), stream=None) -> 'TrainData':
    return cls(ds.train_images, ds.train_labels, ds.holdout_images, ds.holdout_labels,
               ds.test_images, ds.test_labels, ds.mean, ds.std, tuple(extras), stream)


def default_mesh() -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over every device, axis 'batch'."""
  return mesh_1d('batch')


def _batch_mesh(mesh: jax.sharding.Mesh, batch_size: int) -> jax.sharding.Mesh:
  if batch_size % mesh.size == 0:
    return mesh
  if jax.process_count() > 1:
    raise TrainError(f'batch_size {batch_size} does not split over the {mesh.size} devices of '
                     f'{jax.process_count()} processes: make optim.batch_size a multiple of '
                     f'{mesh.size}')
  # A batch that does not split evenly runs on one device rather than failing.
  return mesh_1d('batch', mesh.devices.flat[:1])


def compute_dtype(cfg: TrainConfig) -> jnp.dtype:
  """The dtype ``cfg.compute_dtype`` names on this backend ('auto': bfloat16 on GPU and TPU,
  float32 on CPU)."""
  return jnp.dtype(cfglib.compute_dtype_name(cfg.compute_dtype))


def _cast(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def make_step_fn(loss_fn: LossFn, tx: optax.GradientTransformation, cfg: TrainConfig,
                 mean: np.ndarray, std: np.ndarray, mesh: jax.sharding.Mesh,
                 gather_extras: bool = True):
  """A jitted optimiser step ``(state, images, labels, extras, idx (B,), key) -> (state, m)``.

  Gathers the batch at positions ``idx`` from the device-resident uint8 split, augments,
  normalises, shards it over the mesh's 'batch' axis and applies one update. The metrics
  hold ``nonfinite`` (:func:`_nonfinite_flags`) besides the loss's. ``extras`` are
  whole per-image arrays gathered at ``idx`` too, or, with ``gather_extras=False``, the
  batch's extras already (streamed from disk). ``loss_fn`` sees the parameters and images in
  :func:`compute_dtype`; the gradient reaches the float32 parameters through the cast.

  The epoch loop stays in Python: XLA:CPU runs convolutions inside a ``lax.scan`` (a while
  loop) far slower than the same step dispatched on its own (BENCHMARKS.md), and a per-step
  dispatch costs nothing noticeable on accelerators.
  """
  batch_sharding = NamedSharding(mesh, P('batch'))
  dtype = compute_dtype(cfg)

  def cast_loss(params, batch_stats, batch):
    return loss_fn(_cast(params, dtype), batch_stats, batch._replace(
        images=batch.images.astype(dtype)))

  def scaled_loss(params, batch_stats, batch):
    # tx (optim.optimizer) divides the scale out: see optim.unscale_and_clip.
    loss, (batch_stats, metrics) = cast_loss(params, batch_stats, batch)
    return loss * optim.GRAD_SCALE, (loss, batch_stats, metrics)

  def step(state: TrainState, images, labels, extras, idx, key):
    x, views = images[idx], None
    if cfg.augment:
      x, views = datalib.augment(key, x, pad=cfg.crop_pad, flip=cfg.flip)
    x = jax.lax.with_sharding_constraint(datalib.normalize(x, mean, std), batch_sharding)
    batch = Batch(x, labels[idx], tuple(e[idx] for e in extras) if gather_extras else extras,
                  views)
    (_, (loss, batch_stats, metrics)), grads = jax.value_and_grad(scaled_loss, has_aux=True)(
        state.params, state.batch_stats, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss)
    return TrainState(state.step + 1, params, batch_stats, opt_state), dict(
        metrics, nonfinite=_nonfinite_flags(metrics, batch_stats, grads, params))

  return jax.jit(step, donate_argnums=0)


def _nonfinite_flags(metrics: dict, batch_stats, grads, params) -> tuple[jax.Array, dict]:
  """(any, {name: flag}): which of a step's metrics, BatchNorm statistics, (scaled)
  gradients and updated parameters hold a NaN or inf; names are 'metric loss', 'statistic
  block0/group0/norm1/bn/var', 'gradient head/kernel', 'parameter ...'."""
  named = lambda kind, tree: {
      f'{kind} ' + '/'.join(str(getattr(k, 'key', k)) for k in path): ~jnp.all(jnp.isfinite(x))
      for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  flags = {**named('metric', metrics), **named('statistic', batch_stats),
           **named('gradient', grads), **named('parameter', params)}
  return jnp.any(jnp.stack(list(flags.values()))), flags


def nonfinite_message(where: str, flags: dict, side_data: tuple, clip_norm: float,
                      checkpoint: str) -> str:
  """What a TrainError says when a step met NaN or inf.

  Args:
    where: e.g. 'epoch 1, step 3 of 4'.
    flags: the first such step's ``{name: bool}`` of :func:`_nonfinite_flags`.
    side_data: that step's per-image side data (e.g. a student's targets), host arrays.
    clip_norm: ``optim.clip_norm``.
    checkpoint: a sentence on what is kept, e.g. 'Its checkpoint of epoch 2 in DIR is kept.'.
  """
  named = lambda kind: [n[len(kind) + 1:] for n, bad in sorted(flags.items())
                        if bad and n.startswith(kind)]
  # Every metric (the loss's terms say which one broke); of the rest the first in parameter
  # order (what follows it is fed by it).
  found = '; '.join(f'{what}: {names}' for what, names in (
      ('non-finite metrics', ', '.join(named('metric'))),
      *((f'first non-finite {kind}', next(iter(named(kind)), ''))
        for kind in ('statistic', 'gradient', 'parameter'))) if names)
  clipping = (f'gradient clipping was on (optim.clip_norm={clip_norm})' if clip_norm > 0
              else 'gradient clipping was off (optim.clip_norm=0)')
  broken = [f'side data {i} (for a student: the searched targets of tap {i}) holds {what}'
            for i, what in enumerate(map(_out_of_range, side_data)) if what]
  if broken:
    advice = ('The data is wrong, not the optimiser: ' + '; '.join(broken) +
              ' in this batch; recreate it (a target store: delete it and search again)')
  elif clip_norm > 0:
    advice = 'Lower optim.lr'
  else:
    advice = 'Set optim.clip_norm (e.g. 2.0) or lower optim.lr'
  return f'a training step met NaN or inf in {where}: {found}; {clipping}. {advice}. {checkpoint}'


def _out_of_range(a: np.ndarray) -> str | None:
  """What is wrong with side data ``a``, or None: NaN or inf, or values whose float32 square
  (an MSE) overflows, past sqrt(3.4e38) = 1.8e19, where no sane target lies."""
  a = np.asarray(a, np.float64)
  if not np.isfinite(a).all():
    return 'NaN or inf'
  largest = np.abs(a).max(initial=0.0)
  return f'values up to {largest:.3g}' if largest >= 1.8e19 else None


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple[np.ndarray, jax.Array]:
  """An epoch's batches: positions (steps, B) of a permutation of n (remainder dropped), on
  the host, and one augmentation key per step."""
  steps = n // batch_size
  perm_key, aug_key = jax.random.split(key)
  perm = np.asarray(jax.random.permutation(perm_key, n))[:steps * batch_size]
  return perm.reshape(steps, batch_size), jax.random.split(aug_key, steps)


def make_predict_fn(model, batch_stats_mode: bool, mean, std):
  """Jitted ``(variables, uint8 images (B,H,W,C)) -> taps``; BN per ``batch_stats_mode``."""
  def predict(variables, images):
    x = datalib.normalize(images, mean, std)
    if batch_stats_mode:
      taps, _ = model.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
    else:
      taps = model.apply(variables, x, use_running_average=True)
    return taps
  return jax.jit(predict)


def evaluate(predict_fn, variables, images: np.ndarray, labels: np.ndarray,
             batch_size: int) -> float:
  """Top-1 accuracy (fraction) of the logits tap over ``images`` in batches of ``batch_size``."""
  if len(images) == 0:
    return float('nan')
  correct = 0
  for start in range(0, len(images), batch_size):
    logits = predict_fn(variables, images[start:start + batch_size])[-1]
    correct += int(jnp.sum(jnp.argmax(logits, -1) == labels[start:start + batch_size]))
  return correct / len(images)


def accuracy_line(results: dict) -> str:
  """One line on a run's results: its test accuracy and how its weights were selected."""
  selection = (f"hold-out {100 * results['holdout_accuracy']:.2f}% at epoch "
               f"{results['best_epoch']}" if results['selected_by'] == 'holdout_accuracy' else
               f"no hold-out split: the last epoch, {results['best_epoch']}")
  return f"test accuracy {100 * results['test_accuracy']:.2f}% ({selection})"


# What a refusal of another run's checkpoint says to do.
_START_OVER = ('Use a new --workdir, or delete {workdir}/checkpoints to start over (its epochs '
               'are lost).')
# Two, so that damage to the newest checkpoint costs the epochs since the one before, not all.
CHECKPOINTS_KEPT = 2
# Where damaged checkpoints are moved, out of Orbax's sight, for inspection.
_DAMAGED = 'damaged_checkpoints'


def _checkpointer(workdir: pathlib.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      (workdir / 'checkpoints').absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=CHECKPOINTS_KEPT, create=True))


def _layout(state: TrainState, best: dict) -> str:
  """A hash of the train state's tree structure, shapes and dtypes: what this code restores
  into. Another version's optimiser (say) gives another layout with the same config."""
  leaves = [(tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves((state, best))]
  return cfglib.hash_dict([str(jax.tree.structure((state, best))), leaves])


def _checksums(state: TrainState, best: dict, meta: dict) -> dict:
  """What a checkpoint records to be verified on restore: hashes of its history (``meta``,
  without these checksums), of its arrays, and of their :func:`_layout`."""
  return {'meta': cfglib.hash_dict(meta), 'arrays': cfglib.hash_tree((state, best)),
          'layout': _layout(state, best)}


def _other_layout(path: pathlib.Path, workdir: pathlib.Path) -> TrainError:
  return TrainError(
      f'{path} holds a train state of another layout than this code builds (another version '
      'of decouple_jax, e.g. another optimiser state, wrote it): it is not damaged, but it '
      f'cannot be resumed; use a new --workdir, or delete {workdir / "checkpoints"} to start '
      'over (its epochs are lost)')


@contextlib.contextmanager
def _deferred_interrupt():
  """Holds a Ctrl-C (SIGINT) back until the block ends. Orbax interrupted inside ``save``
  leaves threads behind that fail noisily at exit; deferred, the interrupt comes once the
  save is under way, which closing the checkpoint manager then finishes."""
  if threading.current_thread() is not threading.main_thread():
    yield  # signals are delivered to the main thread only
    return
  caught = []
  previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
      previous(*caught[0])


def _save(ckpt: ocp.CheckpointManager, epoch: int, state: TrainState, best: dict,
          meta: dict) -> None:
  with _deferred_interrupt():
    ckpt.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), best=ocp.args.StandardSave(best),
        meta=ocp.args.JsonSave({**meta, 'checksums': _checksums(state, best, meta)})))


class _Damaged(Exception):
  """A checkpoint that cannot be read or does not match its checksums; says why."""


def _first_line(e: BaseException) -> str:
  line = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return line if len(line) <= 160 else line[:157] + '...'


def _restore(ckpt: ocp.CheckpointManager, step: int, state: TrainState, best: dict,
             workdir: pathlib.Path, config: dict) -> tuple:
  """Checkpoint ``step`` as (state, best, meta), verified against its checksums.

  ``state`` and ``best`` give the structure to restore into. A checkpoint of another run is
  refused (:class:`TrainError`) before its arrays are read.

  Raises:
    _Damaged: the checkpoint is unreadable or does not match its checksums.
    TrainError: a checkpoint of another run, or of another layout (:func:`_layout`).
  """
  try:
    meta = ckpt.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    sums = meta.pop('checksums', None)
  except Exception as e:  # pylint: disable=broad-except  # any failure to read is damage
    raise _Damaged(f'meta/metadata is unreadable: {_first_line(e)}') from e
  if sums is not None and sums['meta'] != cfglib.hash_dict(meta):
    raise _Damaged('meta/metadata does not match its checksum')
  identity.check_same(config, meta, workdir, _START_OVER.format(workdir=workdir), TrainError)
  path, layout = ckpt.directory / str(step), _layout(state, best)
  if sums is not None and sums.get('layout', layout) != layout:
    raise _other_layout(path, workdir)
  try:
    restored = ckpt.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), best=ocp.args.StandardRestore(best)))
  except Exception as e:  # pylint: disable=broad-except
    # Checkpoints that predate the recorded layout: Orbax's own words for another layout.
    if 'tree structures do not match' in str(e):
      raise _other_layout(path, workdir) from e
    raise _Damaged(f'its arrays are unreadable: {_first_line(e)}') from e
  if sums is None:
    warnings.warn(f'{path} was written by an older version, which '
                  'recorded no checksums: resuming from it unverified', stacklevel=3)
  elif sums['arrays'] != cfglib.hash_tree((restored.state, restored.best)):
    raise _Damaged('its arrays do not match their checksum')
  return restored.state, restored.best, meta


def _resume(ckpt: ocp.CheckpointManager, state: TrainState, best: dict, workdir: pathlib.Path,
            config: dict) -> tuple | None:
  """The newest good checkpoint as (state, best, meta), or None if there is none yet.

  Damaged checkpoints newer than it are moved to ``workdir/damaged_checkpoints``, each named
  in a warning, so that the run redoes their epochs.

  Raises:
    TrainError: every checkpoint is damaged, or they belong to another run.
  """
  damaged = []
  for step in sorted(ckpt.all_steps(), reverse=True):
    try:
      found = _restore(ckpt, step, state, best, workdir, config)
    except _Damaged as e:
      damaged.append((step, str(e)))
      continue
    for bad, why in damaged:
      path, aside = ckpt.directory / str(bad), workdir / _DAMAGED / str(bad)
      if distributed.is_main():
        shutil.rmtree(aside, ignore_errors=True)  # an older copy set aside for the same epoch
        aside.parent.mkdir(exist_ok=True)
        shutil.move(path, aside)
      warnings.warn(f'checkpoint {path} is damaged ({why}): moved it to {aside} (delete it '
                    f'once inspected); resuming from the one of epoch {step}', stacklevel=2)
    if damaged:
      distributed.barrier(f'damaged checkpoints {workdir}')
      ckpt.reload()
    return found
  if damaged:
    raise TrainError(
        f'every checkpoint in {ckpt.directory} is damaged (' +
        '; '.join(f'epoch {step}: {why}' for step, why in damaged) +
        f'): delete {ckpt.directory} to train from the start (its epochs are lost)')
  return None


def fit(model, variables: dict, loss_fn: LossFn, data: TrainData, cfg: TrainConfig,
        workdir: str | pathlib.Path | None, *, config: dict, name: str = 'train',
        mesh: jax.sharding.Mesh | None = None,
        epoch_callback: Callable[[int, dict], dict] | None = None,
        memory_bytes: int | None = None, frozen: tuple[str, ...] = ()) -> dict:
  """Trains ``variables`` of ``model`` with ``loss_fn``; resumes from ``workdir``.

  The shape of the Flax examples' ``train_and_evaluate``: a jitted step
  (:func:`make_step_fn`) over every epoch's batches, evaluation on the hold-out split,
  checkpoints.

  Args:
    model: a Flax module whose apply returns taps ending with the logits.
    variables: initial {'params', 'batch_stats'}.
    loss_fn: see :data:`LossFn`.
    data: the splits; ``data.extras`` are gathered per batch (see :class:`Batch`).
    cfg: optimiser, augmentation, evaluation and checkpoint settings.
    workdir: where checkpoints, ``metrics.jsonl`` and ``results.json`` go; None trains in
      memory (nothing written, nothing to resume).
    config: the run's identity (:mod:`decouple_jax.identity`, e.g.
      :func:`~decouple_jax.identity.student`); recorded with its hash in every checkpoint and
      in ``results.json``. A workdir holding a checkpoint of another identity is refused,
      naming the settings that differ.
    name: what the progress bar calls the run (e.g. 'sgd convs2').
    mesh: data-parallel mesh (axis 'batch'); default: every device of every process.
    epoch_callback: ``(epoch, {'model': ..., 'variables': ...}) -> dict`` of extra metrics
      logged per epoch.
    memory_bytes: usable memory per device (default
      :func:`decouple_jax.memory.device_memory`); a step that needs more is refused before it
      runs, with the numbers.
    frozen: top-level modules of ``model`` kept at their initial weights (e.g. ``'block0'``);
      the whitening filters always are.

  Returns:
    The results dict (also written to ``workdir/results.json``): test accuracy of the
    hold-out-selected weights (without a hold-out split, of the last epoch's: ``selected_by``
    says which), best hold-out accuracy (None without one) and its epoch, final-epoch
    accuracies, wall time, images/s and the config; and ``variables``, the selected weights
    as host arrays.
  """
  disk = workdir is not None
  workdir = pathlib.Path(workdir) if disk else None
  opt = cfg.optim
  n = len(data.images)
  steps = n // opt.batch_size
  if steps == 0:
    raise TrainError(f'batch_size {opt.batch_size} exceeds the {n} training images; lower '
                     f'--config...optim.batch_size')
  tx = optim.optimizer(opt, steps * opt.epochs, frozen)
  mesh = _batch_mesh(mesh or default_mesh(), opt.batch_size)
  replicated = NamedSharding(mesh, P())
  # Host copies of the state: the step donates (and so deletes) the state it is given, which
  # must never be the caller's arrays, and a host array can be placed on any process's
  # devices. The data is never donated, so it is placed as it is.
  place = lambda tree: jax.device_put(tree, replicated)
  put = lambda tree: place(jax.tree.map(np.array, tree))

  state = put(TrainState(jnp.zeros((), jnp.int32), variables['params'],
                         variables.get('batch_stats', {}), tx.init(variables['params'])))
  config_hash = identity.hash_of(config)
  meta = {'epoch': 0, 'best_accuracy': -1.0, 'best_epoch': 0, 'train_seconds': 0.0,
          'config_hash': config_hash, 'config': config}
  best = put({'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})})
  main = distributed.is_main()
  writes = main and disk
  # One writer per workdir (the processes of one run share it); closing the manager on any
  # exit (also a NaN stop) finishes pending saves cleanly.
  with (locks.hold(workdir) if disk else contextlib.nullcontext(),
        _checkpointer(workdir) if disk else contextlib.nullcontext() as ckpt):
    log = runlog.JsonLines(workdir / 'metrics.jsonl') if disk else None
    resumed = _resume(ckpt, state, best, workdir, config) if disk else None
    if resumed is not None:
      state, best, meta = resumed
    # The log holds exactly the epochs of the checkpoint resumed from: none for a new run, or
    # one killed before its first checkpoint, whose epochs are redone.
    if writes:
      log.keep(lambda r: r.get('epoch', 0) <= meta['epoch'])

    images, labels = place(data.images), place(data.labels)
    extras = tuple(place(e) for e in data.extras)
    step_fn = make_step_fn(loss_fn, tx, cfg, data.mean, data.std, mesh,
                           gather_extras=data.stream is None)
    batch_sharding = NamedSharding(mesh, P('batch'))
    predict = make_predict_fn(model, cfg.bn_batch_stats, data.mean, data.std)
    base_key = jax.random.key(cfg.seed)
    first = meta['epoch'] + 1
    bar = runlog.progress(total=opt.epochs, initial=first - 1, desc=name, unit='epoch',
                          **({} if main else {'disable': True}))
    for epoch in range(first, opt.epochs + 1):
      t0 = time.perf_counter()
      positions, keys = epoch_batches(jax.random.fold_in(base_key, epoch), n, opt.batch_size)
      sums, health = {}, []
      with contextlib.ExitStack() as stack:
        if data.stream is None:
          batches = ((idx, extras) for idx in positions)
        else:
          # Each process reads the rows its own devices hold.
          rows = distributed.local_rows(batch_sharding, opt.batch_size)
          prefetch = stack.enter_context(datalib.Prefetcher(
              lambda pos: data.stream(pos[rows]), positions,
              put=lambda a: jax.make_array_from_process_local_data(batch_sharding, a)))
          batches = iter(prefetch)
        for (idx, batch_extras), key in zip(batches, keys):
          args = (state, images, labels, batch_extras, idx, key)
          if not sums and epoch == first:
            _check_memory(step_fn, args, opt.batch_size, mesh.size, memory_bytes)
          state, metrics = step_fn(*args)
          health.append(metrics.pop('nonfinite'))
          if not sums and epoch == first:
            bar.start_clock()  # the ETA leaves out the first step's compilation
          sums = jax.tree.map(jnp.add, sums, metrics) if sums else metrics
      bad = np.flatnonzero(np.asarray(jnp.stack([any_bad for any_bad, _ in health])))
      if bad.size:
        i = int(bad[0])
        side_data = (data.stream(positions[i]) if data.stream is not None else
                     tuple(np.asarray(e[positions[i]]) for e in extras))
        kept = ckpt.latest_step() if disk else None
        raise TrainError(nonfinite_message(
            f'epoch {epoch}, step {i + 1} of {steps}', jax.device_get(health[i][1]), side_data,
            opt.clip_norm, 'The run was in memory: nothing is kept.' if not disk else
            f'No checkpoint of this run exists yet in {workdir}.' if kept is None
            else f'Its checkpoint of epoch {kept} in {workdir} is kept.'))
      metrics = {k: float(v) / steps for k, v in sums.items()}
      meta['train_seconds'] += time.perf_counter() - t0
      last = epoch == opt.epochs
      record = {'epoch': epoch, **metrics}
      current = {'params': state.params, 'batch_stats': state.batch_stats}
      if not len(data.holdout_images):
        selected = last  # nothing to select on: the last epoch is the model
      elif epoch % cfg.eval_every == 0 or last:
        acc = evaluate(predict, current, data.holdout_images, data.holdout_labels, cfg.eval_batch)
        record['holdout_accuracy'] = acc
        selected = acc > meta['best_accuracy']
        if selected:
          meta['best_accuracy'] = acc
      else:
        selected = False
      if selected:
        meta['best_epoch'] = epoch
        best = jax.tree.map(jnp.copy, current)
      if epoch_callback is not None:
        record.update(epoch_callback(epoch, {'model': model, 'variables': current}))
      if writes:
        log.write(record)
      meta['epoch'] = epoch
      if disk and (epoch % cfg.checkpoint_every == 0 or last):
        _save(ckpt, epoch, state, best, meta)
      bar.set_postfix({k: f'{v:.4g}' for k, v in record.items() if k != 'epoch'})
      bar.update(1)
    bar.close()
    final = {'params': state.params, 'batch_stats': state.batch_stats}
    results = {
        'test_accuracy': evaluate(predict, best, data.test_images, data.test_labels,
                                  cfg.eval_batch),
        'final_test_accuracy': evaluate(predict, final, data.test_images, data.test_labels,
                                        cfg.eval_batch),
        'holdout_accuracy': meta['best_accuracy'] if len(data.holdout_images) else None,
        'selected_by': 'holdout_accuracy' if len(data.holdout_images) else 'last_epoch',
        'best_epoch': meta['best_epoch'],
        'epochs': opt.epochs,
        'epochs_run': meta['epoch'],
        'train_seconds': meta['train_seconds'],
        'train_images_per_s': steps * opt.batch_size * meta['epoch'] / max(
            meta['train_seconds'], 1e-9),
        'devices': mesh.size,
        'processes': jax.process_count(),
        'compute_dtype': compute_dtype(cfg).name,
        'config_hash': config_hash,
        'config': config,
    }
    if writes:
      runlog.write_json(workdir / 'results.json', results)
  return {**results, 'variables': jax.device_get(best)}


def _check_memory(step_fn, args: tuple, batch_size: int, devices: int,
                  memory_bytes: int | None) -> None:
  """Refuses a training step that does not fit the device, before it runs (the compile is
  the one the step then uses)."""
  need = memory.program_bytes(step_fn.lower(*args).compile())
  budget = memory_bytes if memory_bytes is not None else memory.device_memory()
  memory.check_fits(
      need, budget, f'the training step (batch {batch_size} = {batch_size // devices} per '
      f'device on {devices} devices, the training split and device-resident targets included)',
      'lower optim.batch_size, train on more devices, set train.compute_dtype=bfloat16, or '
      'lower student.device_targets_gb to stream the targets from disk')
