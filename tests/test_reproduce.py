"""The report's paper numbers, the launch scripts end to end, the hold-out search and
reproduce's resumption."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax import data
from decouple_jax import report
from decouple_jax import reproduce
from decouple_jax.search import target_store
from decouple_jax.search import store_ids

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_reproduce_config_refuses_unknown_options():
  with pytest.raises(cfglib.ConfigError, match='2, 4 or 6'):
    cfglib.ReproduceConfig(sgd_convs=(3,))
  with pytest.raises(cfglib.ConfigError, match='variants'):
    cfglib.ReproduceConfig(variants=('all',))


def test_an_sgd_control_with_untrained_blocks_is_named_and_kept_apart():
  assert report.method_name('sgd', 'evolution', (0,)) == 'SGD, block 0 untrained (control)'
  assert report.method_name('sgd', 'gradient', (0, 1)) == 'SGD, blocks 0, 1 untrained (control)'
  assert report.method_name('all_layers', 'evolution', (0,)) == 'Search-based (All layers)'
  assert report.method_name('skip_block0', augmented_targets='flip') == (
      'Search-based (Skip block 0), mirrored targets (beyond the paper)')
  assert report.method_name('all_layers', augmented_targets='follow') == (
      'Search-based (All layers), mirrored and shifted targets (beyond the paper)')
  assert report.method_name('sgd', augmented_targets='flip') == 'SGD'
  # Its sub-run never meets the paper's SGD run of the same workdir.
  assert reproduce._run_name(0, 'sgd', 4, (0,)) == 'seed0/sgd_convs4_frozen0'
  assert reproduce._run_name(0, 'sgd', 4) == 'seed0/sgd_convs4'


def test_scale_label_and_paper_numbers():
  assert report.scale_label('paper') == 'paper'
  assert report.scale_label('cpu') == 'scaled down: cpu'
  assert report.paper_result('mnist', 'all_layers', False) == (1, (99.0, 0.1))
  assert report.paper_result('cifar100', 'skip_block0', True) == (2, (69.2, 0.3))
  assert report.paper_result('mnist', 'sgd', True) == (2, None)


# The pipeline below runs every launch script once on `configs/mnist.py:smoke` (1 epoch), each
# writing where launch/reproduce.py looks, so that reproduce then only has to add the hold-out
# search, the second student variant and the SGD baselines with 4 and 6 convs per block (the
# smoke defaults, as the paper's MNIST config); a second reproduce must add nothing.


def _launch(script, workdir, config, mnist_dir, *extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  cmd = [sys.executable, f'launch/{script}', f'--config={config}:smoke', f'--workdir={workdir}',
         f'--config.data.dir={mnist_dir}', '--config.sgd.train.optim.epochs=1',
         '--config.student.train.optim.epochs=1', *extra]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}'
  return proc.stdout


SPEED_ONLY_OVERRIDES = ('--config.search.batch_images=2', '--config.search.model.conv_impl=xla',
                        '--config.student.model.conv_impl=xla',
                        '--config.student.train.checkpoint_every=3',
                        '--config.student.device_targets_gb=0', '--config.sgd.train.checkpoint_every=2')


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory, mnist_dir):
  w = tmp_path_factory.mktemp('pipeline') / 'run'
  config = REPO / 'configs' / 'mnist.py'
  out = {
      'search': _launch('search.py', w / 'search', config, mnist_dir),
      'sgd': _launch('train_sgd.py', w / 'seed0' / 'sgd_convs2', config, mnist_dir),
      'student': _launch('train_student.py', w / 'seed0' / 'student_all_layers', config,
                         mnist_dir, f'--targets={w / "search" / "targets"}'),
      'reproduce': _launch('reproduce.py', w, config, mnist_dir),
  }
  first = json.loads((w / 'results.json').read_text())
  mtimes = {p: p.stat().st_mtime_ns for p in w.glob('seed0/*/results.json')}
  # Again, with every speed-only setting changed: they are in no run's identity.
  out['again'] = _launch('reproduce.py', w, config, mnist_dir, *SPEED_ONLY_OVERRIDES)
  return {'workdir': w, 'out': out, 'first': first, 'mtimes': mtimes,
          'second': json.loads((w / 'results.json').read_text())}


@pytest.mark.slow
def test_launch_search_and_train_sgd(pipeline):
  w, out = pipeline['workdir'], pipeline['out']
  assert 'searched 256 images' in out['search']
  assert target_store.TargetStore.open(w / 'search' / 'targets').is_complete()
  assert 'SGD test accuracy' in out['sgd']
  assert (w / 'seed0' / 'sgd_convs2' / 'results.json').exists()


@pytest.mark.slow
def test_launch_train_student_writes_diagnostics(pipeline):
  w = pipeline['workdir']
  assert 'linear probe' in pipeline['out']['student']
  results = json.loads((w / 'seed0' / 'student_all_layers' / 'results.json').read_text())
  d = results['diagnostics']
  assert len(d['r2_train']) == 3 and all(np.isfinite(d['r2_train']))
  assert d['r2_holdout'] is None  # no hold-out store existed yet
  assert 0 <= d['phat_accuracy'] <= 1 and 0 <= d['linear_probe_test_accuracy'] <= 1
  assert d['images'] == {'train': 256, 'holdout': 0, 'test': 256}


@pytest.mark.slow
def test_reproduce_reuses_finished_runs_and_adds_the_rest(pipeline, mnist_dir):
  w, first = pipeline['workdir'], pipeline['first']
  assert first['ran_this_invocation'] == ['search_holdout', 'random_feature_floor',
                                         'seed0/student_skip_block0', 'seed0/sgd_convs4',
                                         'seed0/sgd_convs6']
  skip = first['students']['skip_block0']['runs']['0']['diagnostics']
  assert len(skip['r2_holdout']) == 3 and skip['images']['holdout'] == 200
  # Every depth trains (6 convs per block gave NaN: optim.unscale_and_clip says why).
  per_convs = first['sgd']['per_convs']
  holdout = {int(n): r['runs']['0']['holdout_accuracy'] for n, r in per_convs.items()}
  assert sorted(holdout) == [2, 4, 6] and all(0 < a <= 1 for a in holdout.values())
  assert holdout[first['sgd']['selected_convs']] == max(holdout.values())
  assert set(first['throughput']) >= {'all_layers', 'skip_block0', 'sgd_images_per_s'}
  # The hold-out store serves hold-out images only: as training targets it is refused.
  exp = cfglib.from_dict(cfglib.ExperimentConfig, first['config'])
  ds = data.load_dataset(dataclasses.replace(exp.data, dir=str(mnist_dir)))
  with pytest.raises(target_store.StoreError, match='index_hash'):
    store_ids.open_finished(store_ids.store_dir(w / 'search', 'holdout'),
                            store_ids.StoreId(exp.data, exp.search, ds))


@pytest.mark.slow
def test_reproduce_table_names_rows_scale_and_paper(pipeline):
  table = (pipeline['workdir'] / 'table.md').read_text()
  assert table.strip() in pipeline['out']['again']  # the table is what reproduce.py prints
  title, *_ = table.splitlines()
  assert 'scaled down (smoke)' in title and "NOT the paper's settings" in title
  rows = [l for l in table.splitlines() if l.startswith('| SGD') or l.startswith('| Search')]
  assert len(rows) == 3 + 2  # 3 accuracy rows, 2 diagnostics rows
  accuracy_rows = rows[:3]
  assert all('scaled down (smoke)' in r for r in accuracy_rows)
  assert '99.10 ± 0.10 (Table 1)' in accuracy_rows[0]
  assert 'Search-based (All layers)' in accuracy_rows[1] and '99.00 ± 0.10' in accuracy_rows[1]
  assert 'not in Table 1' in accuracy_rows[2]
  # The floor: a probe on the untrained search network, the number reproduce measured.
  (floor_row,) = [l for l in table.splitlines() if l.startswith('| Random features')]
  floor = pipeline['first']['random_feature_floor']['test_accuracy']
  assert 0 < floor <= 1 and f'| {100 * floor:.2f} |' in floor_row


@pytest.mark.slow
def test_reproduce_draws_training_curves(pipeline):
  w = pipeline['workdir']
  assert (w / 'training_curves.png').read_bytes()[:4] == b'\x89PNG'
  curves = json.loads((w / 'training_curves.json').read_text())
  assert curves['scale'] == 'scaled down (smoke)'
  labels = [k for k in curves if ', seed ' in k]
  assert len(labels) == 3  # the selected SGD option and the two student variants
  for label in labels:
    epochs = curves[label]['epochs']
    assert epochs and len(curves[label]['holdout_accuracy']) == len(epochs)
    assert ('mse' in curves[label]) == label.startswith('Search-based')


@pytest.mark.slow
def test_second_reproduce_with_other_speed_only_settings_reruns_nothing(pipeline):
  assert pipeline['second']['ran_this_invocation'] == []
  for path, mtime in pipeline['mtimes'].items():
    assert path.stat().st_mtime_ns == mtime, path
  assert pipeline['second']['rows'] == pipeline['first']['rows']


@pytest.mark.slow
def test_reproduce_refuses_a_finished_student_of_another_setting(pipeline, mnist_dir):
  w = pipeline['workdir']
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run(
      [sys.executable, 'launch/reproduce.py', f'--config={REPO / "configs" / "mnist.py"}:smoke',
       f'--workdir={w}', f'--config.data.dir={mnist_dir}', '--config.sgd.train.optim.epochs=1',
       '--config.student.train.optim.epochs=1', '--config.student.kl_weight=0.5'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'student.kl_weight: expected 0.5' in proc.stdout + proc.stderr


@pytest.mark.slow
def test_table_says_when_there_is_no_holdout_to_select_on(pipeline):
  results = json.loads((pipeline['workdir'] / 'results.json').read_text())
  assert 'Test accuracy (%) of the hold-out-selected model' in report.format_table(results)
  results['config']['data']['holdout'] = 0
  table = report.format_table(results)
  assert ("Test accuracy (%) of the last epoch's model (data.holdout=0: no hold-out split to "
          'select on)') in table


@pytest.mark.slow
def test_table_names_a_search_other_than_the_papers(pipeline):
  """A student on the gradient control's targets must not read as the paper's method."""
  results = json.loads((pipeline['workdir'] / 'results.json').read_text())
  assert 'control' not in report.format_table(results)
  results['config']['search']['method'] = 'gradient'
  table = report.format_table(results)
  control = 'Search-based (All layers), gradient control'
  assert f'| {control} |' in table  # the diagnostics row
  assert f'- {control}:' in table  # the throughput line
  assert "one gradient search (search.seed=0; search.method='gradient': a control" in table
  assert report.method_name('sgd', 'gradient') == 'SGD'
