"""The on-disk target store: round trips, resumption after kills, refusals, device placement."""

import dataclasses
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import threading

import jax
import ml_dtypes
import numpy as np
import pytest

from decouple_jax import locks
from decouple_jax.search import target_store
from decouple_jax.search.target_store import StoreError, TargetStore

TESTS = pathlib.Path(__file__).resolve().parent
SHAPES = ((5, 5, 3), (2, 2, 3), (1, 1, 3), (10,))
N, CHUNK = 10, 4  # chunks of 4, 4 and 2 images: the last one is short
VALUE_DTYPE = {'float32': np.float32, 'float16': np.float16, 'bfloat16': ml_dtypes.bfloat16}


def make_spec(indices=None, **overrides):
  indices = np.arange(100, 100 + N) if indices is None else indices
  spec = target_store.StoreSpec(shapes=SHAPES, dtype='float32', num_images=N, chunk_size=CHUNK,
                                config_hash='cfg0', data_name='mnist', seed=0,
                                index_hash=target_store.indices_hash(indices))
  return dataclasses.replace(spec, **overrides), indices


def create(directory, **overrides):
  spec, indices = make_spec(**overrides)
  return TargetStore.create_or_open(directory, spec, indices)


def chunk_data(spec, c):
  """Deterministic (targets, best_loss, init_loss) of chunk c: a rewrite gives the same bytes."""
  start = c * spec.chunk_size
  n = min(start + spec.chunk_size, spec.num_images) - start
  rng = np.random.default_rng(c)
  targets = [rng.normal(size=(n, *s)).astype(np.float32) for s in spec.shapes]
  return targets, rng.random((n, len(spec.shapes)), np.float32), rng.random(n, np.float32)


def fill(st, chunks=None):
  for c in st.missing_chunks() if chunks is None else chunks:
    st.write_chunk(c, *chunk_data(st.spec, c))


def full_data(spec):
  parts = [chunk_data(spec, c) for c in range(spec.num_chunks)]
  targets = [np.concatenate([p[0][l] for p in parts]) for l in range(len(spec.shapes))]
  return targets, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def dir_bytes(directory):
  # The writer lock's file says who holds the store, not what it holds.
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(directory).iterdir())
          if p.name != locks.LOCK_FILE}


@pytest.mark.parametrize('dtype', ['float32', 'float16', 'bfloat16'])
def test_round_trip(tmp_path, dtype):
  st = create(tmp_path, dtype=dtype)
  assert st.missing_chunks() == [0, 1, 2] and not st.is_complete()
  assert [st.chunk_range(c) for c in range(st.num_chunks)] == [(0, 4), (4, 8), (8, 10)]
  fill(st)
  assert st.is_complete() and st.missing_chunks() == []

  ro = TargetStore.open(tmp_path, expect={'data_name': 'mnist', 'dtype': dtype})
  targets, best_loss, init_loss = full_data(ro.spec)
  loaded = ro.read()
  tol = {'float32': 0.0, 'float16': 2.0**-11, 'bfloat16': 2.0**-8}[dtype]  # half an ulp
  for got, want in zip(loaded, targets):
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=tol, atol=1e-7 if tol else 0)
    # Exactly the rounding to the store dtype, nothing else.
    np.testing.assert_array_equal(got, want.astype(VALUE_DTYPE[dtype]).astype(np.float32))
  np.testing.assert_array_equal(ro.best_loss, best_loss)
  np.testing.assert_array_equal(ro.init_loss, init_loss)
  np.testing.assert_array_equal(ro.indices, np.arange(100, 100 + N))

  positions = np.array([9, 0, 5, 5, 3])
  for got, whole in zip(ro.read(positions), loaded):
    np.testing.assert_array_equal(got, whole[positions])
  native = ro.read(positions, dtype=VALUE_DTYPE[dtype])
  assert all(t.dtype == VALUE_DTYPE[dtype] for t in native)

  # The files are plain .npy; bfloat16 is kept as its uint16 bits.
  disk = np.load(tmp_path / 'layer0.npy', mmap_mode='r')
  assert disk.dtype == {'float32': np.float32, 'float16': np.float16, 'bfloat16': np.uint16}[dtype]
  np.testing.assert_array_equal(disk.view(VALUE_DTYPE[dtype]).astype(np.float32), loaded[0])
  itemsize = 4 if dtype == 'float32' else 2
  assert ro.nbytes == sum(N * math.prod(s) * itemsize for s in SHAPES)


def test_read_chosen_layers_and_whole_layers(tmp_path):
  fill(create(tmp_path, dtype='bfloat16'))
  ro = TargetStore.open(tmp_path)
  assert ro.value_dtype == np.dtype(ml_dtypes.bfloat16)
  whole = ro.read()
  positions = np.array([7, 2, 2])
  logits, block0 = ro.read(positions, layers=[-1, 0])
  np.testing.assert_array_equal(logits, whole[3][positions])
  np.testing.assert_array_equal(block0, whole[0][positions])
  assert ro.read(positions, layers=[]) == ()
  # positions=None: every image, in store order; the host copy outlives the store's files.
  logits, block1 = ro.read(layers=[-1, 1])
  np.testing.assert_array_equal(logits, whole[3])
  assert logits.flags.owndata
  (native,) = ro.read(layers=[1], dtype=ro.value_dtype)
  assert native.dtype == ro.value_dtype
  np.testing.assert_array_equal(native.astype(np.float32), block1)
  assert ro.read(layers=[]) == ()
  for bad in (4, -5):
    for rows in (positions, None):
      with pytest.raises(StoreError, match=rf'layers \[{bad}\] are out of range'):
        ro.read(rows, layers=[bad])


class Killed(Exception):
  """Stands in for a kill at one point of write_chunk."""


def _raise(*args, **kwargs):
  raise Killed


@pytest.mark.parametrize('point', ['mid_data', 'before_commit', 'before_replace'])
def test_resume_after_interrupted_write_is_byte_identical(tmp_path, monkeypatch, point):
  fill(create(tmp_path / 'ref'))
  st = create(tmp_path / 'run')
  fill(st, [0])
  if point == 'mid_data':  # layer 0 of the chunk written, the rest not
    write, calls = target_store._pwrite, []
    def pwrite(*args):
      if calls:
        raise Killed
      calls.append(args)
      write(*args)
    monkeypatch.setattr(target_store, '_pwrite', pwrite)
  elif point == 'before_commit':  # all data durable, metadata untouched
    monkeypatch.setattr(TargetStore, '_commit', _raise)
  else:  # the new meta.json written to its temp file, not yet renamed
    monkeypatch.setattr(os, 'replace', _raise)
  with pytest.raises(Killed):
    fill(st, [1])
  monkeypatch.undo()

  resumed = create(tmp_path / 'run')
  assert resumed.missing_chunks() == [1, 2]
  with pytest.raises(StoreError, match=r'unwritten chunk\(s\) \[1\]'):
    resumed.read(np.array([0, 4]))
  fill(resumed)
  assert dir_bytes(tmp_path / 'run') == dir_bytes(tmp_path / 'ref')


_CHILD = r'''
import os, sys, time
directory, tests_dir, stall_at = sys.argv[1:]
sys.path.insert(0, tests_dir)
import test_store as t
from decouple_jax import locks
from decouple_jax.search import target_store

def stall_on_call(f, n):
  calls = []
  def stalled(*args):
    if len(calls) == n:
      print('stalled', flush=True)
      time.sleep(60)
    calls.append(1)
    return f(*args)
  return stalled

st = t.create(directory)
t.fill(st, [0])
if stall_at == 'data':  # after layer 0 of chunk 1
  target_store._pwrite = stall_on_call(target_store._pwrite, 1)
else:  # after the temp metadata is written, before it is renamed over meta.json
  os.replace = stall_on_call(os.replace, 0)
t.fill(st, [1])
'''


@pytest.mark.parametrize('stall_at', ['data', 'commit'])
def test_resume_after_sigkill_is_byte_identical(tmp_path, stall_at):
  fill(create(tmp_path / 'ref'))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen([sys.executable, '-c', _CHILD, str(tmp_path / 'run'), str(TESTS),
                           stall_at], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)
  watchdog = threading.Timer(60, proc.kill)  # never hang the suite if the child does
  watchdog.start()
  try:
    line = proc.stdout.readline()
    assert line == 'stalled\n', f'child did not reach the stall point: {proc.stderr.read()}'
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
  finally:
    watchdog.cancel()
    proc.kill()
    proc.communicate()

  resumed = create(tmp_path / 'run')
  assert resumed.missing_chunks() == [1, 2]
  fill(resumed)
  assert dir_bytes(tmp_path / 'run') == dir_bytes(tmp_path / 'ref')


def test_concurrent_writers_keep_each_others_chunks(tmp_path):
  a, b = create(tmp_path), create(tmp_path)
  fill(a, [0])
  fill(b, [2])  # b has not seen chunk 0 committed; its commit must not drop it
  assert create(tmp_path).missing_chunks() == [1]


@pytest.mark.parametrize('field, overrides', [
    ('config_hash', dict(config_hash='cfg1')),
    ('data_name', dict(data_name='cifar10')),
    ('seed', dict(seed=1)),
    ('dtype', dict(dtype='bfloat16')),
    ('chunk_size', dict(chunk_size=5)),
    ('shapes', dict(shapes=SHAPES[:3] + ((100,),))),
    ('index_hash', dict(indices=np.arange(200, 200 + N))),
])
def test_store_of_another_run_refused(tmp_path, field, overrides):
  fill(create(tmp_path), [0])
  before = dir_bytes(tmp_path)
  spec, _ = make_spec()
  other, indices = make_spec(**overrides)
  with pytest.raises(StoreError) as e:
    TargetStore.create_or_open(tmp_path, other, indices)
  message = str(e.value)
  assert f'{field}: expected {getattr(other, field)!r}, found {getattr(spec, field)!r}' in message
  assert message.count('expected') == 1  # only the differing field
  assert f'delete {tmp_path}' in message
  assert dir_bytes(tmp_path) == before

  with pytest.raises(StoreError, match=f'{field}: expected'):
    TargetStore.open(tmp_path, expect={field: getattr(other, field)})


def test_open_expect_unknown_field_refused(tmp_path):
  fill(create(tmp_path))
  with pytest.raises(StoreError, match=r"unknown field\(s\) \['data'\]"):
    TargetStore.open(tmp_path, expect={'data': 'mnist'})


def test_index_hash_must_describe_indices(tmp_path):
  spec, _ = make_spec()
  with pytest.raises(StoreError, match='indices_hash'):
    TargetStore.create_or_open(tmp_path, spec, np.arange(N))
  with pytest.raises(StoreError, match=r'\(10,\) integers'):
    TargetStore.create_or_open(tmp_path, spec, np.arange(N - 1))


def _edit_meta(key, value):
  def edit(d):
    meta = json.loads((d / 'meta.json').read_text())
    meta[key] = value
    (d / 'meta.json').write_text(json.dumps(meta))
  return edit


@pytest.mark.parametrize('damage, match', [
    (lambda d: (d / 'meta.json').write_text('{"format_version": 1, "sp'), 'corrupt'),
    (lambda d: (d / 'meta.json').write_bytes(b'\xff\xfe\x00'), 'corrupt'),
    (lambda d: (d / 'meta.json').write_text('[]'), 'not target-store metadata'),
    (lambda d: (d / 'meta.json').unlink(), 'no target store'),
    (_edit_meta('format_version', 0), 'format 0'),
    (_edit_meta('format_version', 1), 'a format 1 store does not record the data it was'),
    (_edit_meta('complete', [7]), 'chunk ids'),
    (_edit_meta('spec', {'dtype': 'float32'}), 'not a StoreSpec'),
    (lambda d: (d / 'layer1.npy').unlink(), 'layer1.npy is missing or corrupt'),
    (lambda d: os.truncate(d / 'layer2.npy', 140), 'layer2.npy is missing or corrupt'),
    (lambda d: np.save(d / 'init_loss.npy', np.zeros(N, np.float64)), 'init_loss.npy holds'),
    (lambda d: np.save(d / 'indices.npy', np.arange(N)), 'indices.npy does not match'),
])
def test_damaged_store_refused(tmp_path, damage, match):
  fill(create(tmp_path))
  damage(tmp_path)
  with pytest.raises(StoreError, match=match):
    TargetStore.open(tmp_path)
  if (tmp_path / 'meta.json').exists():  # a writer must not paper over damage either
    with pytest.raises(StoreError, match=match):
      create(tmp_path)


def _as_format_2(directory):
  """Rewrites a store's meta.json as the previous version of this library (format 2) wrote it:
  the sorted ids of the completed chunks, no checksums."""
  meta = json.loads((directory / 'meta.json').read_text())
  meta.update(format_version=2, complete=sorted(int(c) for c in meta['complete']))
  (directory / 'meta.json').write_text(json.dumps(meta, indent=1, sort_keys=True) + '\n')


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_format_2_store_is_upgraded_by_a_search_and_refused_by_training(tmp_path, dtype):
  fresh, old = tmp_path / 'fresh', tmp_path / 'old'
  fill(create(fresh, dtype=dtype))
  fill(create(old, dtype=dtype))
  _as_format_2(old)
  layer = np.load(old / 'layer1.npy', mmap_mode='r+')
  layer[CHUNK] = np.full(layer.shape[1:], np.nan, VALUE_DTYPE[dtype]).view(layer.dtype)
  layer.flush()
  del layer
  with pytest.raises(StoreError, match=r'has store format 2, .*run the search command that made '
                                       r'it once more') as refused:
    TargetStore.open(old)
  assert '\n' not in str(refused.value)
  with pytest.warns(UserWarning) as caught:
    st = create(old, dtype=dtype)
  assert [str(w.message) for w in caught] == [
      f'{old}: chunk(s) [1] hold NaN or inf values; searching them again',
      f'{old}: upgraded in place from store format 2 to 3; crc32 checksums cover its completed '
      f'chunks from here on']
  assert st.missing_chunks() == [1]
  checksums = json.loads((fresh / 'meta.json').read_text())['complete']
  del checksums['1']
  assert json.loads((old / 'meta.json').read_text()) == {
      **json.loads((fresh / 'meta.json').read_text()), 'complete': checksums}
  assert TargetStore.open(old).missing_chunks() == [1]  # training reads it now
  fill(st)
  assert dir_bytes(old) == dir_bytes(fresh)


def test_directory_with_other_files_refused(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(StoreError, match=r"other files \['notes.txt'\]"):
    create(tmp_path)
  assert (tmp_path / 'notes.txt').read_text() == 'mine'


def test_killed_creation_is_redone(tmp_path):
  # Leftovers of an earlier creation (of more layers) killed before meta.json was written.
  (tmp_path / 'run').mkdir()
  for name in ['layer0.npy', 'layer7.npy', 'indices.npy', 'meta.json.tmp']:
    (tmp_path / 'run' / name).write_bytes(b'half')
  st = create(tmp_path / 'run')
  assert st.missing_chunks() == [0, 1, 2]
  fill(st)
  fill(create(tmp_path / 'ref'))
  assert dir_bytes(tmp_path / 'run') == dir_bytes(tmp_path / 'ref')


def test_bad_writes_refused_before_writing(tmp_path):
  st = create(tmp_path, dtype='float16')
  before = dir_bytes(tmp_path)
  targets, best_loss, init_loss = chunk_data(st.spec, 0)
  cases = [
      ((5, targets, best_loss, init_loss), 'chunk 5 is out of range'),
      ((0, targets[:3], best_loss, init_loss), 'got 3 target arrays'),
      ((0, [targets[0][:, :4]] + targets[1:], best_loss, init_loss), r'layer 0: targets have'),
      ((0, targets, best_loss[:, :3], init_loss), r'must be \(4, 4\) and \(4,\)'),
      ((0, targets[:3] + [targets[3] * 1e5], best_loss, init_loss), 'overflow float16'),
      ((0, [np.full_like(targets[0], np.nan)] + targets[1:], best_loss, init_loss), 'NaN or inf'),
  ]
  for args, match in cases:
    with pytest.raises(StoreError, match=match):
      st.write_chunk(*args)
  assert dir_bytes(tmp_path) == before and st.missing_chunks() == [0, 1, 2]

  fill(st)
  with pytest.raises(StoreError, match='opened read-only'):
    TargetStore.open(tmp_path).write_chunk(0, targets, best_loss, init_loss)


def test_incomplete_store_reads_refused(tmp_path):
  st = create(tmp_path)
  fill(st, [0, 2])
  ro = TargetStore.open(tmp_path)
  assert ro.missing_chunks() == [1]
  np.testing.assert_array_equal(ro.read(np.array([1, 9]))[3], st.read(np.array([1, 9]))[3])
  with pytest.raises(StoreError, match=r'unwritten chunk\(s\) \[1\] \(1 of 3 missing\)'):
    ro.read(np.array([0, 5, 9]))
  unwritten = ro.read(np.array([5]), allow_incomplete=True)
  assert all(not t.any() for t in unwritten)  # never written: zeros
  assert np.isnan(ro.best_loss[4:8]).all() and np.isnan(ro.init_loss[4:8]).all()
  assert not np.isnan(ro.best_loss[:4]).any()
  with pytest.raises(StoreError, match='incomplete'):
    ro.read()
  with pytest.raises(StoreError, match='incomplete'):
    ro.put_on_devices(max_bytes=1 << 30)
  with pytest.raises(StoreError, match='positions span'):
    ro.read(np.array([N]))
  with pytest.raises(StoreError, match='1-D integer'):
    ro.read(np.array([0.0]))


def test_put_on_devices_respects_budget(tmp_path):
  fill(create(tmp_path, dtype='bfloat16'))
  st = TargetStore.open(tmp_path)
  assert st.put_on_devices(max_bytes=st.nbytes - 1) is None
  arrays = st.put_on_devices(max_bytes=st.nbytes)
  assert [a.shape for a in arrays] == [(N, *s) for s in SHAPES]
  assert all(isinstance(a, jax.Array) and a.dtype == jax.numpy.bfloat16 for a in arrays)
  for a, host in zip(arrays, st.read(dtype=ml_dtypes.bfloat16)):
    np.testing.assert_array_equal(np.asarray(a), host)
