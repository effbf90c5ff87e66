"""``load_dataset``: one call from a :class:`DataConfig` to split, limited, in-memory arrays."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import numpy as np

from decouple_jax.config import DataConfig
from decouple_jax.data import checksums
from decouple_jax.data import cifar
from decouple_jax.data import idx
from decouple_jax.data import splits
from decouple_jax.data import tfds_source
from decouple_jax.data.errors import DataError

# Keyed by config.DATA_NAMES.
NUM_CLASSES = {'mnist': 10, 'cifar10': 10, 'cifar100': 100}
_CIFAR_DOWNLOAD = 'https://www.cs.toronto.edu/~kriz/cifar.html'
# (train_images (N, H, W, C) uint8, train_labels (N,) int32, test_images, test_labels): a whole
# data set in its original order, before splitting.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A data set in host memory, split into training, hold-out and test parts.

  Attributes:
    name: 'mnist', 'cifar10' or 'cifar100'.
    num_classes: 10, 100, or 20 for CIFAR-100's coarse labels.
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


def fingerprint(arrays: Arrays) -> str:
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


def _missing_error(directory: pathlib.Path, missing: list[str], how: str) -> DataError:
  return DataError(f'{directory}: missing {", ".join(missing)}. {how}')


def _load_mnist_files(cfg: DataConfig) -> Arrays:
  directory = pathlib.Path(cfg.dir)
  names = checksums.MNIST_FILES
  missing = [name for name in names if not (directory / name).is_file()]
  if missing:
    raise _missing_error(directory, missing,
                         'Run `make data` (or `python launch/fetch_data.py '
                         f'--dest={directory}`) to fetch MNIST, or put MNIST-format files under '
                         'these names there.')
  if cfg.verify:
    for name in names:
      checksums.verify_file(
          directory / name,
          fix='Delete it and run `make data`; for MNIST-format files of another data set '
              '(fashion-MNIST, ...) pass verify=False.')
  arrays = []
  for images_file, labels_file in (names[:2], names[2:]):
    images = idx.read_idx_gz(directory / images_file, ndim=3)
    labels = idx.read_idx_gz(directory / labels_file, ndim=1)
    if len(images) != len(labels):
      raise DataError(f'{directory}: {images_file} has {len(images)} images but {labels_file} '
                      f'has {len(labels)} labels; the files do not belong together.')
    if labels.size and labels.max() >= 10:
      raise DataError(f'{directory / labels_file}: label {labels.max()} outside 0..9.')
    arrays += [images[..., None], labels.astype(np.int32)]
  return tuple(arrays)


def _load_cifar_files(cfg: DataConfig) -> Arrays:
  directory = pathlib.Path(cfg.dir)
  candidates = [cifar.ARCHIVE_NAMES[(cfg.name, fmt)] for fmt in cifar.FORMATS]
  found = [name for name in candidates if (directory / name).is_file()]
  if not found:
    raise _missing_error(directory, [' or '.join(candidates)],
                         f'Download the original archive from {_CIFAR_DOWNLOAD} and put it in '
                         'that directory (DataConfig.dir); it is read in place, not extracted.')
  path = directory / found[0]  # The python archive when both are present.
  if cfg.verify:
    checksums.verify_file(path, fix=f'Download it again from {_CIFAR_DOWNLOAD}; for an archive '
                                    'you made yourself pass verify=False.')
  return cifar.read_cifar_archive(path, cfg.name, labels=cfg.cifar100_labels)


def load_dataset(cfg: DataConfig) -> Dataset:
  """Loads, checks and splits the data set ``cfg`` describes.

  The hold-out split is :func:`split_holdout` of the original training set; ``train_limit``
  then keeps the first training images (in original order) and ``test_limit`` the first test
  images. A limit larger than the split keeps the whole split. With ``source='tfds'``,
  ``cfg.dir`` and ``cfg.verify`` do not apply (see :mod:`decouple_jax.data.tfds_source`).

  Unknown names, sources, label sets and negative limits are refused by :class:`DataConfig`
  itself.

  Raises:
    DataError: missing, corrupt or (with ``cfg.verify``) non-original files; a hold-out not
      smaller than the training set.
  """
  if cfg.source == 'tfds':
    arrays = tfds_source.load_tfds(cfg.name, cifar100_labels=cfg.cifar100_labels)
  elif cfg.name == 'mnist':
    arrays = _load_mnist_files(cfg)
  else:
    arrays = _load_cifar_files(cfg)
  train_x, train_y, test_x, test_y = arrays
  content = fingerprint(arrays)

  train_index, holdout_index = splits.split_holdout(len(train_x), cfg.holdout, cfg.split_seed)
  if cfg.train_limit:
    train_index = train_index[:cfg.train_limit]
  if cfg.test_limit:
    test_x, test_y = test_x[:cfg.test_limit], test_y[:cfg.test_limit]
  train_images = train_x[train_index]
  mean, std = _channel_stats(train_images)
  coarse = cfg.name == 'cifar100' and cfg.cifar100_labels == 'coarse'
  return Dataset(
      name=cfg.name,
      num_classes=20 if coarse else NUM_CLASSES[cfg.name],
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
