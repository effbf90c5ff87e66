"""Writes small CIFAR archives in exactly the layout of the originals, for the tests.

Member names, record layouts and pickle contents are those of the originals (see
:mod:`decouple_jax.data.cifar`); pickles are written the way Python 2 wrote them, with
``b'batch_label'`` and ``b'filenames'`` entries whose file names are made up. A reader cannot
tell such an archive from an original except by size and checksum, so load it with
``verify=False``.
"""

import io
import pathlib
import struct
import tarfile
from typing import Any

import numpy as np

from decouple_jax.data import cifar


def _py2_str(b: bytes) -> bytes:
  """A Python 2 ``str`` as cPickle protocol 2 wrote it (loads as bytes in Python 3)."""
  if len(b) < 256:
    return b'U' + bytes([len(b)]) + b  # SHORT_BINSTRING
  return b'T' + struct.pack('<i', len(b)) + b  # BINSTRING


def _py2_int(i: int) -> bytes:
  if 0 <= i < 256:
    return b'K' + bytes([i])  # BININT1
  if 0 <= i < 65536:
    return b'M' + struct.pack('<H', i)  # BININT2
  return b'J' + struct.pack('<i', i)  # BININT


def _py2_value(value: Any) -> bytes:
  if isinstance(value, bytes):
    return _py2_str(value)
  if isinstance(value, int):
    return _py2_int(value)
  if isinstance(value, list):
    return b'](' + b''.join(_py2_value(v) for v in value) + b'e'  # EMPTY_LIST MARK .. APPENDS
  if isinstance(value, np.ndarray) and value.dtype == np.uint8:
    # What NumPy 1 under Python 2 wrote: _reconstruct(ndarray, (0,), 'b') then BUILD with
    # (1, shape, dtype('u1'), False, raw bytes).
    shape = b'(' + b''.join(_py2_int(d) for d in value.shape) + b't'
    dtype = (b'cnumpy\ndtype\n' + _py2_str(b'u1') + b'K\x00K\x01\x87R'
             + b'(K\x03' + _py2_str(b'|') + b'NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb')
    return (b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85'
            + _py2_str(b'b') + b'\x87R(K\x01' + shape + dtype + b'\x89'
            + _py2_str(np.ascontiguousarray(value).tobytes()) + b'tb')
  raise TypeError(f'cannot write {type(value).__name__} into a CIFAR pickle')


def _py2_pickle(batch: dict[bytes, Any]) -> bytes:
  """A dict pickled the way the Python 2 originals were (protocol 2, str keys as bytes)."""
  items = b''.join(_py2_str(k) + _py2_value(v) for k, v in batch.items())
  return b'\x80\x02}(' + items + b'u.'  # PROTO 2, EMPTY_DICT, MARK .. SETITEMS, STOP


def write_cifar_archive(path, images, labels, *, test_images, test_labels, kind='cifar10',
                        format='python',  # pylint: disable=redefined-builtin
                        coarse_labels=None, test_coarse_labels=None) -> pathlib.Path:
  """Writes an archive of ``kind`` ('cifar10' or 'cifar100') in ``format`` ('python' or
  'binary').

  Args:
    path: where to write. If an existing directory, the archive gets its original name inside it
      (e.g. ``cifar-10-python.tar.gz``), which is where ``load_dataset`` looks.
    images, test_images: (N, 32, 32, 3) and (M, 32, 32, 3) uint8. CIFAR-10's training images
      are spread over its five training batches in order (``numpy.array_split``).
    labels, test_labels: (N,) and (M,) integers; fine labels for CIFAR-100.
    coarse_labels, test_coarse_labels: CIFAR-100 only, where every record carries both: (N,)
      and (M,) coarse labels in 0..19.

  Returns:
    The path of the written archive.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / cifar.ARCHIVE_NAMES[(kind, format)]
  if (kind == 'cifar100') != (coarse_labels is not None and test_coarse_labels is not None):
    raise ValueError('coarse labels are needed for CIFAR-100 and exist for nothing else')
  train_names, test_names = cifar.member_names(kind, format)
  xs = [np.asarray(images, np.uint8), np.asarray(test_images, np.uint8)]
  ys = [np.asarray(labels), np.asarray(test_labels)]
  if kind == 'cifar10':
    n = len(train_names)
    chunks = list(zip(np.array_split(xs[0], n), np.array_split(ys[0], n), [None] * n))
    chunks.append((xs[1], ys[1], None))
  else:
    chunks = list(zip(xs, ys, [np.asarray(coarse_labels), np.asarray(test_coarse_labels)]))
  members = {}
  for i, (name, (x, y, c)) in enumerate(zip(train_names + test_names, chunks)):
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), 32 * 32 * 3)
    if format == 'binary':
      label_cols = [y] if c is None else [c, y]
      members[name] = np.concatenate([np.stack(label_cols, 1).astype(np.uint8), rows],
                                     1).tobytes()
      continue
    batch = {b'batch_label': (b'testing batch 1 of 1' if name in test_names else
                              f'training batch {i + 1} of {len(train_names)}'.encode()),
             b'filenames': [f'image_{i}_{j:05d}.png'.encode() for j in range(len(x))]}
    if c is None:
      batch[b'labels'] = [int(v) for v in y]
    else:
      batch[b'fine_labels'] = [int(v) for v in y]
      batch[b'coarse_labels'] = [int(v) for v in c]
    batch[b'data'] = rows
    members[name] = _py2_pickle(batch)

  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, 'w:gz') as tar:
    root = tarfile.TarInfo(train_names[0].split('/')[0])
    root.type, root.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(root)
    for name, blob in members.items():
      info = tarfile.TarInfo(name)
      info.size, info.mode = len(blob), 0o644
      tar.addfile(info, io.BytesIO(blob))
  return path
