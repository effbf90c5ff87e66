"""Source ``files`` for ``mnist``: the four original IDX files, or any MNIST-format look-alike.

Any directory of MNIST-format files under the four original names loads as 'mnist'
(fashion-MNIST, KMNIST, ...) with ``verify=False``, since their checksums are not MNIST's.
"""

from __future__ import annotations

import pathlib

import numpy as np

from decouple_jax.config import DataConfig
from decouple_jax.data import checksums
from decouple_jax.data import idx
from decouple_jax.data import sources
from decouple_jax.data.errors import DataError
from decouple_jax.data.errors import missing_files

NUM_CLASSES = 10
_OBTAIN = ('Run `make data` (or `python launch/fetch_data.py --dest=DIR`) to fetch MNIST, or put '
           'MNIST-format files under the original names there.')


@sources.register_source('files', ('mnist',), num_classes=lambda cfg: NUM_CLASSES,
                         obtain=_OBTAIN)
def load_mnist_files(cfg: DataConfig) -> sources.Arrays:
  """Reads (and with ``cfg.verify`` checks) the four IDX files in ``cfg.dir``.

  Returns:
    (60000, 28, 28, 1) uint8 and (60000,) int32 training images and labels, (10000, 28, 28, 1)
    and (10000,) test images and labels for MNIST itself, in the files' order.

  Raises:
    DataError: a file is missing, corrupt, not the original (with ``cfg.verify``), or the
      image and label files disagree.
  """
  directory = pathlib.Path(cfg.dir)
  names = checksums.MNIST_FILES
  missing = [name for name in names if not (directory / name).is_file()]
  if missing:
    raise missing_files(directory, missing, _OBTAIN)
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
    if labels.size and labels.max() >= NUM_CLASSES:
      raise DataError(f'{directory / labels_file}: label {labels.max()} outside 0..9.')
    arrays += [images[..., None], labels.astype(np.int32)]
  return tuple(arrays)
