"""Learning: optimiser units, the resumable trainer, the student's loss and its body cutoff."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax import data
from decouple_jax import identity
from decouple_jax import memory
from decouple_jax import models
from decouple_jax.learn import optim, sgd, student, trainer
from decouple_jax.search import target_store

TINY_MODEL = cfglib.ModelConfig(widths=(8, 8, 8), convs_per_block=2, whiten_images=64)
# One device keeps these tests fast on 2 cores; data parallelism has its own test below.
ONE = trainer.mesh_1d('batch', jax.devices()[:1])
TINY_TRAIN = cfglib.TrainConfig(optim=cfglib.OptimConfig(batch_size=64, epochs=2, clip_norm=2.0),
                                eval_batch=128, flip=False)


def tiny_data_cfg(mnist_dir) -> cfglib.DataConfig:
  return cfglib.DataConfig(dir=str(mnist_dir), train_limit=192, holdout=128, test_limit=128)


@pytest.fixture(scope='module')
def tiny_mnist(mnist_dir):
  return data.load_dataset(tiny_data_cfg(mnist_dir))


def test_plain_lr_is_airbench_conversion():
  cfg = cfglib.OptimConfig(lr=4.0, momentum=0.85, batch_size=2000)
  # airbench: lr / (1024 * (1 + 1 / (1 - momentum))) per summed-loss gradient.
  assert optim.kilostep(0.85) == pytest.approx(1024 * (1 + 1 / 0.15))
  assert optim.plain_lr(cfg) == pytest.approx(4.0 / (1024 * (1 + 1 / 0.15)) * 2000)


def test_triangle_schedule_endpoints():
  cfg = cfglib.OptimConfig(lr=1.0, momentum=0.5, batch_size=1024 * 3, warmup=0.25,
                           lr_start=0.2, lr_end=0.0)
  sched = optim.schedule(cfg, 100)
  assert optim.plain_lr(cfg) == pytest.approx(1.0)
  assert float(sched(0)) == pytest.approx(0.2)
  assert float(sched(25)) == pytest.approx(1.0)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_optimizer_never_moves_whitening_filters():
  params = {'whiten': {'kernel': jnp.ones((2, 2, 1, 8)), 'bias': jnp.ones(8)},
            'head': {'kernel': jnp.ones((4, 2))}}
  tx = optim.optimizer(cfglib.OptimConfig(weight_decay=5.0), 10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert not np.any(np.asarray(updates['whiten']['kernel']))
  assert np.all(np.asarray(updates['whiten']['bias']) != 0)


def test_sgd_with_a_frozen_block_keeps_its_initial_weights_and_trains_the_rest(tiny_mnist,
                                                                              mnist_dir):
  cfg = cfglib.SGDConfig(model=TINY_MODEL, train=TINY_TRAIN, frozen_blocks=(0,))
  init = models.init_for_dataset(cfg.model, tiny_mnist, cfg.train.seed)[1]['params']
  trained = sgd.train_sgd(tiny_data_cfg(mnist_dir), cfg, None, ds=tiny_mnist,
                          mesh=ONE)['variables']['params']
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       init, trained)
  assert max(jax.tree.leaves(moved['block0'])) == 0.0
  assert min(max(jax.tree.leaves(moved[m])) for m in ('block1', 'block2', 'head')) > 0
  # The field is recorded only when set: SGD runs made before it keep their identity.
  assert 'frozen_blocks' not in identity.of(dataclasses.replace(cfg, frozen_blocks=()))
  assert identity.of(cfg)['frozen_blocks'] == (0,)
  with pytest.raises(cfglib.ConfigError, match=r'frozen_blocks: \(3,\) names a block'):
    cfglib.SGDConfig(model=TINY_MODEL, frozen_blocks=(3,))


def test_clipping_steps_a_6_conv_mnist_network_whose_gradient_overflows_float32(tiny_mnist):
  # At the paper's bn_eps 1e-12, a channel constant over an MNIST batch takes the gradient
  # through block 2's six BatchNorms with gain 1e6 each: its norm (~1e43) is past float32's
  # 3.4e38, which gave NaN at any lr; clipping needs only its direction.
  model_cfg = dataclasses.replace(TINY_MODEL, convs_per_block=6)
  assert model_cfg.bn_eps == 1e-12
  model, variables = models.init_for_dataset(model_cfg, tiny_mnist, 0)
  tx = optim.optimizer(TINY_TRAIN.optim, 10)
  step = trainer.make_step_fn(sgd.cross_entropy_loss_fn(model, 10), tx, TINY_TRAIN,
                              tiny_mnist.mean, tiny_mnist.std, ONE)
  state = jax.tree.map(jnp.copy, trainer.TrainState(  # the step donates its state
      jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
      tx.init(variables['params'])))
  state, metrics = step(state, jnp.asarray(tiny_mnist.train_images),
                        jnp.asarray(tiny_mnist.train_labels), (), np.arange(64),
                        jax.random.key(0))
  assert np.isfinite(float(metrics['loss']))
  moved = {jax.tree_util.keystr(path): float(np.abs(np.asarray(b) - np.asarray(a)).max())
           for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(variables['params'])[0],
                                   jax.tree.leaves(state.params))}
  assert all(np.isfinite(list(moved.values()))), moved
  # The step moved the network (plain clip_by_global_norm squared the gradient to inf in
  # float32 and stepped by zero), by no more than a clipped step can.
  bound = (1 + TINY_TRAIN.optim.momentum) * optim.plain_lr(TINY_TRAIN.optim) * 2.0
  assert 0 < max(moved.values()) <= bound, moved


class _Stop(Exception):
  pass


def test_killed_run_resumes_to_the_same_result(tiny_mnist, tmp_path):

  model, variables = models.init_for_dataset(TINY_MODEL, tiny_mnist, 0)
  loss_fn = sgd.cross_entropy_loss_fn(model, 10)
  train_data = trainer.TrainData.from_dataset(tiny_mnist)
  fit = lambda workdir, **kw: trainer.fit(model, variables, loss_fn, train_data, TINY_TRAIN,
                                          workdir, config={'run': 'h'}, mesh=ONE, **kw)
  full = fit(tmp_path / 'full')

  def kill_in_epoch_2(epoch, _):
    if epoch == 2:
      raise _Stop  # after epoch 2's steps, before its checkpoint: as a kill would
    return {}
  with pytest.raises(_Stop):
    fit(tmp_path / 'killed', epoch_callback=kill_in_epoch_2)
  resumed = fit(tmp_path / 'killed')
  for a, b in zip(jax.tree.leaves(full['variables']), jax.tree.leaves(resumed['variables'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed['test_accuracy'] == full['test_accuracy']
  epochs = [r['epoch'] for r in trainer.runlog.JsonLines(tmp_path / 'killed' /
                                                         'metrics.jsonl').records()]
  assert epochs == [1, 2]



def test_workdir_of_another_config_is_refused(tiny_mnist, tmp_path):
  one_epoch = dataclasses.replace(TINY_TRAIN, optim=dataclasses.replace(TINY_TRAIN.optim,
                                                                        epochs=1))
  sgd.train_sgd(cfglib.DataConfig(), cfglib.SGDConfig(TINY_MODEL, one_epoch), tmp_path,
                ds=tiny_mnist, mesh=ONE)
  other = cfglib.SGDConfig(dataclasses.replace(TINY_MODEL, widths=(4, 4, 4)), one_epoch)
  with pytest.raises(trainer.TrainError, match='another configuration'):
    sgd.train_sgd(cfglib.DataConfig(), other, tmp_path, ds=tiny_mnist, mesh=ONE)


def test_data_parallel_training_matches_one_device(tiny_mnist, tmp_path):
  assert jax.device_count() == 8
  # A larger BatchNorm eps: MNIST's batch-constant channels would amplify the devices'
  # different float reduction orders by ~1/sqrt(eps) and hide what this test checks.
  model_cfg = dataclasses.replace(TINY_MODEL, bn_eps=1e-3)
  model, variables = models.init_for_dataset(model_cfg, tiny_mnist, 0)
  loss_fn = sgd.cross_entropy_loss_fn(model, 10)
  train_data = trainer.TrainData.from_dataset(tiny_mnist)
  # One step on the whole split: the devices' different reduction orders differ by float
  # rounding, which further steps through BatchNorm would amplify past any fixed tolerance
  # (after three steps one weight in 576 was 1.4e-3 off on one machine, not on another).
  one_step = dataclasses.replace(TINY_TRAIN, optim=dataclasses.replace(
      TINY_TRAIN.optim, epochs=1, batch_size=len(tiny_mnist.train_images)))
  results = [trainer.fit(model, variables, loss_fn, train_data, one_step, tmp_path / str(n),
                         config={'run': 'h'}, mesh=trainer.mesh_1d('batch', jax.devices()[:n]))
             for n in (1, 8)]
  assert results[1]['devices'] == 8
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(results[0]['variables']))]
  assert max(moved) > 1e-2  # the step changed the weights, so equal results say something
  for a, b in zip(*(jax.tree.leaves(r['variables']) for r in results)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def _student_setup(tiny_mnist, cfg):
  model, variables = models.init_for_dataset(cfg.model, tiny_mnist, 0, detach_head=True)
  shapes = models.tap_shapes(model, tiny_mnist.image_shape)
  rng = np.random.default_rng(0)
  targets = tuple(rng.normal(size=(8, *s)).astype(np.float32) for s in shapes)
  x = data.normalize(tiny_mnist.train_images[:8], tiny_mnist.mean, tiny_mnist.std)
  batch = trainer.Batch(x, jnp.asarray(tiny_mnist.train_labels[:8]), targets)
  return model, variables, batch


STUDENT = cfglib.StudentConfig(model=dataclasses.replace(TINY_MODEL, tap='pre_gelu',
                                                         tap_scale=True))


def _grads(model, cfg, variables, batch):
  loss_fn = student.student_loss_fn(model, cfg)
  return jax.grad(lambda p: loss_fn(p, variables['batch_stats'], batch)[0])(variables['params'])


def _nonzero(tree):
  return {'/'.join(k) for k, v in
          __import__('flax').traverse_util.flatten_dict(tree).items() if np.any(np.asarray(v))}


def test_kl_term_trains_the_head_only(tiny_mnist):
  model, variables, batch = _student_setup(tiny_mnist, STUDENT)
  kl_only = dataclasses.replace(STUDENT, mse_coef=0.0, kl_weight=1.0)
  assert _nonzero(_grads(model, kl_only, variables, batch)) == {'head/kernel'}


def test_mse_terms_shape_the_body_not_the_head(tiny_mnist):
  model, variables, batch = _student_setup(tiny_mnist, STUDENT)
  mse_only = dataclasses.replace(STUDENT, kl_weight=0.0)
  touched = _nonzero(_grads(model, mse_only, variables, batch))
  assert 'head/kernel' not in touched
  assert {'block0/group0/conv1/kernel', 'block2/group0/conv2/kernel', 'tap_scale0'} <= touched


def test_skip_block0_leaves_block0_only_upstream_gradients(tiny_mnist):
  model, variables, batch = _student_setup(tiny_mnist, STUDENT)
  skip = dataclasses.replace(STUDENT, variant='skip_block0', kl_weight=0.0)
  assert 'tap_scale0' not in _nonzero(_grads(model, skip, variables, batch))


def test_augmented_targets_move_with_their_views(tiny_mnist):
  model, variables, batch = _student_setup(tiny_mnist, STUDENT)
  aug = dataclasses.replace(STUDENT.train, augment=True, flip=True)
  cfg = lambda targets: dataclasses.replace(STUDENT, train=aug, augmented_targets=targets)
  views = data.Views(shifts=jnp.asarray([[2, -2], [0, 1]] * 4), flipped=jnp.arange(8) % 3 == 0)
  loss = lambda targets, b: student.student_loss_fn(model, cfg(targets))(
      variables['params'], variables['batch_stats'], b)[1][1]
  size = batch.images.shape[1:3]
  for targets, move in (('flip', lambda t: data.flip_with_mask(t, views.flipped)),
                        ('follow', lambda t: data.follow_views(t, views, size))):
    moved = batch._replace(extras=tuple(move(t) if t.ndim == 4 else t for t in batch.extras))
    # Moving the targets in the loss is reusing targets moved beforehand, block by block ...
    got, want = loss(targets, batch._replace(views=views)), loss('reuse', moved)
    for l in range(3):
      np.testing.assert_allclose(got[f'mse_block{l}'], want[f'mse_block{l}'], rtol=1e-6)
    # ... which is a different loss from reusing them unchanged.
    assert loss('reuse', batch)['mse_block0'] != got['mse_block0']
  with pytest.raises(cfglib.ConfigError, match='sees no such view'):
    dataclasses.replace(STUDENT, augmented_targets='flip')
  with pytest.raises(cfglib.ConfigError, match='sees no such view'):
    dataclasses.replace(STUDENT, augmented_targets='flip',
                        train=dataclasses.replace(aug, flip=False))
  assert cfg('follow').augmented_targets == 'follow'


def test_student_loss_values():
  pred = jnp.asarray([[1.0, 2.0], [3.0, 5.0]])
  target = jnp.zeros((2, 2))
  assert float(student.squared_error(pred, target, 'mean')) == pytest.approx((5 / 2 + 34 / 2) / 2)
  assert float(student.squared_error(pred, target, 'sum')) == pytest.approx((5 + 34) / 2)
  p = jnp.log(jnp.asarray([[0.25, 0.75]]))
  q = jnp.log(jnp.asarray([[0.5, 0.5]]))
  want = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
  assert float(student.kl_to_searched(p, q)) == pytest.approx(want, rel=1e-5)


def _tiny_store(tmp_path, ds, model, dtype='float32'):
  shapes = models.tap_shapes(model, ds.image_shape)
  spec = target_store.StoreSpec(shapes=shapes, dtype=dtype, num_images=len(ds.train_images),
                                chunk_size=64, config_hash='c', data_name=ds.name, seed=0,
                                index_hash=target_store.indices_hash(ds.train_index))
  st = target_store.TargetStore.create_or_open(tmp_path, spec, ds.train_index)
  rng = np.random.default_rng(1)
  for c in range(st.num_chunks):
    a, b = st.chunk_range(c)
    st.write_chunk(c, [rng.normal(size=(b - a, *s)) for s in shapes],
                   np.zeros((b - a, 4), np.float32), np.zeros(b - a, np.float32))
  return target_store.TargetStore.open(tmp_path)


def test_streamed_targets_train_like_device_targets(tiny_mnist, tmp_path):
  cfg = dataclasses.replace(STUDENT, train=TINY_TRAIN)
  model, variables = models.init_for_dataset(cfg.model, tiny_mnist, 0, detach_head=True)
  st = _tiny_store(tmp_path / 'store', tiny_mnist, model)
  loss_fn = student.student_loss_fn(model, cfg)
  on_device = trainer.TrainData.from_dataset(tiny_mnist, extras=st.read())
  streamed = trainer.TrainData.from_dataset(
      tiny_mnist, stream=functools.partial(st.read, dtype=st.value_dtype))
  runs = [trainer.fit(model, variables, loss_fn, d, cfg.train, tmp_path / name,
                      config={'run': 'h'}, mesh=ONE)
          for d, name in ((on_device, 'dev'), (streamed, 'disk'))]
  for a, b in zip(*(jax.tree.leaves(r['variables']) for r in runs)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_student_refuses_targets_of_another_config(tiny_mnist, tmp_path):
  data_cfg = cfglib.DataConfig(train_limit=192, holdout=128, test_limit=128)
  cfg = dataclasses.replace(STUDENT, train=TINY_TRAIN)
  model = models.build(cfg.model, 10, 1)
  _tiny_store(tmp_path / 'store', tiny_mnist, model)  # config_hash 'c': not this config's
  with pytest.raises(target_store.StoreError, match='config_hash'):
    student.train_student(data_cfg, cfglib.SearchConfig(model=TINY_MODEL), cfg,
                          tmp_path / 'run', tmp_path / 'store', ds=tiny_mnist, mesh=ONE)


def _one_step(train_cfg):
  """The parameters before and the state after one SGD step of TINY_MODEL on 64 random
  CIFAR-shaped images, and the loss. Random pixels: MNIST's batch-constant channels would
  turn any rounding into ~1/sqrt(bn_eps) gradients, whatever the dtype."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), np.uint8)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  model = models.build(TINY_MODEL, 10, 3)
  variables = models.init_model(model, jax.random.key(0),
                                np.asarray(data.normalize(images, mean, std)))
  tx = optim.optimizer(train_cfg.optim, 10)
  step = trainer.make_step_fn(sgd.cross_entropy_loss_fn(model, 10), tx, train_cfg, mean, std,
                              ONE)
  state = trainer.TrainState(jnp.zeros((), jnp.int32), variables['params'],
                             variables['batch_stats'], tx.init(variables['params']))
  state = jax.tree.map(jnp.copy, state)  # the step donates its state
  state, metrics = step(state, jnp.asarray(images), jnp.asarray(labels), (), np.arange(64),
                        jax.random.key(0))
  return variables['params'], state, float(metrics['loss'])


def test_a_bfloat16_step_matches_a_float32_step():
  f32 = dataclasses.replace(TINY_TRAIN, compute_dtype='float32')
  assert trainer.compute_dtype(dataclasses.replace(f32, compute_dtype='auto')) == jnp.float32
  before, want, want_loss = _one_step(f32)
  _, got, loss = _one_step(dataclasses.replace(f32, compute_dtype='bfloat16'))
  # What is kept stays float32: parameters, optimiser state and BatchNorm statistics.
  assert {x.dtype for x in jax.tree.leaves((got.params, got.opt_state, got.batch_stats))
          if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
  # bfloat16 rounds every activation to 8 significant bits (2^-9 = 0.2% relative): the loss
  # agrees to 0.2%. The step's update of the parameters (its own effect, not the weights it
  # starts from) agrees to 10% of its size: at initialisation on random labels a gradient is
  # a small difference of large sums, which turns the activations' 0.2% into ~5% (measured);
  # a lost gradient or a wrong cast would be off by 100%.
  assert loss == pytest.approx(want_loss, rel=2e-3)
  update, error = (np.concatenate([(np.asarray(b) - np.asarray(a)).ravel() for a, b in
                                   zip(jax.tree.leaves(x), jax.tree.leaves(y))])
                   for x, y in ((before, want.params), (want.params, got.params)))
  assert np.linalg.norm(update) > 1e-3  # the step moved the weights
  assert np.linalg.norm(error) <= 0.1 * np.linalg.norm(update)


def test_a_training_step_that_does_not_fit_is_refused_with_the_numbers(tiny_mnist, tmp_path):
  model, variables = models.init_for_dataset(TINY_MODEL, tiny_mnist, 0)
  with pytest.raises(memory.DoesNotFit, match=(
      r'the training step \(batch 64 = 64 per device on 1 devices, the training split and '
      r'device-resident targets included\) needs [\d.]+ [kMG]B per device, the device has '
      r'1.0 kB usable: lower optim.batch_size')):
    trainer.fit(model, variables, sgd.cross_entropy_loss_fn(model, 10),
                trainer.TrainData.from_dataset(tiny_mnist), TINY_TRAIN, tmp_path,
                config={'run': 'h'}, mesh=ONE, memory_bytes=1000)


def test_fit_student_trains_on_arrays_in_memory_and_checks_their_shapes(tiny_mnist, tmp_path,
                                                                       monkeypatch):
  monkeypatch.chdir(tmp_path)
  cfg = dataclasses.replace(STUDENT, train=TINY_TRAIN)
  shapes = models.tap_shapes(models.build(cfg.model, 10, 1), tiny_mnist.image_shape)
  rng = np.random.default_rng(0)
  targets = [rng.normal(size=(len(tiny_mnist.train_images), *s)).astype(np.float32)
             for s in shapes]
  results = student.fit_student(tiny_mnist, targets, cfg, mesh=ONE)
  assert 0 <= results['test_accuracy'] <= 1 and 0 <= results['holdout_accuracy'] <= 1
  assert results['epochs_run'] == TINY_TRAIN.optim.epochs
  assert jax.tree.structure(results['variables']) == jax.tree.structure(
      results['model'].init(jax.random.key(0), tiny_mnist.test_images[:1].astype(np.float32)))
  assert not list(tmp_path.iterdir())  # nothing written
  with pytest.raises(cfglib.ConfigError, match='do not match the targets'):
    student.fit_student(tiny_mnist, [t[:, :1] for t in targets], cfg, mesh=ONE)
