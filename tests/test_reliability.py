"""Nothing silent: data identity, one writer per workdir, clean logs, clear failures.

One test (or more) per case of issue 13; all on tiny runs of real MNIST, seconds each.
"""

import dataclasses
import gzip
import io
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tqdm

import decouple_jax
from decouple_jax import analysis, config as cfglib, data, identity, locks, models, reproduce, runlog
from decouple_jax.learn import sgd, student, trainer
from decouple_jax.search import driver, evolve, store_ids
from decouple_jax.search import operators as ops
from decouple_jax.search.target_store import StoreError, TargetStore

from cifar_archives import write_cifar_archive
from test_data import _write_idx_gz

# The library under test, and its launch scripts and configs (run from there).
LIB = pathlib.Path(decouple_jax.__file__).resolve().parents[1]
ONE = trainer.mesh_1d('batch', jax.devices()[:1])
LIMITS = dict(train_limit=128, holdout=64, test_limit=64)
SGD = cfglib.SGDConfig(
    model=cfglib.ModelConfig(widths=(4, 4, 4), convs_per_block=2, whiten_images=64),
    train=cfglib.TrainConfig(optim=cfglib.OptimConfig(batch_size=64, epochs=3, clip_norm=2.0),
                             eval_batch=64, checkpoint_every=3, flip=False))
SEARCH = cfglib.SearchConfig(
    model=cfglib.ModelConfig(widths=(4, 4, 4), whiten_images=64), population=12, top_k=2,
    n_explore=4, n_refine=6, chunk_size=32,
    layers={name: dataclasses.replace(l, generations=0)
            for name, l in cfglib.PAPER_SCHEDULE.items()})
STUDENT = cfglib.StudentConfig(
    model=dataclasses.replace(SEARCH.model, convs_per_block=2, tap='pre_gelu', tap_scale=True),
    train=dataclasses.replace(SGD.train, optim=dataclasses.replace(SGD.train.optim, epochs=1)))


@pytest.fixture(scope='module')
def real(mnist_dir):
  cfg = cfglib.DataConfig(dir=str(mnist_dir), **LIMITS)
  return cfg, data.load_dataset(cfg)


@pytest.fixture(scope='module')
def moved(mnist_dir, tmp_path_factory):
  """The same verified files in another directory."""
  d = tmp_path_factory.mktemp('moved')
  for name in data.checksums.MNIST_FILES:
    (d / name).symlink_to(mnist_dir / name)
  cfg = cfglib.DataConfig(dir=str(d), **LIMITS)
  return cfg, data.load_dataset(cfg)


@pytest.fixture(scope='module')
def other(mnist_dir, tmp_path_factory):
  """Another MNIST-format data set of the same size: one test label differs."""
  d = tmp_path_factory.mktemp('other')
  for name in data.checksums.MNIST_FILES[:3]:
    (d / name).symlink_to(mnist_dir / name)
  labels = data.idx.read_idx_gz(mnist_dir / 't10k-labels-idx1-ubyte.gz', ndim=1).copy()
  labels[0] = (labels[0] + 1) % 10
  _write_idx_gz(d / 't10k-labels-idx1-ubyte.gz', labels)
  cfg = cfglib.DataConfig(dir=str(d), verify=False, **LIMITS)
  return cfg, data.load_dataset(cfg)


def _store(directory, data_cfg, ds, poison_chunk=None, written=None):
  """A complete store of made-up finite targets (no search: only its identity matters).

  ``poison_chunk``: NaN put at block 1 of that chunk's first image after it was written, as a
  disk or a stray write would (its checksum no longer matches). ``written``: a value the
  writer itself puts at block 1 of the first image, as a search that diverged would (its
  checksum covers it)."""
  st = store_ids.open_for_search(directory, store_ids.StoreId(data_cfg, SEARCH, ds))
  rng = np.random.default_rng(0)
  for c in st.missing_chunks():
    start, stop = st.chunk_range(c)
    n = stop - start
    layers = [rng.normal(size=(n, *s)).astype(np.float32) for s in st.spec.shapes]
    if written is not None and start == 0:
      layers[1][0] = written
    st.write_chunk(c, layers, np.ones((n, 4), np.float32), np.ones(n, np.float32))
  if poison_chunk is not None:
    layer = np.load(pathlib.Path(directory) / 'layer1.npy', mmap_mode='r+')
    layer[poison_chunk * SEARCH.chunk_size] = np.nan
    layer.flush()
  return directory


class _Killed(Exception):
  pass


@pytest.fixture(scope='module')
def sgd_run(real, tmp_path_factory):
  """A 3-epoch SGD run checkpointed only at its end, killed in epoch 3, then resumed; and the
  names its progress bars were given."""
  data_cfg, ds = real
  workdir = tmp_path_factory.mktemp('sgd')
  names = []
  make_bar = runlog.progress

  def recording(*args, **kwargs):
    names.append(kwargs.get('desc'))
    return make_bar(*args, **kwargs)

  def kill_in_epoch_3(epoch, _):
    if epoch == 3:
      raise _Killed  # after epochs 1 and 2 were logged, before any checkpoint
    return {}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(runlog, 'progress', recording)
    with pytest.raises(_Killed):
      sgd.train_sgd(data_cfg, SGD, workdir, ds=ds, mesh=ONE, epoch_callback=kill_in_epoch_3)
    results = sgd.train_sgd(data_cfg, SGD, workdir, ds=ds, mesh=ONE)
  return workdir, results, names


def _copy(workdir, tmp_path):
  return shutil.copytree(workdir, tmp_path / 'run')


def _epochs(workdir):
  return [r['epoch'] for r in runlog.JsonLines(pathlib.Path(workdir) / 'metrics.jsonl').records()]


# ----------------------------------------------------------------------------------------------
# Data identity.


def test_fingerprint_follows_content_not_place(real, moved, other):
  assert real[1].fingerprint == moved[1].fingerprint
  assert real[1].fingerprint != other[1].fingerprint
  assert data.identity(*real) == data.identity(*moved)


def test_store_of_another_data_set_is_refused(real, moved, other, tmp_path):
  targets = _store(tmp_path / 'targets', *other)
  with pytest.raises(StoreError) as e:
    store_ids.open_finished(targets, store_ids.StoreId(real[0], SEARCH, real[1]))
  assert 'config.data.fingerprint: expected' in str(e.value)
  ours = _store(tmp_path / 'ours', *real)
  assert store_ids.open_finished(ours, store_ids.StoreId(moved[0], SEARCH, moved[1])).is_complete()


def test_moved_verified_data_keeps_finished_runs(sgd_run, moved, tmp_path):
  workdir, results, _ = sgd_run
  run = _copy(workdir, tmp_path)
  again = sgd.train_sgd(moved[0], SGD, run, ds=moved[1], mesh=ONE)
  assert again['test_accuracy'] == results['test_accuracy']
  assert again['train_seconds'] == results['train_seconds']  # nothing retrained
  done = identity.finished(run / 'results.json', identity.sgd(*moved, SGD),
                           required='test_accuracy')
  assert done['test_accuracy'] == results['test_accuracy']


def test_another_data_set_or_config_is_refused_naming_the_field(sgd_run, other, real, tmp_path):
  run = _copy(sgd_run[0], tmp_path)
  with pytest.raises(trainer.TrainError) as e:
    sgd.train_sgd(other[0], SGD, run, ds=other[1], mesh=ONE)
  assert 'data.fingerprint: expected' in str(e.value)
  longer = dataclasses.replace(SGD, train=dataclasses.replace(
      SGD.train, optim=dataclasses.replace(SGD.train.optim, epochs=4)))
  with pytest.raises(trainer.TrainError) as e:
    sgd.train_sgd(real[0], longer, run, ds=real[1], mesh=ONE)
  assert str(e.value).count('expected') == 1
  assert 'sgd.train.optim.epochs: expected 4, found 3' in str(e.value)
  with pytest.raises(cfglib.ConfigError, match='sgd.train.optim.epochs: expected 4, found 3'):
    identity.finished(run / 'results.json', identity.sgd(*real, longer))


def _damaged_cifar(tmp_path):
  """A CIFAR-10 archive whose gzip stream is stored (not deflated), with pixel bytes of a
  member flipped: the tar reads fine, only the gzip CRC can tell."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, 12)
  good = write_cifar_archive(tmp_path / 'good.tar.gz', x[:10], y[:10], test_images=x[10:],
                             test_labels=y[10:])
  blob = bytearray(gzip.compress(gzip.decompress(good.read_bytes()), compresslevel=0))
  pixels = x[0].transpose(2, 0, 1).tobytes()[:64]  # channel-major, as the pickles hold them
  at = blob.index(pixels)
  blob[at:at + 8] = bytes(b ^ 0xFF for b in blob[at:at + 8])
  d = tmp_path / 'cifar'
  d.mkdir()
  (d / 'cifar-10-python.tar.gz').write_bytes(bytes(blob))
  return d


def test_cifar_archive_damaged_inside_a_member_is_refused(tmp_path):
  d = _damaged_cifar(tmp_path)
  with tarfile.open(d / 'cifar-10-python.tar.gz') as tar:  # the tar itself still reads
    assert len(tar.getnames()) == 7
  with pytest.raises(data.DataError, match='not a readable .tar.gz archive.*CRC'):
    data.load_dataset(cfglib.DataConfig(name='cifar10', dir=str(d), holdout=0, verify=False))


# ----------------------------------------------------------------------------------------------
# Logs.


def test_kill_before_the_first_checkpoint_restarts_the_log(sgd_run):
  assert _epochs(sgd_run[0]) == [1, 2, 3]


def test_torn_last_line_is_dropped_with_a_warning(sgd_run, real, tmp_path):
  run = _copy(sgd_run[0], tmp_path)
  with open(run / 'metrics.jsonl', 'a') as f:
    f.write('{"epoch": 4, "lo')
  with pytest.warns(UserWarning, match='dropped a torn last line'):
    sgd.train_sgd(real[0], SGD, run, ds=real[1], mesh=ONE)
  assert _epochs(run) == [1, 2, 3]


def test_a_write_after_a_torn_line_starts_a_new_line(tmp_path):
  log = runlog.JsonLines(tmp_path / 'log.jsonl')
  log.write({'chunk': 0})
  with open(log.path, 'a') as f:
    f.write('{"chunk": 1, "ima')
  with pytest.warns(UserWarning, match='torn'):
    log.write({'chunk': 1})
  assert log.records() == [{'chunk': 0}, {'chunk': 1}]
  log.path.write_text('{"chunk": 0}\n{"chu\n{"chunk": 2}\n')
  with pytest.raises(runlog.RecordError, match='line 2'):
    log.records()


def test_progress_bars_name_the_run(sgd_run):
  assert sgd_run[2] == ['sgd convs2', 'sgd convs2']


def test_eta_leaves_out_the_first_step(monkeypatch):
  now = [0.0]
  monkeypatch.setattr(tqdm.std, 'time', lambda: now[0])
  bar = runlog.progress(total=100, disable=False, file=io.StringIO(), smoothing=0)
  now[0] = 1000.0  # the first step: compilation
  bar.update(1)
  now[0] = 1010.0  # then 10 s a step: 98 steps to go
  bar.update(1)
  assert '<16:20' in str(bar)


# ----------------------------------------------------------------------------------------------
# Search losses and damaged stores.


def test_search_losses_are_never_negative(real):
  _, ds = real
  cfg = dataclasses.replace(SEARCH, layers={**SEARCH.layers,
                                            'logits': cfglib.LayerSchedule(3, 1e6, 1.0, 0)})
  model, variables = models.init_for_dataset(cfg.model, ds, cfg.untrained_network_seed)
  x = data.normalize(ds.train_images[:8], ds.mean, ds.std)
  result = jax.jit(lambda x, y, i: evolve.search_batch(model, variables, cfg, x, y, i))(
      x, ds.train_labels[:8], ds.train_index[:8])
  assert np.all(np.asarray(result.best_loss) >= 0)


@pytest.mark.parametrize('scale', [1e6, 1e20, 1e30])
def test_fitness_is_a_nonnegative_loss_at_huge_logits(scale):
  logits = ops.center(jax.random.normal(jax.random.key(0), (64, 10)) * scale)
  loss = jax.jit(ops.fitness)(logits, jnp.int32(3))
  assert np.all(np.asarray(loss) >= 0)
  wrong = np.asarray(logits).max(1) > np.asarray(logits)[:, 3]
  # A confidently wrong candidate loses by about its margin.
  np.testing.assert_allclose(np.asarray(loss)[wrong],
                             (np.asarray(logits).max(1) - np.asarray(logits)[:, 3])[wrong],
                             rtol=1e-5)
  assert np.isinf(ops.fitness(logits.at[0, 0].set(jnp.nan), jnp.int32(3))[0])


def test_nan_in_a_finished_store_is_reported_as_damage(real, tmp_path):
  data_cfg, ds = real
  targets = _store(tmp_path / 'targets', data_cfg, ds, poison_chunk=1)
  with pytest.raises(StoreError, match=r'damaged: chunk\(s\) \[1\] do not match their '
                                       r'checksums'):
    student.train_student(data_cfg, SEARCH, STUDENT, tmp_path / 'student', targets, ds=ds,
                          mesh=ONE)
  st = TargetStore.open(targets)
  st.read(np.arange(32))  # chunk 0 is intact
  with pytest.raises(StoreError, match=r'chunk\(s\) \[1\]'):
    st.read(np.array([SEARCH.chunk_size]))


def test_huge_targets_stop_training_naming_the_targets_not_the_lr(real, tmp_path):
  data_cfg, ds = real
  targets = _store(tmp_path / 'targets', data_cfg, ds, written=1e30)
  with pytest.raises(trainer.TrainError) as e:
    student.train_student(data_cfg, SEARCH, STUDENT, tmp_path / 'student', targets, ds=ds,
                          mesh=ONE)
  message = str(e.value)
  assert 'non-finite metrics: loss, mse_block1' in message, message
  assert ('The data is wrong, not the optimiser: side data 1 (for a student: the searched '
          'targets of tap 1) holds values up to 1e+30') in message, message
  assert f'gradient clipping was on (optim.clip_norm={STUDENT.train.optim.clip_norm})' in message
  assert 'optim.lr' not in message
  # Epoch 1 wrote no checkpoint, and the message says so rather than promising one.
  assert 'No checkpoint of this run exists yet' in message, message


@pytest.mark.parametrize('clip_norm', [0.0, 2.0])
def test_nonfinite_advice_follows_what_the_step_shows(clip_norm):
  flags = {'metric loss': True, 'statistic block2/group0/norm1/bn/var': False,
           'gradient block1/group0/conv1/kernel': True, 'gradient block0/group0/conv1/kernel':
           True, 'parameter head/kernel': True, 'parameter block0/group0/conv1/kernel': False}
  message = trainer.nonfinite_message('epoch 3, step 2 of 4', flags, (np.ones((4, 3)),),
                                      clip_norm, 'Its checkpoint of epoch 2 in DIR is kept.')
  assert message.startswith('a training step met NaN or inf in epoch 3, step 2 of 4: '
                            'non-finite metrics: loss; first non-finite gradient: '
                            'block0/group0/conv1/kernel; first non-finite parameter: '
                            'head/kernel; ')
  assert 'statistic' not in message and 'data is wrong' not in message
  if clip_norm:
    assert 'gradient clipping was on (optim.clip_norm=2.0). Lower optim.lr.' in message
  else:
    assert ('gradient clipping was off (optim.clip_norm=0). Set optim.clip_norm (e.g. 2.0) or '
            'lower optim.lr.') in message
  assert message.endswith('Its checkpoint of epoch 2 in DIR is kept.')


# ----------------------------------------------------------------------------------------------
# No hold-out split.


def test_no_holdout_selects_the_last_epoch_end_to_end(mnist_dir, tmp_path):
  data_cfg = cfglib.DataConfig(dir=str(mnist_dir), **dict(LIMITS, holdout=0))
  ds = data.load_dataset(data_cfg)
  targets = _store(tmp_path / 'targets', data_cfg, ds)
  names = []
  make_bar = runlog.progress

  def recording(*args, **kwargs):
    names.append(kwargs.get('desc'))
    return make_bar(*args, **kwargs)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(runlog, 'progress', recording)
    results = student.train_student(data_cfg, SEARCH, STUDENT, tmp_path / 'student', targets,
                                    ds=ds, mesh=ONE)
  assert names == ['student all_layers']
  assert results['holdout_accuracy'] is None and results['selected_by'] == 'last_epoch'
  assert results['best_epoch'] == 1 and results['diagnostics']['r2_holdout'] is None
  assert 'no hold-out split: the last epoch, 1' in trainer.accuracy_line(results)
  assert all('holdout_accuracy' not in r
             for r in runlog.JsonLines(tmp_path / 'student' / 'metrics.jsonl').records())


# ----------------------------------------------------------------------------------------------
# One writer per workdir.


_HOLDER = '''
import sys, time
sys.path.insert(0, sys.argv[1])
from decouple_jax import locks
for d in sys.argv[3:]:
  locks.acquire(d, cooperate=sys.argv[2] == 'cooperate')
print('held', flush=True)
time.sleep(300)
'''


@pytest.fixture
def holder(tmp_path):
  """Starts a process holding the writer locks of directories; yields (start, kill)."""
  procs = []

  def start(*directories, cooperate=False):
    proc = subprocess.Popen([sys.executable, '-c', _HOLDER, str(LIB),
                             'cooperate' if cooperate else 'alone', *map(str, directories)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout.readline() == 'held\n', proc.stderr.read()
    return proc
  yield start
  for proc in procs:
    proc.kill()
    proc.communicate()


def test_a_directory_in_use_is_refused_at_once_naming_the_holder(holder, real, tmp_path):
  data_cfg, ds = real
  exp = cfglib.ExperimentConfig(data=data_cfg)
  runs = {'train': tmp_path / 'train', 'search': tmp_path / 'search',
          'reproduce': tmp_path / 'reproduce', 'analysis': tmp_path / 'analysis'}
  proc = holder(*runs.values())
  attempts = {
      'train': lambda: sgd.train_sgd(data_cfg, SGD, runs['train'], ds=ds, mesh=ONE),
      'search': lambda: driver.run_search(data_cfg, SEARCH, runs['search'], ds=ds),
      'reproduce': lambda: reproduce.reproduce(exp, runs['reproduce']),
      'analysis': lambda: analysis.run_analysis(exp, runs['analysis'], 'scaling'),
  }
  for name, attempt in attempts.items():
    with pytest.raises(locks.DirectoryBusy) as e:
      attempt()
    assert f'{runs[name]} is in use by pid {proc.pid} (' in str(e.value), name
  assert not (runs['train'] / 'metrics.jsonl').exists()
  assert not (runs['search'] / 'meta.json').exists()

  proc.send_signal(signal.SIGKILL)  # a killed holder leaves nothing stuck
  proc.wait()
  with locks.hold(runs['train']):
    with locks.hold(runs['train']):  # nested holds in one process are fine
      pass


def test_cooperating_writers_share_a_directory(holder, tmp_path):
  holder(tmp_path, cooperate=True)
  with locks.hold(tmp_path, cooperate=True):
    pass
  with pytest.raises(locks.DirectoryBusy, match='in use by pid'):
    locks.acquire(tmp_path)


# ----------------------------------------------------------------------------------------------
# Launch scripts.

SCRIPTS = ('analyze.py', 'ensemble.py', 'feedback.py', 'fetch_data.py', 'reproduce.py',
           'search.py', 'train_sgd.py', 'train_student.py')


def test_launch_scripts_help_and_one_line_errors(mnist_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(LIB), JAX_PLATFORMS='cpu')
  run = lambda script, *args: subprocess.Popen(
      [sys.executable, f'launch/{script}', *args], cwd=LIB, env=env, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  smoke = ['--config=configs/mnist.py:smoke', f'--workdir={tmp_path / "w"}']
  busy = tmp_path / 'busy'
  with locks.hold(busy):
    procs = {script: run(script, '--help') for script in SCRIPTS}
    errors = {
        "unknown variant 'nope'": run('train_sgd.py', '--config=configs/mnist.py:nope',
                                      f'--workdir={tmp_path / "w"}'),
        "config.sgd has no field 'nope'": run('train_sgd.py', *smoke, '--config.sgd.nope=3'),
        # Refused when the config is built, before the (missing) data would be read.
        "head='flaten' is not one of ('flatten', 'maxpool')": run(
            'train_sgd.py', smoke[0], f'--workdir={tmp_path / "refused" / "w"}',
            '--config.sgd.model.head=flaten', '--config.data.dir=/no'),
        # An empty variant, as an unset shell variable gives.
        'no variant after the colon; configs/mnist.py has paper, cpu, demo, smoke': run(
            'train_sgd.py', '--config=configs/mnist.py:', f'--workdir={tmp_path / "w"}'),
        f'is in use by pid {os.getpid()}': run('search.py', smoke[0], f'--workdir={busy}',
                                               f'--config.data.dir={mnist_dir}'),
    }
    outputs = {k: (p.wait(timeout=120), *p.communicate()) for k, p in {**procs, **errors}.items()}
  for script in SCRIPTS:
    code, out, err = outputs[script]
    assert code == 0, (script, err)
    assert f'launch/{script}' in out
    if script != 'fetch_data.py':
      assert 'configs/mnist.py: paper, cpu, demo, smoke' in out, script
  for expected in errors:
    code, out, err = outputs[expected]
    assert code == 1 and expected in err, err
    assert len(err.strip().splitlines()) == 1, err
  # A run refused before any work leaves no workdir (nor the parents it made) behind.
  assert not (tmp_path / 'refused').exists()
