"""Published sizes and sha256 digests of the original data files, and a streamed check.

The values are those listed in docs/data.md; tensorflow-datasets registers the same digests.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import NamedTuple

from decouple_jax.data.errors import DataError


class KnownFile(NamedTuple):
  """Size in bytes and lowercase hex sha256 of an original file."""
  size: int
  sha256: str


KNOWN_FILES: dict[str, KnownFile] = {
    'train-images-idx3-ubyte.gz': KnownFile(
        9_912_422, '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609'),
    'train-labels-idx1-ubyte.gz': KnownFile(
        28_881, '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c'),
    't10k-images-idx3-ubyte.gz': KnownFile(
        1_648_877, '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6'),
    't10k-labels-idx1-ubyte.gz': KnownFile(
        4_542, 'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6'),
    'cifar-10-python.tar.gz': KnownFile(
        170_498_071, '6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce'),
    'cifar-10-binary.tar.gz': KnownFile(
        170_052_171, 'c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd'),
    'cifar-100-python.tar.gz': KnownFile(
        169_001_437, '85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7'),
    'cifar-100-binary.tar.gz': KnownFile(
        168_513_733, '58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec'),
}

# The original MNIST file names: training images, training labels, test images, test labels.
MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

# Large enough to keep hashing I/O-bound, small enough that a 170 MB archive never sits in memory.
_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
  """The lowercase hex sha256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def verify_file(path: str | os.PathLike, *, name: str | None = None, fix: str = '') -> None:
  """Checks a file against the published sha256 of the original it claims to be.

  Args:
    path: the file to check.
    name: which original it should be, a key of :data:`KNOWN_FILES`; defaults to the file's name.
    fix: a sentence appended to the error saying how to obtain a good copy.

  Raises:
    DataError: the name is not a known original, or the digest differs (the message gives the
      expected and found digests and sizes).
  """
  path = pathlib.Path(path)
  name = path.name if name is None else name
  if name not in KNOWN_FILES:
    raise DataError(f'{path}: no published sha256 for a file named {name!r} (known: '
                    f'{sorted(KNOWN_FILES)}). Rename it to its original name, or pass '
                    'verify=False if you made the file yourself.')
  expected = KNOWN_FILES[name]
  found = sha256_file(path)
  if found != expected.sha256:
    raise DataError(
        f'{path}: sha256 mismatch for {name}: expected {expected.sha256} '
        f'({expected.size:,} bytes), found {found} ({path.stat().st_size:,} bytes). The file is '
        f'corrupt, truncated or not the original. {fix}'.rstrip())
