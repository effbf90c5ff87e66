"""Source ``tfds``: tensorflow-datasets (the ``tfds`` extra), imported only when used.

tensorflow-datasets downloads from the data sets' own hosts, or reads data prepared earlier in
its data directory (``TFDS_DATA_DIR``, default ``~/tensorflow_datasets``). Training images come
in tfds' order, so ``Dataset.train_index`` refers to that order, not to the original files'.
``data.dir`` and ``data.verify`` do not apply.
"""

from __future__ import annotations

import numpy as np

from decouple_jax.config import DataConfig
from decouple_jax.data import cifar
from decouple_jax.data import mnist
from decouple_jax.data import sources
from decouple_jax.data.errors import DataError


@sources.register_source('tfds', ('mnist',), num_classes=lambda cfg: mnist.NUM_CLASSES,
                         obtain=None)
@sources.register_source('tfds', cifar.KINDS,
                         num_classes=lambda cfg: cifar.num_classes(cfg.name, cfg.cifar100_labels),
                         obtain=None)
def load_tfds(cfg: DataConfig) -> sources.Arrays:
  """Loads the whole data set ``cfg.name`` with tensorflow-datasets (which uses the same names).

  CIFAR-100 comes with ``cfg.cifar100_labels``: 'fine' (tfds feature ``label``) or 'coarse'
  (``coarse_label``).

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
  coarse = cfg.name == 'cifar100' and cfg.cifar100_labels == 'coarse'
  label_key = 'coarse_label' if coarse else 'label'
  try:
    train, test = tfds.as_numpy(tfds.load(cfg.name, split=['train', 'test'], batch_size=-1))
  except Exception as e:  # tfds raises many types (download, preparation, TF errors).
    raise DataError(f'tensorflow-datasets could not load {cfg.name!r} ({e}). Without internet, '
                    'prepare it first (tfds.download.DownloadConfig(manual_dir=...) with the '
                    "original archives), or use source='files'.") from e
  return (np.asarray(train['image'], np.uint8), np.asarray(train[label_key], np.int32),
          np.asarray(test['image'], np.uint8), np.asarray(test[label_key], np.int32))
