"""Two processes on jax.distributed (a loopback coordinator, gloo collectives, one CPU device
each) fill one target store and train one SGD run: the store equals one process's, the chunks
a killed run left are searched once each, split between the processes, and the trained
weights match one process's on two devices to float tolerance."""

import dataclasses
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from decouple_jax import data
from decouple_jax import runlog
from decouple_jax.learn import sgd, trainer
from decouple_jax.search import driver, sharding, store_ids
from decouple_jax.search.target_store import StoreError, TargetStore

import distributed_worker as worker

WORKER = pathlib.Path(worker.__file__)
TIMEOUT = 240  # seconds for both processes together; a hung collective must not hang the suite


class _Killed(Exception):
  pass


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_two_processes(mnist_dir, workdir):
  coordinator = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join(
                 [str(WORKER.parents[1]), os.environ.get('PYTHONPATH', '')]))
  procs = [subprocess.Popen([sys.executable, str(WORKER), coordinator, str(i), str(mnist_dir),
                             str(workdir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  finally:
    for p in procs:  # after a timeout or an error: no process outlives the test
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


@pytest.fixture(scope='module')
def run(mnist_dir, tmp_path_factory):
  """One process's store and SGD run, a store a killed one-process search left after its first
  chunk, and the two processes' finishing of it and their SGD run."""
  data_cfg = worker.data_config(mnist_dir)
  ds = data.load_dataset(data_cfg)
  ref = tmp_path_factory.mktemp('one_process')
  one_device = sharding.make_mesh(jax.devices()[:1])
  reference = driver.run_search(data_cfg, worker.SEARCH, ref / 'targets', ds=ds, mesh=one_device)
  reference_sgd = sgd.train_sgd(data_cfg, worker.SGD, ref / 'sgd', ds=ds,
                                mesh=trainer.mesh_1d('batch', jax.devices()[:2]))
  shared = tmp_path_factory.mktemp('two_processes')
  write, calls = TargetStore.write_chunk, []

  def dies_on_second_chunk(self, c, *args, **kwargs):
    calls.append(c)
    if len(calls) == 2:
      raise _Killed
    return write(self, c, *args, **kwargs)
  with pytest.MonkeyPatch.context() as m:
    m.setattr(TargetStore, 'write_chunk', dies_on_second_chunk)
    with pytest.raises(_Killed):
      driver.run_search(data_cfg, worker.SEARCH, shared / 'targets', ds=ds, mesh=one_device)
  _run_two_processes(mnist_dir, shared)
  return dict(data_cfg=data_cfg, ds=ds, reference=reference, reference_sgd=reference_sgd,
              shared=shared)


def test_two_processes_finish_a_store_as_one_process_would(run):
  store = TargetStore.open(run['shared'] / 'targets')
  assert store.is_complete()
  for a, b in zip(run['reference'].read(), store.read()):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(run['reference'].best_loss, store.best_loss)
  # The killed run wrote chunk 0; the two processes searched the other two, one each.
  chunks = [(r['chunk'], r['process'])
            for r in runlog.JsonLines(run['shared'] / 'targets' / 'search_log.jsonl').records()]
  assert chunks[0] == (0, 0) and sorted(chunks[1:]) == [(1, 0), (2, 1)]
  summary = runlog.read_json(run['shared'] / 'targets' / 'summary.json')
  assert summary['images_this_run'] == 64 and summary['devices'] == 2


def test_a_cooperating_writer_of_another_config_is_refused(run):
  other = store_ids.StoreId(run['data_cfg'], dataclasses.replace(worker.SEARCH, seed=1), run['ds'])
  with pytest.raises(StoreError, match='config.search.seed: expected 1, found 0'):
    store_ids.open_for_search(run['shared'] / 'targets', other, cooperate=True)


def test_two_processes_train_as_one_process_on_two_devices(run):
  shared = run['shared'] / 'sgd'
  results = runlog.read_json(shared / 'results.json')
  assert results['processes'] == 2 and results['devices'] == 2
  # Written once: one record per epoch, not one per process.
  assert [r['epoch'] for r in runlog.JsonLines(shared / 'metrics.jsonl').records()] == [1, 2]
  expected = jax.tree.leaves(run['reference_sgd']['variables'])
  for process in (0, 1):
    found = np.load(run['shared'] / f'variables{process}.npz')
    assert len(found.files) == len(expected)
    for i, e in enumerate(expected):
      np.testing.assert_allclose(found[f'arr_{i}'], e, rtol=1e-4, atol=1e-5)
  # Rounding may flip one borderline test image at most.
  assert abs(results['test_accuracy'] - run['reference_sgd']['test_accuracy']) <= 1 / 64
