"""Deterministic hold-out split of a training set."""

from __future__ import annotations

import numpy as np

from decouple_jax.data.errors import DataError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser on uint64 (wrapping arithmetic), a bijective hash."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def split_holdout(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits ``range(n)`` into a training part and a hold-out part of ``holdout`` indices.

  The hold-out is the ``holdout`` indices of smallest SplitMix64 hash of ``(seed, index)``. A
  hand-written hash rather than ``numpy.random`` keeps the split identical across NumPy versions,
  so a hold-out score stays comparable between machines.

  Args:
    n: size of the original training set.
    holdout: number of indices to hold out, ``0 <= holdout < n`` (at least one training image
      must remain).
    seed: any integer; different seeds give unrelated splits.

  Returns:
    ``(train_idx, holdout_idx)``: int64 arrays of sizes ``n - holdout`` and ``holdout``, each
    sorted ascending, disjoint, together covering ``range(n)``.

  Raises:
    DataError: ``holdout`` is negative or not smaller than ``n``.
  """
  if not 0 <= holdout < n:
    raise DataError(f'hold-out of {holdout} images from a training set of {n}: need '
                    f'0 <= holdout < {n}. Lower DataConfig.holdout (paper: 4000 of 50000/60000).')
  with np.errstate(over='ignore'):
    key = np.uint64(seed % 2**64) * _GOLDEN
    hashes = _splitmix64(np.arange(n, dtype=np.uint64) + key)
  # A stable sort makes the (astronomically unlikely) equal hashes break ties by index.
  order = np.argsort(hashes, kind='stable')
  return np.sort(order[holdout:]).astype(np.int64), np.sort(order[:holdout]).astype(np.int64)
