"""Reader of gzip-compressed IDX files, the format of MNIST and its look-alikes.

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions, then
one uint32 per dimension) followed by the values in C order. Only unsigned bytes (type 0x08), the
type of every MNIST-style image and label file, are accepted.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from decouple_jax.data.errors import DataError

_UBYTE = 0x08


def read_idx_gz(path: str | os.PathLike, ndim: int) -> np.ndarray:
  """Reads a ``.gz`` IDX file of unsigned bytes.

  Args:
    path: the compressed file.
    ndim: the number of dimensions the file must have (3 for images, 1 for labels).

  Returns:
    The values, uint8, with the shape the header declares (e.g. (60000, 28, 28) for MNIST
    training images).

  Raises:
    DataError: the file is not gzip, is truncated or corrupt, has a bad magic number, a type
      other than unsigned bytes, another number of dimensions, or a size that does not match its
      header.
  """
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    # gzip reports a truncated stream as EOFError and a bad CRC or header as BadGzipFile
    # (an OSError); either way the download is damaged.
    raise DataError(f'{path}: not a readable gzip file ({e}). The file is truncated or corrupt; '
                    'delete it and fetch it again (`make data` for MNIST).') from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise DataError(f'{path}: bad IDX magic number {raw[:4].hex() or "(empty)"}; an IDX file '
                    'starts with 00 00 <type> <ndim>. This is not an MNIST-format file.')
  dtype_code, file_ndim = raw[2], raw[3]
  if dtype_code != _UBYTE:
    raise DataError(f'{path}: IDX type code 0x{dtype_code:02x}, but only unsigned bytes (0x08) '
                    'are supported, as in MNIST-format image and label files.')
  if file_ndim != ndim:
    raise DataError(f'{path}: IDX file has {file_ndim} dimension(s), expected {ndim} '
                    f'({"images" if ndim == 3 else "labels"}). Are the image and label files '
                    'swapped?')
  header_bytes = 4 + 4 * ndim
  if len(raw) < header_bytes:
    raise DataError(f'{path}: IDX header cut short ({len(raw)} bytes, need {header_bytes}).')
  shape = tuple(int(d) for d in np.frombuffer(raw, dtype='>u4', count=ndim, offset=4))
  expected = int(np.prod(shape))
  found = len(raw) - header_bytes
  if found != expected:
    raise DataError(f'{path}: IDX header declares shape {shape} ({expected:,} values) but the '
                    f'file holds {found:,}. The file is damaged; fetch it again.')
  return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape)
