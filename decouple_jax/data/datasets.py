"""``load_dataset``: one call from a :class:`DataConfig` to split, limited, in-memory arrays."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import numpy as np

from decouple_jax.config import DataConfig
# Importing the source modules registers the built-in sources.
from decouple_jax.data import cifar  # pylint: disable=unused-import
from decouple_jax.data import folder  # pylint: disable=unused-import
from decouple_jax.data import mnist  # pylint: disable=unused-import
from decouple_jax.data import sources
from decouple_jax.data import splits
from decouple_jax.data import tfds_source  # pylint: disable=unused-import
from decouple_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A data set in host memory, split into training, hold-out and test parts.

  Attributes:
    name: ``DataConfig.name``: 'mnist', 'cifar10', 'cifar100', or a user's label for an image
      folder.
    num_classes: what the source registered for the data set (10 for MNIST and CIFAR-10, 100,
      or 20 for CIFAR-100's coarse labels; the number of class folders of an image folder).
    train_images: (N, H, W, C) uint8: the training split, hold-out removed, ``train_limit``
      applied.
    train_labels: (N,) int32.
    train_index: (N,) int64, ascending: each image's index in the original training set.
    holdout_images: (K, H, W, C) uint8: the hold-out split.
    holdout_labels: (K,) int32.
    holdout_index: (K,) int64, ascending: indices in the original training set.
    test_images: (M, H, W, C) uint8, ``test_limit`` applied.
    test_labels: (M,) int32.
    mean: (C,) float32: per-channel mean of ``train_images / 255``.
    std: (C,) float32: per-channel (population) standard deviation of ``train_images / 255``.
    fingerprint: :func:`fingerprint` of the whole data set as loaded (before the hold-out split
      and the limits): what ties a target store or a training run to the data's content,
      wherever its files live.
  """
  name: str
  num_classes: int
  train_images: np.ndarray
  train_labels: np.ndarray
  train_index: np.ndarray
  holdout_images: np.ndarray
  holdout_labels: np.ndarray
  holdout_index: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  fingerprint: str

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return tuple(self.train_images.shape[1:])


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of ``images / 255``, both (C,) float32.

  Counting the 256 byte values per channel gives exact sums without a float copy of the images
  (which would be over 1 GB for CIFAR-10 in float64).
  """
  values = np.arange(256, dtype=np.float64) / 255
  means, stds = [], []
  for c in range(images.shape[-1]):
    counts = np.bincount(images[..., c].ravel(), minlength=256)
    p = counts / counts.sum()
    mean = p @ values
    means.append(mean)
    stds.append(np.sqrt(max(p @ values**2 - mean**2, 0.0)))
  return np.array(means, np.float32), np.array(stds, np.float32)


def fingerprint(arrays: sources.Arrays) -> str:
  """16 hex digits of the sha256 of a whole data set's arrays (dtype, shape and bytes of each).

  Hashing the loaded arrays rather than the files gives one identity to the same data however
  it was read: verified or not, from any directory, from the python or the binary CIFAR
  archive. About 0.1 s for MNIST.
  """
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(memoryview(array).cast('B'))
  return digest.hexdigest()[:16]


# DataConfig fields that say where the files are and how they are read, not what they hold.
_LOCATION_FIELDS = ('dir', 'source', 'verify')


def identity(cfg: DataConfig, ds: Dataset) -> dict:
  """What of a data config changes a result: every field but where the files live and how they
  are read (``dir``, ``source``, ``verify``), and the data's :attr:`Dataset.fingerprint`.

  Moving verified files keeps a finished run; another data set in the same place does not.
  """
  return {**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in _LOCATION_FIELDS},
          'fingerprint': ds.fingerprint}


def load_dataset(cfg: DataConfig) -> Dataset:
  """Loads, checks and splits the data set ``cfg`` describes.

  The hold-out split is :func:`split_holdout` of the original training set; ``train_limit``
  then keeps the first training images (in original order) and ``test_limit`` the first test
  images. A limit larger than the split keeps the whole split. The loader is the one
  registered for ``(cfg.source, cfg.name)`` (:mod:`decouple_jax.data.sources`); not every
  source reads ``cfg.dir`` or checks ``cfg.verify`` (docs/data.md).

  Unknown label sets and negative limits are refused by :class:`DataConfig` itself.

  Raises:
    ConfigError: a source that is not registered, or that does not read ``cfg.name``.
    DataError: missing, corrupt or (with ``cfg.verify``) non-original files; a hold-out not
      smaller than the training set.
  """
  source = sources.get_source(cfg)
  if source.obtain and not pathlib.Path(cfg.dir).is_dir():
    raise DataError(f'{cfg.dir}: no such directory. {source.obtain}')
  arrays = source.load(cfg)
  train_x, train_y, test_x, test_y = arrays
  content = fingerprint(arrays)

  train_index, holdout_index = splits.split_holdout(len(train_x), cfg.holdout, cfg.split_seed)
  if cfg.train_limit:
    train_index = train_index[:cfg.train_limit]
  if cfg.test_limit:
    test_x, test_y = test_x[:cfg.test_limit], test_y[:cfg.test_limit]
  train_images = train_x[train_index]
  mean, std = _channel_stats(train_images)
  return Dataset(
      name=cfg.name,
      num_classes=source.num_classes(cfg),
      train_images=train_images,
      train_labels=train_y[train_index],
      train_index=train_index,
      holdout_images=train_x[holdout_index],
      holdout_labels=train_y[holdout_index],
      holdout_index=holdout_index,
      # Copies, so every array of a Dataset owns writable memory (the IDX reader's are views
      # of read-only buffers).
      test_images=np.array(test_x),
      test_labels=np.array(test_y),
      mean=mean,
      std=std,
      fingerprint=content,
  )
