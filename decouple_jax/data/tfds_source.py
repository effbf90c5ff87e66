"""Optional loading through tensorflow-datasets (the ``tfds`` extra), imported only when used.

tensorflow-datasets downloads from the data sets' own hosts, or reads data prepared earlier in
its data directory (``TFDS_DATA_DIR``, default ``~/tensorflow_datasets``). Training images come
in tfds' order, so ``Dataset.train_index`` refers to that order, not to the original files'.
"""

from __future__ import annotations

import numpy as np

from decouple_jax.data.errors import DataError


def load_tfds(name: str, *, cifar100_labels: str = 'fine'
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Loads a whole data set with tensorflow-datasets.

  Args:
    name: 'mnist', 'cifar10' or 'cifar100' (tfds uses the same names).
    cifar100_labels: 'fine' (tfds feature ``label``) or 'coarse' (``coarse_label``).

  Returns:
    ``(train_images, train_labels, test_images, test_labels)``: (N, H, W, C) uint8, (N,) int32,
    (M, H, W, C) uint8, (M,) int32.

  Raises:
    DataError: tensorflow-datasets is not installed, or cannot load the data set.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError("source='tfds' needs tensorflow-datasets (and TensorFlow): "
                    "`pip install -e '.[tfds]'`, or use source='files' with the original files "
                    '(`make data` fetches MNIST).') from e
  label_key = 'coarse_label' if name == 'cifar100' and cifar100_labels == 'coarse' else 'label'
  try:
    train, test = tfds.as_numpy(tfds.load(name, split=['train', 'test'], batch_size=-1))
  except Exception as e:  # tfds raises many types (download, preparation, TF errors).
    raise DataError(f'tensorflow-datasets could not load {name!r} ({e}). Without internet, '
                    'prepare it first (tfds.download.DownloadConfig(manual_dir=...) with the '
                    "original archives), or use source='files'.") from e
  return (np.asarray(train['image'], np.uint8), np.asarray(train[label_key], np.int32),
          np.asarray(test['image'], np.uint8), np.asarray(test[label_key], np.int32))
