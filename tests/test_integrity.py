"""Nothing on disk lies: damaged checkpoints and stores are caught, OS errors are one line.

One test (or more) per case of issue 18's part B; tiny runs of real MNIST, seconds each.
"""

import dataclasses
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

from test_reliability import LIB, ONE, SGD, real  # pylint: disable=unused-import  # fixture

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
