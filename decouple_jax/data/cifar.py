"""Source ``files`` for ``cifar10`` and ``cifar100``: the original archives, read in place.

Four original archives exist (https://www.cs.toronto.edu/~kriz/cifar.html):

* ``cifar-10-python.tar.gz``: pickles ``cifar-10-batches-py/data_batch_1`` .. ``_5`` and
  ``test_batch``, each a dict with ``b'data'`` (a (N, 3072) uint8 NumPy array, channel-major:
  1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane) and ``b'labels'``.
* ``cifar-100-python.tar.gz``: pickles ``cifar-100-python/train`` and ``test``, with
  ``b'fine_labels'`` and ``b'coarse_labels'`` instead of ``b'labels'``.
* ``cifar-10-binary.tar.gz``: ``cifar-10-batches-bin/data_batch_1.bin`` .. ``_5.bin`` and
  ``test_batch.bin``, records of 1 label byte + 3072 pixel bytes.
* ``cifar-100-binary.tar.gz``: ``cifar-100-binary/train.bin`` and ``test.bin``, records of
  1 coarse + 1 fine label byte + 3072 pixel bytes.

The originals were pickled by Python 2 with NumPy arrays inside, so reading them needs NumPy's
array reconstructor. Pickles can run arbitrary code, hence :class:`RestrictedUnpickler`: it
resolves no global at all except NumPy's three array names, and even those map to inert local
stand-ins, so loading never calls a function named by the file.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import tarfile
import zlib
from typing import Any

import numpy as np

from decouple_jax.config import CIFAR100_LABELS
from decouple_jax.config import DataConfig
from decouple_jax.data import checksums
from decouple_jax.data import sources
from decouple_jax.data.errors import DataError
from decouple_jax.data.errors import missing_files

KINDS = ('cifar10', 'cifar100')
FORMATS = ('python', 'binary')
ARCHIVE_NAMES = {
    ('cifar10', 'python'): 'cifar-10-python.tar.gz',
    ('cifar10', 'binary'): 'cifar-10-binary.tar.gz',
    ('cifar100', 'python'): 'cifar-100-python.tar.gz',
    ('cifar100', 'binary'): 'cifar-100-binary.tar.gz',
}
_PIXELS = 32 * 32 * 3
_TRAIN_BATCHES = 5  # CIFAR-10 ships its training set as five batches.
_READ_BYTES = 1 << 20
_DOWNLOAD = 'https://www.cs.toronto.edu/~kriz/cifar.html'
_OBTAIN = (f'Download the original archive from {_DOWNLOAD} and put it in that directory '
           '(data.dir); it is read in place, not extracted.')


def member_names(kind: str, fmt: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(training members in order, test members) of the original ``kind`` archive in format
  ``fmt`` (see the module docstring)."""
  if kind == 'cifar10' and fmt == 'python':
    root = 'cifar-10-batches-py'
    return (tuple(f'{root}/data_batch_{i}' for i in range(1, _TRAIN_BATCHES + 1)),
            (f'{root}/test_batch',))
  if kind == 'cifar10':
    root = 'cifar-10-batches-bin'
    return (tuple(f'{root}/data_batch_{i}.bin' for i in range(1, _TRAIN_BATCHES + 1)),
            (f'{root}/test_batch.bin',))
  if fmt == 'python':
    return ('cifar-100-python/train',), ('cifar-100-python/test',)
  return ('cifar-100-binary/train.bin',), ('cifar-100-binary/test.bin',)


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise DataError(f'unknown CIFAR kind {kind!r}; valid: {list(KINDS)}.')


# ----------------------------------------------------------------------------------------------
# Restricted unpickling.


class _NdarrayMarker:
  """Stands in for ``numpy.ndarray``, which pickles only pass to the array reconstructor."""


_NDARRAY = _NdarrayMarker()


class _ArrayStub:
  """Inert stand-in for a pickled NumPy array: records the state the pickle gives it."""

  def __init__(self):
    self.state = None

  def __setstate__(self, state):
    self.state = state


class _DtypeStub:
  """Inert stand-in for a pickled ``numpy.dtype``: records its name and state."""

  def __init__(self, name, align=False, copy=True):
    del align, copy  # Meaningless for the plain numeric dtypes accepted below.
    self.name = name
    self.state = None

  def __setstate__(self, state):
    self.state = state


def _reconstruct(cls, shape, typecode):
  del shape, typecode  # The real shape arrives in the state.
  if cls is not _NDARRAY:
    raise pickle.UnpicklingError('the array reconstructor may only build numpy.ndarray')
  return _ArrayStub()


# NumPy 1 (and the Python 2 originals) name the reconstructor numpy.core.multiarray, NumPy 2
# numpy._core.multiarray.
_ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy', 'dtype'): _DtypeStub,
}


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that imports nothing.

  Plain containers, bytes, strings and numbers load as usual. Every global a pickle names is
  refused, except NumPy's array reconstructor, ``numpy.ndarray`` and ``numpy.dtype``, which
  resolve to the inert stubs above; :func:`unpickle` turns those into real arrays afterwards.
  """

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise pickle.UnpicklingError(
        f'refused to load global {module}.{name}: a CIFAR pickle may only contain dicts, '
        'lists, bytes, numbers and NumPy arrays')


def _dtype(stub: Any) -> np.dtype:
  """The plain numeric dtype a :class:`_DtypeStub` describes."""
  if not isinstance(stub, _DtypeStub):
    raise pickle.UnpicklingError(f'array dtype is {type(stub).__name__}, not a dtype')
  name = stub.name.decode('ascii') if isinstance(stub.name, bytes) else stub.name
  if not isinstance(name, str):
    raise pickle.UnpicklingError(f'dtype name {name!r} is not a string')
  dtype = np.dtype(name)
  if dtype.kind not in 'biuf':
    raise pickle.UnpicklingError(f'array dtype {dtype} is not a plain number type')
  # The state's second field is the byte order; only a big-endian one changes the default.
  order = stub.state[1] if isinstance(stub.state, tuple) and len(stub.state) > 1 else b'|'
  if order in ('>', b'>'):
    dtype = dtype.newbyteorder('>')
  return dtype


def _array(stub: _ArrayStub) -> np.ndarray:
  """The NumPy array an :class:`_ArrayStub` describes."""
  state = stub.state
  if not (isinstance(state, tuple) and len(state) == 5):
    raise pickle.UnpicklingError('array state is not (version, shape, dtype, fortran, data)')
  _, shape, dtype_stub, fortran, raw = state
  if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
    raise pickle.UnpicklingError(f'array shape {shape!r} is not a tuple of sizes')
  if not isinstance(raw, (bytes, bytearray)):
    raise pickle.UnpicklingError(f'array data is {type(raw).__name__}, not bytes')
  dtype = _dtype(dtype_stub)
  count = int(np.prod(shape))
  if len(raw) != count * dtype.itemsize:
    raise pickle.UnpicklingError(f'array of shape {shape} and dtype {dtype} needs '
                                 f'{count * dtype.itemsize} bytes, pickle holds {len(raw)}')
  return np.frombuffer(raw, dtype=dtype).reshape(shape, order='F' if fortran else 'C')


def _realise(obj: Any) -> Any:
  """Replaces array stubs by arrays, recursively through dicts, lists and tuples."""
  if isinstance(obj, _ArrayStub):
    return _array(obj)
  if isinstance(obj, dict):
    return {k: _realise(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_realise(v) for v in obj)
  if isinstance(obj, (_DtypeStub, _NdarrayMarker)):
    raise pickle.UnpicklingError('a dtype or ndarray outside an array')
  return obj


def unpickle(data: bytes, what: str) -> Any:
  """Loads a pickle with :class:`RestrictedUnpickler`, Python 2 strings as bytes.

  Args:
    data: the pickle.
    what: names the source in error messages (e.g. ``archive.tar.gz:member``).

  Raises:
    DataError: the pickle names a refused global or is malformed.
  """
  try:
    return _realise(RestrictedUnpickler(io.BytesIO(data), encoding='bytes').load())
  except Exception as e:  # A malformed pickle can raise almost anything; all mean the same.
    raise DataError(f'{what}: refused or unreadable pickle ({e}). The original CIFAR archives '
                    'hold only dicts, lists, bytes, numbers and NumPy arrays: get a fresh copy '
                    'of the archive.') from e


# ----------------------------------------------------------------------------------------------
# Reading.


def _to_nhwc(rows: np.ndarray) -> np.ndarray:
  """(N, 3072) channel-major rows -> (N, 32, 32, 3) uint8."""
  return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _labels(values: Any, what: str, classes: int) -> np.ndarray:
  """Integer labels in ``0..classes - 1`` as (N,) int32."""
  labels = np.asarray(values)
  if labels.size == 0:
    # An empty list has no integer dtype of its own.
    labels = labels.astype(np.int64)
  if labels.ndim != 1 or labels.dtype.kind not in 'iu':
    raise DataError(f'{what}: labels are not a list of integers.')
  if labels.size and (labels.min() < 0 or labels.max() >= classes):
    raise DataError(f'{what}: labels outside 0..{classes - 1} '
                    f'(found {labels.min()}..{labels.max()}).')
  return labels.astype(np.int32)


def _parse_python(blob: bytes, what: str, kind: str,
                  labels: str) -> tuple[np.ndarray, np.ndarray]:
  batch = unpickle(blob, what)
  key = b'labels' if kind == 'cifar10' else {'fine': b'fine_labels',
                                             'coarse': b'coarse_labels'}[labels]
  if not isinstance(batch, dict) or b'data' not in batch or key not in batch:
    found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise DataError(f'{what}: expected a dict with keys b"data" and {key!r}, found {found}.')
  data = batch[b'data']
  if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
          and data.shape[1] == _PIXELS):
    raise DataError(f'{what}: b"data" is not a (N, 3072) uint8 array.')
  y = _labels(batch[key], what, num_classes(kind, labels))
  if len(y) != len(data):
    raise DataError(f'{what}: {len(data)} images but {len(y)} labels.')
  return _to_nhwc(data), y


def _parse_binary(blob: bytes, what: str, kind: str,
                  labels: str) -> tuple[np.ndarray, np.ndarray]:
  label_bytes = 1 if kind == 'cifar10' else 2
  record = label_bytes + _PIXELS
  if len(blob) % record:
    raise DataError(f'{what}: {len(blob):,} bytes is not a whole number of {record}-byte '
                    'records; the archive is damaged.')
  records = np.frombuffer(blob, dtype=np.uint8).reshape(-1, record)
  # CIFAR-100 records start with the coarse label, then the fine one.
  column = 1 if kind == 'cifar100' and labels == 'fine' else 0
  y = _labels(records[:, column], what, num_classes(kind, labels))
  return _to_nhwc(records[:, label_bytes:]), y


def num_classes(kind: str, labels: str) -> int:
  """10 for CIFAR-10; 100 for CIFAR-100's fine labels, 20 for its coarse ones."""
  if kind == 'cifar10':
    return 10
  return 100 if labels == 'fine' else 20


def read_cifar_archive(
    path: str | os.PathLike, kind: str, *, labels: str = 'fine'
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Reads an original CIFAR archive (python or binary format, detected from its members).

  The archive is read in one streaming pass, without extracting anything to disk, to the end
  of its gzip stream, whose CRC is checked.

  Args:
    path: the ``.tar.gz`` archive.
    kind: 'cifar10' or 'cifar100'.
    labels: for CIFAR-100, 'fine' (100 classes) or 'coarse' (20 superclasses); ignored for
      CIFAR-10.

  Returns:
    ``(train_images, train_labels, test_images, test_labels)``: (N, 32, 32, 3) uint8, (N,)
    int32, (M, 32, 32, 3) uint8, (M,) int32, in the archive's order (training batches 1..5
    concatenated for CIFAR-10).

  Raises:
    DataError: unknown kind or labels, unreadable archive, missing members, malformed or
      refused contents.
  """
  _check_kind(kind)
  if labels not in CIFAR100_LABELS:
    raise DataError(f'CIFAR-100 labels {labels!r}: choose one of {CIFAR100_LABELS}.')
  layouts = {fmt: member_names(kind, fmt) for fmt in FORMATS}
  wanted = {name for train, test in layouts.values() for name in train + test}
  blobs = {}
  try:
    with tarfile.open(path, 'r:gz') as tar:
      for member in tar:
        if member.isfile() and member.name in wanted:
          blobs[member.name] = tar.extractfile(member).read()
      # The tar end marker comes before the gzip trailer: reading on to the end of the stream
      # checks its CRC, so damaged bytes are caught even when the sha256 is not checked.
      while tar.fileobj.read(_READ_BYTES):
        pass
  except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
    raise DataError(f'{path}: not a readable .tar.gz archive ({e}). It is truncated or corrupt; '
                    'download it again.') from e
  for fmt, (train, test) in layouts.items():
    if all(name in blobs for name in train + test):
      parse = _parse_python if fmt == 'python' else _parse_binary
      parts = [[parse(blobs[name], f'{path}:{name}', kind, labels) for name in names]
               for names in (train, test)]
      (train_x, train_y), (test_x, test_y) = (
          (np.concatenate([x for x, _ in p]), np.concatenate([y for _, y in p])) for p in parts)
      return train_x, train_y, test_x, test_y
  expected = ' or '.join(str(list(train + test)) for train, test in layouts.values())
  raise DataError(f'{path}: not an original {kind} archive: it lacks the members {expected}. '
                  f'Use the unmodified {ARCHIVE_NAMES[(kind, "python")]} or '
                  f'{ARCHIVE_NAMES[(kind, "binary")]}.')


@sources.register_source('files', KINDS,
                         num_classes=lambda cfg: num_classes(cfg.name, cfg.cifar100_labels),
                         obtain=_OBTAIN)
def load_cifar_files(cfg: DataConfig) -> sources.Arrays:
  """Reads (and with ``cfg.verify`` checks) the ``cfg.name`` archive in ``cfg.dir``: the python
  one when both formats are there. Returns what :func:`read_cifar_archive` returns.

  Raises:
    DataError: no archive, or one that is corrupt or (with ``cfg.verify``) not the original.
  """
  directory = pathlib.Path(cfg.dir)
  candidates = [ARCHIVE_NAMES[(cfg.name, fmt)] for fmt in FORMATS]
  found = [name for name in candidates if (directory / name).is_file()]
  if not found:
    raise missing_files(directory, [' or '.join(candidates)], _OBTAIN)
  path = directory / found[0]
  if cfg.verify:
    checksums.verify_file(path, fix=f'Download it again from {_DOWNLOAD}; for an archive '
                                    'you made yourself pass verify=False.')
  return read_cifar_archive(path, cfg.name, labels=cfg.cifar100_labels)
