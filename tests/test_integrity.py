"""Nothing on disk lies: damaged checkpoints and stores are caught, OS errors are one line.

One test (or more) per case of issue 18's part B; tiny runs of real MNIST, seconds each.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from decouple_jax import runlog
from decouple_jax.learn import sgd, trainer
from decouple_jax.search import driver
from decouple_jax.search.target_store import StoreError, TargetStore

from test_reliability import LIB, ONE, SEARCH, SGD, real  # pylint: disable=unused-import  # fixture

# Checkpointed every epoch: epochs 3 and 4 are kept.
EVERY_EPOCH = dataclasses.replace(SGD, train=dataclasses.replace(
    SGD.train, checkpoint_every=1,
    optim=dataclasses.replace(SGD.train.optim, epochs=4)))


@pytest.fixture(scope='module')
def uninterrupted(real, tmp_path_factory):
  """A finished 4-epoch run, checkpointed every epoch, and its results."""
  workdir = tmp_path_factory.mktemp('every_epoch')
  return workdir, sgd.train_sgd(real[0], EVERY_EPOCH, workdir, ds=real[1], mesh=ONE)


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_16_bytes(path: pathlib.Path) -> None:
  blob = bytearray(path.read_bytes())
  at = len(blob) // 2
  blob[at:at + 16] = bytes(b ^ 0xFF for b in blob[at:at + 16])
  path.write_bytes(bytes(blob))


def _truncate(path: pathlib.Path) -> None:
  os.truncate(path, path.stat().st_size // 2)


DAMAGE = {
    'flipped state bytes': lambda step: _flip_16_bytes(_largest_file(step / 'state')),
    'truncated state file': lambda step: _truncate(_largest_file(step / 'state')),
    'truncated meta/metadata': lambda step: _truncate(step / 'meta' / 'metadata'),
}


@pytest.mark.parametrize('damage', DAMAGE)
def test_a_damaged_checkpoint_resumes_from_the_one_before(uninterrupted, real, damage, tmp_path):
  workdir, full = uninterrupted
  run = shutil.copytree(workdir, tmp_path / 'run')
  assert sorted(int(p.name) for p in (run / 'checkpoints').iterdir()) == [3, 4]
  DAMAGE[damage](run / 'checkpoints' / '4')
  with pytest.warns(UserWarning, match=r'checkpoints/4 is damaged \(.*\): moved it to '
                                       r'.*damaged_checkpoints/4 .*resuming from the one of '
                                       r'epoch 3'):
    resumed = sgd.train_sgd(real[0], EVERY_EPOCH, run, ds=real[1], mesh=ONE)
  # Epoch 4 was trained again, from epoch 3's checkpoint, to the same bits.
  assert [r['epoch'] for r in runlog.JsonLines(run / 'metrics.jsonl').records()] == [1, 2, 3, 4]
  for a, b in zip(jax.tree.leaves(full['variables']), jax.tree.leaves(resumed['variables'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed['test_accuracy'] == full['test_accuracy']
  assert resumed['final_test_accuracy'] == full['final_test_accuracy']
  assert (run / 'damaged_checkpoints' / '4').is_dir()
  # The checkpoint of epoch 4 written again is good: the next run has nothing to redo.
  again = sgd.train_sgd(real[0], EVERY_EPOCH, run, ds=real[1], mesh=ONE)
  assert again['train_seconds'] == resumed['train_seconds']


def test_a_checkpoint_without_checksums_resumes_with_a_warning(uninterrupted, real, tmp_path):
  run = shutil.copytree(uninterrupted[0], tmp_path / 'run')
  for step in (3, 4):  # as versions before checksums wrote them
    path = run / 'checkpoints' / str(step) / 'meta' / 'metadata'
    meta = json.loads(path.read_text())
    del meta['checksums']
    path.write_text(json.dumps(meta))
  with pytest.warns(UserWarning, match='checkpoints/4 was written by an older version, which '
                                       'recorded no checksums: resuming from it unverified'):
    again = sgd.train_sgd(real[0], EVERY_EPOCH, run, ds=real[1], mesh=ONE)
  assert again['test_accuracy'] == uninterrupted[1]['test_accuracy']
  assert again['train_seconds'] == uninterrupted[1]['train_seconds']  # nothing retrained


@pytest.mark.parametrize('recorded', [True, False])
def test_a_checkpoint_of_another_layout_is_refused_not_called_damaged(uninterrupted, real,
                                                                     recorded, tmp_path,
                                                                     monkeypatch):
  """Another version's optimiser state (here: one more, stateless, transformation) with the same
  config: refused in one line naming the cause, and nothing set aside as damaged. Checkpoints
  from before the layout was recorded (``recorded=False``) are told apart by Orbax's error."""
  import optax
  from decouple_jax.learn import optim
  workdir, _ = uninterrupted
  run = shutil.copytree(workdir, tmp_path / 'run')
  if not recorded:
    for meta in (run / 'checkpoints').glob('*/meta/metadata'):
      blob = json.loads(meta.read_text())
      del blob['checksums']['layout']
      meta.write_text(json.dumps(blob))
  make = optim.optimizer
  monkeypatch.setattr(optim, 'optimizer', lambda *a: optax.chain(make(*a), optax.scale(1.0)))
  with pytest.raises(trainer.TrainError, match=r'checkpoints/4 holds a train state of another '
                                               r'layout .* it is not damaged') as e:
    sgd.train_sgd(real[0], EVERY_EPOCH, run, ds=real[1], mesh=ONE)
  assert '\n' not in str(e.value)
  assert not (run / 'damaged_checkpoints').exists()
  assert sorted(int(p.name) for p in (run / 'checkpoints').iterdir()) == [3, 4]


def test_no_good_checkpoint_left_stops_with_one_line(uninterrupted, real, tmp_path):
  run = shutil.copytree(uninterrupted[0], tmp_path / 'run')
  DAMAGE['flipped state bytes'](run / 'checkpoints' / '4')
  DAMAGE['truncated meta/metadata'](run / 'checkpoints' / '3')
  with pytest.raises(trainer.TrainError) as e:
    sgd.train_sgd(real[0], EVERY_EPOCH, run, ds=real[1], mesh=ONE)
  message = str(e.value)
  assert '\n' not in message
  assert f'every checkpoint in {run / "checkpoints"} is damaged (epoch 4: ' in message
  assert f'delete {run / "checkpoints"} to train from the start' in message


# ----------------------------------------------------------------------------------------------
# OS errors and Ctrl-C at the launch scripts' edge: one line each.

# Runs a launch script after executing a patch (Python source) in its process, without
# progress bars (they would share stderr's lines with the messages under test).
_PATCHED = '''
import runpy, sys
from decouple_jax import runlog
progress = runlog.progress
runlog.progress = lambda *args, **kwargs: progress(*args, **dict(kwargs, disable=True))
exec(sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''
SMOKE = ('--config=configs/mnist.py:smoke', '--config.data.dir={mnist_dir}')


def _launch(script, *args, patch='', mnist_dir=None):
  """Runs ``launch/script`` (after ``patch``); returns (exit status, stdout, stderr)."""
  env = dict(os.environ, PYTHONPATH=str(LIB), JAX_PLATFORMS='cpu')
  args = [a.format(mnist_dir=mnist_dir) for a in args]
  proc = subprocess.run([sys.executable, '-c', _PATCHED, patch, f'launch/{script}', *args],
                        cwd=LIB, env=env, text=True, capture_output=True, timeout=300)
  return proc.returncode, proc.stdout, proc.stderr.strip()


def _assert_one_line(err, *parts):
  assert len(err.splitlines()) == 1, err
  for part in parts:
    assert part in err, err


def test_a_workdir_that_is_a_file_or_not_writable_is_one_line(mnist_dir, tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  if os.geteuid() == 0:  # root writes anywhere a permission allows; sysfs refuses everyone
    unwritable = pathlib.Path('/sys/decouple_jax_test')
  else:
    unwritable = tmp_path / 'read_only'
    unwritable.mkdir(mode=0o555)
  code, _, err = _launch('train_sgd.py', *SMOKE, f'--workdir={a_file}', mnist_dir=mnist_dir)
  assert code == 1
  _assert_one_line(err, f'error: {a_file}: File exists; a file is where a directory must be')
  code, _, err = _launch('train_sgd.py', *SMOKE, f'--workdir={unwritable}/run',
                         mnist_dir=mnist_dir)
  assert code == 1
  _assert_one_line(err, f'error: {unwritable}', 'make it writable or choose another path')


# A full disk on the search's first write of target rows.
_DISK_FULL = '''
import errno, os
def pwrite(fd, data, offset):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.pwrite = pwrite
'''
# The store's directory deleted before its second chunk is written.
_TARGETS_DELETED = '''
import shutil
from decouple_jax.search.target_store import TargetStore
write_chunk, calls = TargetStore.write_chunk, []
def deleting(self, *args, **kwargs):
  calls.append(1)
  if len(calls) == 2:
    shutil.rmtree(self.directory)
  return write_chunk(self, *args, **kwargs)
TargetStore.write_chunk = deleting
'''


def test_a_full_disk_or_a_deleted_store_mid_search_is_one_line(mnist_dir, tmp_path):
  targets = tmp_path / 'run' / 'targets'
  workdir = f'--workdir={tmp_path / "run"}'
  code, _, err = _launch('search.py', *SMOKE, workdir, patch=_DISK_FULL, mnist_dir=mnist_dir)
  assert code == 1
  _assert_one_line(err, f'error: {targets}/layer0.npy: No space left on device; the disk is '
                   'full: free space on it')
  code, _, err = _launch('search.py', *SMOKE, workdir, patch=_TARGETS_DELETED,
                         mnist_dir=mnist_dir)
  assert code == 1
  _assert_one_line(err, f'error: {targets}/', 'No such file or directory; it was deleted')
  code, out, err = _launch('search.py', *SMOKE, workdir, mnist_dir=mnist_dir)
  assert code == 0 and 'searched 256 images' in out, err


# Ctrl-C right after Orbax's first save has started its first thread.
_INTERRUPTED_SAVE = '''
import os, signal, threading
import orbax.checkpoint as ocp
# A run started in the background by a non-interactive shell inherits SIGINT ignored, and
# Python then installs no KeyboardInterrupt handler: restore it, as a terminal's Ctrl-C has it.
signal.signal(signal.SIGINT, signal.default_int_handler)
save, start = ocp.CheckpointManager.save, threading.Thread.start
def start_then_interrupt(thread):
  threading.Thread.start = start
  start(thread)
  os.kill(os.getpid(), signal.SIGINT)
def interrupted_save(self, *args, **kwargs):
  ocp.CheckpointManager.save = save
  threading.Thread.start = start_then_interrupt
  return save(self, *args, **kwargs)
ocp.CheckpointManager.save = interrupted_save
'''


def test_ctrl_c_during_the_first_checkpoint_save_is_quiet_and_resumes(mnist_dir, tmp_path):
  every_epoch = ('--config.sgd.train.checkpoint_every=1',)
  code, _, err = _launch('train_sgd.py', *SMOKE, *every_epoch, f'--workdir={tmp_path / "cut"}',
                         patch=_INTERRUPTED_SAVE, mnist_dir=mnist_dir)
  assert code == 130
  _assert_one_line(err, 'interrupted: run the same command again to resume')
  code, resumed, err = _launch('train_sgd.py', *SMOKE, *every_epoch,
                               f'--workdir={tmp_path / "cut"}', mnist_dir=mnist_dir)
  assert code == 0, err
  code, full, err = _launch('train_sgd.py', *SMOKE, *every_epoch,
                            f'--workdir={tmp_path / "full"}', mnist_dir=mnist_dir)
  assert code == 0, err
  results = [runlog.read_json(tmp_path / run / 'results.json') for run in ('cut', 'full')]
  assert results[0]['test_accuracy'] == results[1]['test_accuracy']
  assert results[0]['final_test_accuracy'] == results[1]['final_test_accuracy']


# ----------------------------------------------------------------------------------------------
# Stores verify what they hold.

_STORE_FILES = ('layer0.npy', 'layer1.npy', 'layer2.npy', 'layer3.npy', 'best_loss.npy',
                'init_loss.npy')


def _nan_into_chunk_1(directory, name):
  array = np.load(directory / name, mmap_mode='r+')
  array[SEARCH.chunk_size] = np.nan
  array.flush()


@pytest.mark.parametrize('name', ['layer1.npy', 'best_loss.npy'])
def test_a_damaged_chunk_is_refused_by_readers_and_searched_again(real, name, tmp_path):
  data_cfg, ds = real
  directory = tmp_path / 'targets'
  driver.run_search(data_cfg, SEARCH, directory, ds=ds)
  clean = {f: (directory / f).read_bytes() for f in _STORE_FILES}
  searched = runlog.JsonLines(directory / 'search_log.jsonl').records()
  _nan_into_chunk_1(directory, name)
  with pytest.raises(StoreError, match=r'damaged: chunk\(s\) \[1\] do not match'):
    TargetStore.open(directory).best_loss  # pylint: disable=expression-not-assigned
  with pytest.warns(UserWarning, match=r'chunk\(s\) \[1\] do not match their checksums .*'
                                       r'searching them again'):
    driver.run_search(data_cfg, SEARCH, directory, ds=ds)
  assert {f: (directory / f).read_bytes() for f in _STORE_FILES} == clean
  assert runlog.read_json(directory / 'summary.json')['images_this_run'] == SEARCH.chunk_size
  redone = runlog.JsonLines(directory / 'search_log.jsonl').records()[len(searched):]
  assert [r['chunk'] for r in redone] == [1]


def test_search_py_reports_a_damaged_chunk_and_searches_it_again(mnist_dir, tmp_path):
  workdir = f'--workdir={tmp_path / "run"}'
  code, _, err = _launch('search.py', *SMOKE, workdir, mnist_dir=mnist_dir)
  assert code == 0, err
  targets = tmp_path / 'run' / 'targets'
  clean = (targets / 'best_loss.npy').read_bytes()
  best_loss = np.load(targets / 'best_loss.npy', mmap_mode='r+')
  best_loss[64] = np.nan  # the smoke config's chunks hold 64 images: this is chunk 1
  best_loss.flush()
  code, out, err = _launch('search.py', *SMOKE, workdir, mnist_dir=mnist_dir)
  assert code == 0, err
  _assert_one_line(err, f'warning: {targets}: chunk(s) [1] do not match their checksums',
                   'searching them again')
  assert 'searched 256 images' in out
  assert (targets / 'best_loss.npy').read_bytes() == clean
