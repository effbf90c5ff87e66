"""The search-learn loop: two tiny rounds end to end, a kill mid-round resumed to the same
result, each round's targets in the next student's tap space, the body cutoff in every round."""

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax import data
from decouple_jax import feedback
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.learn import bn_stats
from decouple_jax.learn import student
from decouple_jax.learn import trainer
from decouple_jax.search import store_ids
from decouple_jax.search.target_store import StoreError, TargetStore

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = cfglib.ModelConfig(widths=(8, 8, 8), whiten_images=64)
TRAIN = cfglib.TrainConfig(optim=cfglib.OptimConfig(batch_size=32, epochs=1, clip_norm=2.0),
                           eval_batch=64, flip=False)


def _exp(mnist_dir, **feedback_fields) -> cfglib.ExperimentConfig:
  return cfglib.ExperimentConfig(
      data=cfglib.DataConfig(dir=str(mnist_dir), train_limit=64, holdout=32, test_limit=64),
      sgd=cfglib.SGDConfig(model=MODEL, train=TRAIN),
      search=cfglib.SearchConfig(
          model=MODEL, population=6, top_k=2, n_explore=2, n_refine=2, batch_images=4,
          chunk_size=32, blur_target='noise',
          layers={name: dataclasses.replace(l, generations=g)
                  for (name, l), g in zip(cfglib.PAPER_SCHEDULE.items(), (1, 2, 2, 2))}),
      student=cfglib.StudentConfig(
          model=dataclasses.replace(MODEL, convs_per_block=4, tap='pre_gelu', tap_scale=True),
          train=TRAIN, kl_weight=1.0),
      # A student of 2 steps has channels that are constant over the data: a large epsilon
      # keeps their inference-form BatchNorm from amplifying candidates by 1e6 (see bn_eps).
      feedback=cfglib.FeedbackConfig(rounds=2, bn_eps=1e-2, **feedback_fields))


class _Killed(Exception):
  pass


# One device: the emulated eight share two cores, and nothing here is about sharding.
ONE = jax.devices()[:1]


@pytest.fixture(scope='module')
def looped(mnist_dir, tmp_path_factory):
  """Two rounds run by launch/feedback.py, on one device (the emulated eight share 2 cores)."""
  exp = _exp(mnist_dir)
  root = tmp_path_factory.mktemp('loop')
  config = root / 'tiny_config.py'
  config.write_text('import ml_collections\n\n\ndef get_config(arg):\n'
                    f'  return ml_collections.ConfigDict({cfglib.to_dict(exp)!r})\n')
  workdir = root / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run([sys.executable, 'launch/feedback.py', f'--config={config}:tiny',
                         f'--workdir={workdir}'], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'round 2 (warm): Search-based (All layers) test' in proc.stdout
  return exp, workdir, runlog.read_json(workdir / 'results.json')


def _same_rounds(a, b):
  timing = ('search_seconds', 'train_seconds')
  for x, y in zip(a['rounds'], b['rounds']):
    assert {k: v for k, v in x.items() if k not in timing} == {
        k: v for k, v in y.items() if k not in timing}


def test_two_rounds_run_and_record_every_number(looped):
  exp, workdir, results = looped
  assert [r['round'] for r in results['rounds']] == [1, 2]
  first, second = results['rounds']
  assert first['network'] == store_ids.UNTRAINED and second['network'] != store_ids.UNTRAINED
  assert (first['start'], second['start']) == ('fresh', 'warm')
  for r in results['rounds']:
    assert 0 <= r['test_accuracy'] <= 1 and len(r['r2_train']) == 3
    assert list(r['mean_best_loss']) == ['block0', 'block1', 'block2', 'logits']
    assert r['search_seconds'] > 0 and r['train_seconds'] > 0
  assert 0 <= results['sgd']['test_accuracy'] <= 1
  assert (workdir / 'feedback.png').exists()
  assert runlog.read_json(workdir / 'feedback.json')['rounds'] == [1, 2]
  # The figure names the student every round trains, as a report row would.
  assert results['student'] == 'Search-based (All layers)'
  assert runlog.read_json(workdir / 'feedback.json')['student'] == results['student']


def test_a_rounds_targets_have_the_next_students_tap_shapes(looped, mnist_dir):
  exp, workdir, _ = looped
  ds = data.load_dataset(exp.data)
  student_model = models.build(exp.student.model, ds.num_classes, ds.image_shape[-1])
  for r in (1, 2):
    spec = TargetStore.open(feedback.round_dir(workdir, r) / 'targets').spec
    assert spec.shapes == models.tap_shapes(student_model, ds.image_shape)


def test_a_store_is_refused_for_another_rounds_network(looped):
  exp, workdir, results = looped
  ds = data.load_dataset(exp.data)
  round2 = feedback.round_dir(workdir, 2) / 'targets'
  with pytest.raises(StoreError, match='config_hash'):
    # round 1's network
    store_ids.open_finished(round2, store_ids.StoreId(exp.data, exp.search, ds))
  store_ids.open_finished(round2, store_ids.StoreId(exp.data, exp.search, ds,
                                                    network_id=results['rounds'][1]['network']))


def test_the_kl_term_trains_only_the_head_of_a_warm_started_round(looped):
  exp, workdir, _ = looped
  ds = data.load_dataset(exp.data)
  model, _ = models.init_for_dataset(exp.student.model, ds, 0, detach_head=True)
  _, variables = feedback._finished_round(exp, ds, workdir, 1)  # round 2's starting point
  store = TargetStore.open(feedback.round_dir(workdir, 2) / 'targets')
  targets = store.read(np.arange(8))
  x = data.normalize(ds.train_images[:8], ds.mean, ds.std)
  batch = trainer.Batch(x, ds.train_labels[:8], tuple(targets))
  kl_only = student.student_loss_fn(model, dataclasses.replace(exp.student, mse_coef=0.0))
  grads = jax.grad(lambda p: kl_only(p, variables['batch_stats'], batch)[0])(
      variables['params'])
  touched = {'/'.join(k) for k, v in flax.traverse_util.flatten_dict(grads).items()
             if np.any(np.asarray(v))}
  assert touched == {'head/kernel'}


def test_a_loop_killed_mid_round_resumes_to_the_same_result(looped, tmp_path, monkeypatch):
  exp, workdir, _ = looped
  # Round 1 and SGD as the script finished them; round 2 runs here both whole and killed,
  # then resumed. Not against the script's round 2: its process has one host device and this
  # one eight emulated, where XLA:CPU splits reductions otherwise (the students differed by
  # 1e-7; they agreed only while an overflowing clip zeroed every student step).
  for run in ('whole', 'killed'):
    for part in ('sgd', 'round1'):
      shutil.copytree(workdir / part, tmp_path / run / part)
  full = feedback.run_feedback(exp, tmp_path / 'whole', devices=ONE)
  killed = tmp_path / 'killed'
  write = TargetStore.write_chunk

  def dies_in_round_two(self, c, *args, **kwargs):
    if 'round2' in str(self.directory) and c == 1:
      raise _Killed  # round 2's first chunk is on disk, its second is lost
    return write(self, c, *args, **kwargs)
  monkeypatch.setattr(TargetStore, 'write_chunk', dies_in_round_two)
  with pytest.raises(_Killed):
    feedback.run_feedback(exp, killed, devices=ONE)
  monkeypatch.setattr(TargetStore, 'write_chunk', write)
  assert not (killed / 'round2' / 'round.json').exists()
  resumed = feedback.run_feedback(exp, killed, devices=ONE)
  _same_rounds(full, resumed)
  chunks = runlog.JsonLines(killed / 'round2' / 'targets' / 'search_log.jsonl').records()
  assert sorted(c['chunk'] for c in chunks) == [0, 1]  # chunk 0 was not searched twice


def test_a_finished_round_of_another_loop_config_is_refused(looped):
  exp, workdir, _ = looped
  cold = dataclasses.replace(exp, feedback=dataclasses.replace(exp.feedback, warm_start=False))
  with pytest.raises(cfglib.ConfigError, match='another configuration'):
    feedback.run_feedback(cold, workdir, devices=ONE)


def test_a_finished_loop_is_reused_under_other_speed_only_settings(looped):
  exp, workdir, results = looped
  faster = dataclasses.replace(
      exp, search=dataclasses.replace(exp.search, batch_images=2, model=dataclasses.replace(
          exp.search.model, conv_impl='xla')),
      student=dataclasses.replace(exp.student, device_targets_gb=0.0))
  records = sorted(workdir.glob('round*/round.json'))
  mtimes = [p.stat().st_mtime_ns for p in records]
  again = feedback.run_feedback(faster, workdir, devices=ONE)
  assert [p.stat().st_mtime_ns for p in records] == mtimes  # no round was redone
  assert again['rounds'] == results['rounds']


def test_recomputed_batch_stats_make_inference_equal_the_batch_forward(mnist_dir):
  ds = data.load_dataset(cfglib.DataConfig(dir=str(mnist_dir), train_limit=64, holdout=32,
                                           test_limit=32))
  model, variables = models.init_for_dataset(MODEL, ds, 0)
  images = ds.train_images[:32]
  stats = bn_stats.population_batch_stats(model, variables, images, ds.mean, ds.std, 32)
  x = data.normalize(images, ds.mean, ds.std)
  batch_taps, _ = model.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  inference_taps = model.apply(stats, x, use_running_average=True)
  for a, b in zip(batch_taps, inference_taps):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  # Two batches: the mean of each batch's statistics.
  both = bn_stats.population_batch_stats(model, variables, ds.train_images[:64], ds.mean,
                                         ds.std, 32)
  second = bn_stats.population_batch_stats(model, variables, ds.train_images[32:64], ds.mean,
                                           ds.std, 32)
  for a, b, c in zip(*(jax.tree.leaves(v['batch_stats']) for v in (both, stats, second))):
    np.testing.assert_allclose(np.asarray(a), (np.asarray(b) + np.asarray(c)) / 2, rtol=1e-5,
                               atol=1e-6)
