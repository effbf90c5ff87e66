"""The prefetcher: batches in order, on the device, errors raised where they are consumed."""

import threading

import jax
import numpy as np
import pytest

from decouple_jax import data

N = 10
# Two per-image arrays of different shapes and dtypes, as a store's layers would be.
ARRAYS = (np.arange(N * 6, dtype=np.float16).reshape(N, 2, 3), np.arange(N, dtype=np.int32))


def read(positions):
  return tuple(a[positions] for a in ARRAYS)


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name == 'prefetch']


def test_prefetcher_yields_what_read_gives():
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, N, size=4) for _ in range(5)]
  with data.Prefetcher(read, iter(batches)) as prefetcher:
    got = list(prefetcher)
  assert len(got) == len(batches)
  for (positions, arrays), batch in zip(got, batches):
    np.testing.assert_array_equal(positions, batch)
    for a, want in zip(arrays, read(batch), strict=True):
      assert isinstance(a, jax.Array) and a.dtype == want.dtype
      np.testing.assert_array_equal(np.asarray(a), want)
  assert not _prefetch_threads()


def test_prefetcher_raises_thread_errors_in_consumer():
  def batches():
    yield np.array([0, 1])
    raise ValueError('bad batch source')
  prefetcher = data.Prefetcher(read, batches())
  assert next(prefetcher)[0].tolist() == [0, 1]
  with pytest.raises(ValueError, match='bad batch source'):
    next(prefetcher)
  with pytest.raises(StopIteration):
    next(prefetcher)

  # A read that fails in the thread fails in the consumer, after the good batches.
  def read_below_5(positions):
    if positions.max() >= 5:
      raise KeyError(f'position {positions.max()} is not readable')
    return read(positions)
  with data.Prefetcher(read_below_5, [np.array([0]), np.array([4]), np.array([9])]) as prefetcher:
    assert next(prefetcher)[0].tolist() == [0]
    assert next(prefetcher)[0].tolist() == [4]
    with pytest.raises(KeyError, match='position 9'):
      next(prefetcher)
  assert not _prefetch_threads()


def test_prefetcher_close_stops_an_endless_stream():
  def endless():
    while True:
      yield np.arange(4)
  with data.Prefetcher(read, endless()) as prefetcher:
    for i, _ in enumerate(prefetcher):
      if i == 3:
        break
  assert not _prefetch_threads()
  with pytest.raises(StopIteration):
    next(prefetcher)
  prefetcher.close()  # idempotent
