"""The cached searched targets: a chunked, resumable data set on disk (docs/method.md section 3).

The search gives every training image one target per search layer (block outputs 0..2 and the
logits). They are computed once and read by every training run, so they are a data set, not a
train state: about 14.5 GB in float32 for 50k CIFAR images at paper scale, hence on disk, read
through NumPy memmaps, optionally in 16 bits.

This module is the store's format: what a store directory holds and how it is written,
checked and read, given a :class:`StoreSpec`. It knows nothing of configs or data sets; which
store belongs to which search, and where it lives, is :mod:`decouple_jax.search.store_ids`.
Targets are read on the host with :meth:`TargetStore.read` (chosen positions or every image,
chosen layers or all) and placed on the devices with :meth:`TargetStore.put_on_devices`.

Layout of a store directory (every array file is a plain .npy, readable with
``np.load(path, mmap_mode='r')``):

  meta.json      format version, the :class:`StoreSpec`, the completed chunks: each one's id
                 and the crc32 of its rows in every file below (but indices.npy).
  meta.lock      lock file that serialises metadata commits of concurrent writers.
  writer.lock    held by the process writing the store (:mod:`decouple_jax.locks`); says who.
  indices.npy    (N,) int64: dataset index of the image at each position 0..N-1.
  layer{l}.npy   (N, *shapes[l]) targets of search layer l in the store dtype. bfloat16 layers
                 hold the raw bits as uint16, because .npy has no bfloat16 type (NumPy writes
                 ml_dtypes' bfloat16 as an opaque void type); read them with
                 ``.view(ml_dtypes.bfloat16)``.
  best_loss.npy  (N, L) float32: per image, the loss (cross-entropy, nats) of the best candidate
                 after searching each layer; NaN until the image's chunk is written.
  init_loss.npy  (N,) float32: per image, the loss before the search; NaN until written.

Resumption: the store is written one chunk of ``chunk_size`` consecutive positions at a time. A
chunk counts as done only once meta.json lists it, and :meth:`TargetStore.write_chunk` makes the
chunk's data durable (fsync) before it commits meta.json atomically (temp file + ``os.replace``).
A kill at any moment therefore leaves every chunk either complete or missing, and a missing
chunk is simply searched and written again.

Verification: a completed chunk is checked against its crc32 before it is used, once per
opening of the store: all of them when the store is opened for writing (a search resuming it),
so that a damaged chunk (a flipped bit, NaN written into it, a file changed by hand) is
reported and searched again, never counted as searched; and each chunk on the first read that
touches it when opened read-only (training), where damage stops the read. Checking costs one
read of the chunk's rows (crc32 runs at several GB/s, so the disk sets the pace).

Older formats: format 2 (the previous version of this library) recorded no checksums, only the
ids of the completed chunks. A search opening such a store for writing upgrades it in place
once: each completed chunk whose values are all finite (the one check format 2 could make) gets
its crc32, the others are marked unwritten and searched again. Training refuses a format 2
store until that is done. Format 1 stores did not record the data they were searched on and are
refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import operator
import os
import pathlib
import re
import shutil
import warnings
import weakref
import zlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import ml_dtypes
import numpy as np

from decouple_jax import locks
from decouple_jax.config import STORE_DTYPES, as_json, differences

# 2: the spec records the config its hash covers (format 1 stores recorded only the hash, of
# settings that did not include the data's content). 3: each completed chunk's crc32; a writer
# upgrades a format 2 store in place (TargetStore._upgrade).
FORMAT_VERSION = 3
DTYPES = STORE_DTYPES

_META = 'meta.json'
_META_TMP = 'meta.json.tmp'
_LOCK = 'meta.lock'
# Every name a store (or a store whose creation was killed) can leave in its directory.
_LAYOUT = re.compile(r'meta\.json(\.tmp)?|meta\.lock|writer\.lock|indices\.npy|best_loss\.npy'
                     r'|init_loss\.npy|layer\d+\.npy')
_KEPT = (_LOCK, locks.LOCK_FILE)  # lock files survive the cleanup of a killed creation


class StoreError(Exception):
  """A target store that is missing, corrupt, made for another run, or used wrongly."""


class _Format2(StoreError):
  """A format 2 store: its completed chunks (``complete``, ids) have no checksums yet."""

  def __init__(self, directory: pathlib.Path, spec: StoreSpec, complete: list[int]):
    super().__init__(f'{directory} has store format 2, which records no checksums of its '
                     f'chunks; run the search command that made it once more: it resumes, '
                     f'upgrades the store in place and searches again only the chunks that fail '
                     f'the check')
    self.spec, self.complete = spec, complete


def indices_hash(indices: np.ndarray) -> str:
  """The :attr:`StoreSpec.index_hash` of dataset indices.

  Args:
    indices: (N,) integer dataset indices of the images at store positions 0..N-1.

  Returns:
    16 hex digits of the sha256 of the indices as little-endian int64, in order.
  """
  blob = np.ascontiguousarray(indices, dtype='<i8').tobytes()
  return hashlib.sha256(blob).hexdigest()[:16]


def _disk_dtype(dtype: str) -> np.dtype:
  return np.dtype(np.uint16) if dtype == 'bfloat16' else np.dtype(dtype)


def _value_dtype(dtype: str) -> np.dtype:
  return np.dtype(ml_dtypes.bfloat16) if dtype == 'bfloat16' else np.dtype(dtype)


@dataclasses.dataclass(frozen=True)
class StoreSpec:
  """What a store holds and which run made it; a store is reused only if its spec is equal.

  Attributes:
    shapes: per search layer, the shape of one image's target without the image axis, e.g.
      ((15, 15, 256), (7, 7, 256), (3, 3, 256), (10,)) (NHWC, logits last).
    dtype: 'float32', 'float16' or 'bfloat16': the dtype the targets are kept in.
    num_images: N, images in the store (positions 0..N-1).
    chunk_size: images per chunk, the unit of writing and of resumption.
    config_hash: hash of the search and data configs (computed by the caller).
    data_name: the data set, e.g. 'mnist'.
    seed: the search seed.
    index_hash: :func:`indices_hash` of the dataset indices of the N images, so that a store of
      another split or subset is refused.
    config: the JSON-ready settings ``config_hash`` is the hash of, kept so that a store of
      another run is refused naming the settings that differ.
  """
  shapes: tuple[tuple[int, ...], ...]
  dtype: str
  num_images: int
  chunk_size: int
  config_hash: str
  data_name: str
  seed: int
  index_hash: str
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    # Normalise, so that a spec built from JSON lists or NumPy ints compares equal.
    try:
      shapes = tuple(tuple(operator.index(d) for d in s) for s in self.shapes)
      for name in ('num_images', 'chunk_size', 'seed'):
        object.__setattr__(self, name, operator.index(getattr(self, name)))
    except TypeError as e:
      raise StoreError(f'StoreSpec needs integer shapes, num_images, chunk_size and seed: '
                       f'{e} (got {self!r})') from e
    object.__setattr__(self, 'shapes', shapes)
    object.__setattr__(self, 'config', as_json(dict(self.config)))
    if not shapes or any(d < 1 for s in shapes for d in s):
      raise StoreError(f'StoreSpec.shapes={shapes!r}: give one shape of positive sizes per '
                       f'search layer, without the image axis')
    if self.dtype not in DTYPES:
      raise StoreError(f'StoreSpec.dtype={self.dtype!r} is not one of {DTYPES}')
    if self.num_images < 1 or self.chunk_size < 1:
      raise StoreError(f'StoreSpec.num_images={self.num_images} and chunk_size='
                       f'{self.chunk_size} must both be >= 1')

  @property
  def num_chunks(self) -> int:
    return -(-self.num_images // self.chunk_size)

  def differences(self, found: StoreSpec) -> list[str]:
    """One 'field: expected ..., found ...' line per field where ``found`` differs; for the
    config, one per setting that differs (``config.search.init_noise: ...``)."""
    lines = [f'{f.name}: expected {getattr(self, f.name)!r}, found {getattr(found, f.name)!r}'
             for f in dataclasses.fields(self) if f.name != 'config'
             and getattr(self, f.name) != getattr(found, f.name)]
    return lines + differences(self.config, found.config, 'config')


def _spec_from_json(d: Any, where: pathlib.Path) -> StoreSpec:
  names = {f.name for f in dataclasses.fields(StoreSpec)}
  if not isinstance(d, dict) or set(d) != names:
    raise StoreError(f'{where}: the spec in it is not a StoreSpec ({d!r}); the file is corrupt or '
                     f'from another program: delete {where.parent} and re-run the search')
  return StoreSpec(**d)


def _fsync_dir(directory: pathlib.Path) -> None:
  # Makes a rename or a new file in the directory itself durable.
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _pwrite(path: pathlib.Path, offset: int, array: np.ndarray) -> None:
  """Writes ``array``'s bytes at byte ``offset`` of ``path`` and fsyncs the file."""
  view = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
  fd = os.open(path, os.O_WRONLY)
  try:
    while view:  # pwrite may write less than asked (Linux caps a call at ~2 GiB)
      n = os.pwrite(fd, view, offset)
      view, offset = view[n:], offset + n
    os.fsync(fd)
  except OSError as e:  # an error on a file descriptor names no file (e.g. a full disk)
    raise OSError(e.errno, e.strerror, str(path)) from e
  finally:
    os.close(fd)


@contextlib.contextmanager
def _locked(directory: pathlib.Path) -> Iterator[None]:
  # flock is released by the kernel when its holder dies, so a killed writer never leaves the
  # store locked.
  with open(directory / _LOCK, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _crc32(parts: Iterable[np.ndarray]) -> str:
  """A chunk's checksum: the crc32 of its rows of every file, in layout order (8 hex digits).

  crc32, not sha256: it catches accidental damage as surely and runs several times faster.
  """
  crc = 0
  for part in parts:
    crc = zlib.crc32(memoryview(np.ascontiguousarray(part)).cast('B'), crc)
  return f'{crc:08x}'


def _read_meta(directory: pathlib.Path) -> tuple[StoreSpec, dict[int, str]]:
  path = directory / _META
  try:
    meta = json.loads(path.read_text())
  except FileNotFoundError:
    raise StoreError(f'{directory} holds no target store (no {_META}): check the path, or run '
                     f'the search to create the store there') from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise StoreError(f'{path} is unreadable or corrupt ({e}); delete {directory} and re-run '
                     f'the search') from e
  if not isinstance(meta, dict) or set(meta) != {'format_version', 'spec', 'complete'}:
    raise StoreError(f'{path} is not target-store metadata (keys '
                     f'{sorted(meta) if isinstance(meta, dict) else type(meta).__name__}); delete '
                     f'{directory} and re-run the search')
  version = meta['format_version']
  if version not in (2, FORMAT_VERSION):
    why = (': a format 1 store does not record the data it was searched on, so it cannot be '
           'checked against this data' if version == 1 else '')
    raise StoreError(f'{directory} has store format {version!r}, this code reads format '
                     f'{FORMAT_VERSION}{why}; re-run the search into a new directory')
  spec = _spec_from_json(meta['spec'], path)
  complete = meta['complete']
  if version == 2:  # readers refuse it with this error's message; a writer upgrades the store
    if (isinstance(complete, list) and
        all(isinstance(c, int) and 0 <= c < spec.num_chunks for c in complete)):
      raise _Format2(directory, spec, complete)
  elif (isinstance(complete, dict) and
        all(k.isdigit() and int(k) < spec.num_chunks and isinstance(v, str)
            for k, v in complete.items())):
    return spec, {int(k): v for k, v in complete.items()}
  raise StoreError(f'{path}: the completed chunks {complete!r} are not chunk ids in '
                   f'0..{spec.num_chunks - 1} as store format {version} records them; the file '
                   f'is corrupt: delete {directory} and re-run the search')


def _write_meta(directory: pathlib.Path, spec: StoreSpec, complete: Mapping[int, str]) -> None:
  """Atomically replaces meta.json: a reader or a kill sees the old file or the new one.
  ``complete`` maps the completed chunks' ids to their checksums."""
  blob = json.dumps({'format_version': FORMAT_VERSION, 'spec': dataclasses.asdict(spec),
                     'complete': {str(c): complete[c] for c in sorted(complete)}}, indent=1,
                    sort_keys=True)
  tmp = directory / _META_TMP
  with open(tmp, 'w') as f:
    f.write(blob + '\n')
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, directory / _META)
  _fsync_dir(directory)


def _check_indices(indices: np.ndarray, spec: StoreSpec) -> np.ndarray:
  indices = np.asarray(indices)
  if indices.shape != (spec.num_images,) or indices.dtype.kind not in 'iu':
    raise StoreError(f'indices must be ({spec.num_images},) integers (one dataset index per '
                     f'store position), got {indices.shape} {indices.dtype}')
  found = indices_hash(indices)
  if found != spec.index_hash:
    raise StoreError(f'spec.index_hash={spec.index_hash!r} is not the hash of the given indices '
                     f'({found!r}); set it with '
                     f'decouple_jax.search.target_store.indices_hash(indices)')
  return indices.astype(np.int64)


class TargetStore:
  """A directory of cached searched targets; see the module docstring for the layout.

  Build one from a spec with :meth:`create_or_open` (search: write chunks, resume after a
  kill) or :meth:`open` (training: read-only); from a search's id, with
  :func:`decouple_jax.search.store_ids.open_for_search` or
  :func:`~decouple_jax.search.store_ids.open_finished`.

  Attributes:
    directory: the store's directory.
    spec: what the store holds (:class:`StoreSpec`).
    indices: (N,) int64 dataset index of the image at each position.
  """

  def __init__(self, directory: pathlib.Path, spec: StoreSpec, complete: Mapping[int, str],
               writable: bool):
    """Maps the store's files; use :meth:`create_or_open` or :meth:`open` instead.
    ``complete`` maps the completed chunks' ids to their checksums."""
    self.directory = directory
    self.spec = spec
    self._writable = writable
    self._checksums = dict(complete)
    self._done = np.zeros(spec.num_chunks, bool)
    self._done[list(complete)] = True
    # Completed chunks found to match their checksums since this store was opened.
    self._verified = np.zeros(spec.num_chunks, bool)
    n, num_layers = spec.num_images, len(spec.shapes)
    disk = _disk_dtype(spec.dtype)
    expected = {'indices.npy': ((n,), np.dtype(np.int64)),
                'best_loss.npy': ((n, num_layers), np.dtype(np.float32)),
                'init_loss.npy': ((n,), np.dtype(np.float32))}
    expected.update({f'layer{l}.npy': ((n, *s), disk) for l, s in enumerate(spec.shapes)})
    maps = {}
    for name, (shape, dtype) in expected.items():
      try:
        maps[name] = np.load(directory / name, mmap_mode='r')
      except (OSError, ValueError) as e:  # missing, truncated, or a broken .npy header
        raise StoreError(f'{directory / name} is missing or corrupt ({e}); delete {directory} '
                         f'and re-run the search') from e
      if maps[name].shape != shape or maps[name].dtype != dtype:
        raise StoreError(f'{directory / name} holds {maps[name].shape} {maps[name].dtype}, the '
                         f'spec needs {shape} {dtype}; the store is corrupt: delete {directory} '
                         f'and re-run the search')
    self.indices = np.array(maps['indices.npy'])
    if indices_hash(self.indices) != spec.index_hash:
      raise StoreError(f'{directory / "indices.npy"} does not match the index_hash of '
                       f'{directory / _META}; the store is corrupt: delete {directory} and '
                       f're-run the search')
    self._best_loss = maps['best_loss.npy']
    self._init_loss = maps['init_loss.npy']
    self._layers = [maps[f'layer{l}.npy'] for l in range(num_layers)]

  @classmethod
  def create_or_open(cls, directory: str | os.PathLike, spec: StoreSpec,
                     indices: np.ndarray, *, cooperate: bool | None = None) -> TargetStore:
    """A writable store for ``spec``: a new one, or the existing one to resume.

    The store holds its directory's writer lock (:mod:`decouple_jax.locks`) until it is
    garbage-collected, so a second process searching into it stops at once. Completed chunks
    that do not match their checksums are marked unwritten, with a warning naming them, so
    that the search redoes them. A format 2 store is upgraded in place (:meth:`_upgrade`).

    Args:
      directory: where the store lives; created if needed.
      spec: what the store must hold. An existing store must have exactly this spec.
      indices: (N,) integer dataset indices of the images at positions 0..N-1;
        ``spec.index_hash`` must be :func:`indices_hash` of them.
      cooperate: share the directory with other cooperating writers of this spec (e.g. the
        processes of one multi-process search, the default when there are several); see
        :mod:`decouple_jax.locks`.

    Raises:
      StoreError: the directory holds a store with another spec (the message lists each
        differing field), a corrupt store, or unrelated files; or ``indices`` do not match.
      locks.DirectoryBusy: another process is writing the store.
    """
    directory = pathlib.Path(directory)
    indices = _check_indices(indices, spec)
    key = locks.acquire(directory, cooperate=cooperate)
    try:
      store = cls._create_or_open(directory, spec, indices)
      store._forget_damaged()
    except BaseException:
      locks.release(key)
      raise
    weakref.finalize(store, locks.release, key)
    return store

  @classmethod
  def _create_or_open(cls, directory: pathlib.Path, spec: StoreSpec,
                      indices: np.ndarray) -> TargetStore:
    # Under the lock, so two processes started on one directory cannot both create it.
    with _locked(directory):
      if (directory / _META).exists():
        try:
          found, complete = _read_meta(directory)
          unchecked = None
        except _Format2 as old:
          found, complete, unchecked = old.spec, {}, old.complete
        differences = spec.differences(found)
        if differences:
          raise StoreError(f'{directory} holds targets of another run:\n  ' +
                           '\n  '.join(differences) + '\nUse another directory for this run, '
                           f'or delete {directory} to start over (its searched chunks are lost).')
        store = cls(directory, found, complete, writable=True)
        if unchecked is not None:
          store._upgrade(unchecked)
        return store
      _create(directory, spec, indices)
    return cls(directory, spec, {}, writable=True)

  @classmethod
  def open(cls, directory: str | os.PathLike,
           expect: Mapping[str, Any] | None = None) -> TargetStore:
    """A read-only store, e.g. for training.

    Args:
      directory: the store's directory.
      expect: spec fields the store must have, e.g. ``{'data_name': 'mnist', 'config_hash':
        h}``; keys are :class:`StoreSpec` field names.

    Raises:
      StoreError: no store, a corrupt store, a format 2 store (a search resuming it upgrades
        it), an unknown key in ``expect``, or a field that differs from ``expect`` (each one
        named, expected vs found).
    """
    directory = pathlib.Path(directory)
    spec, complete = _read_meta(directory)
    if expect:
      names = [f.name for f in dataclasses.fields(StoreSpec)]
      unknown = sorted(set(expect) - set(names))
      if unknown:
        raise StoreError(f'expect has unknown field(s) {unknown}; StoreSpec fields: {names}')
      differences = dataclasses.replace(spec, **expect).differences(spec)
      if differences:
        raise StoreError(f'{directory} holds targets of another run:\n  ' +
                         '\n  '.join(differences) + '\nPoint training at the store this config '
                         'searched, or run the search for this config.')
    return cls(directory, spec, complete, writable=False)

  @property
  def num_chunks(self) -> int:
    return self.spec.num_chunks

  def chunk_range(self, c: int) -> tuple[int, int]:
    """Positions [start, stop) of chunk ``c``; the last chunk may be shorter."""
    if not 0 <= c < self.num_chunks:
      raise StoreError(f'chunk {c} is out of range: the store has chunks 0..{self.num_chunks - 1}')
    start = c * self.spec.chunk_size
    return start, min(start + self.spec.chunk_size, self.spec.num_images)

  def refresh(self) -> None:
    """Re-reads which chunks are complete, e.g. once the other processes of a multi-process
    search have committed theirs."""
    spec, complete = _read_meta(self.directory)
    if spec != self.spec:
      raise StoreError(f'{self.directory / _META} changed under this store (another run '
                       f'recreated it); give each run its own directory')
    self._checksums.update(complete)
    self._done[list(complete)] = True

  def _chunk_rows(self, c: int) -> list[np.ndarray]:
    """Chunk ``c``'s rows of every file, in the order its checksum covers them."""
    start, stop = self.chunk_range(c)
    return [m[start:stop] for m in (*self._layers, self._best_loss, self._init_loss)]

  def _damaged(self, chunks: Iterable[int]) -> list[int]:
    """Those of the completed ``chunks`` whose rows do not match their checksums (each chunk
    is read once per opening; a match is remembered)."""
    damaged = []
    for c in chunks:
      if self._done[c] and not self._verified[c]:
        if _crc32(self._chunk_rows(c)) == self._checksums[c]:
          self._verified[c] = True
        else:
          damaged.append(c)
    return damaged

  def _verify(self, chunks: Iterable[int]) -> None:
    """Refuses to read completed ``chunks`` that do not match their checksums."""
    damaged = self._damaged(chunks)
    if damaged:
      raise StoreError(
          f'{self.directory} is damaged: chunk(s) {damaged} do not match their checksums (their '
          'files changed after the search wrote them); run the search that made this store on '
          'it again (launch/search.py resumes it): it searches only those chunks again')

  def _forget_damaged(self) -> None:
    """Marks the completed chunks that do not match their checksums unwritten, with a warning,
    so that the search redoes them."""
    damaged = self._damaged(np.flatnonzero(self._done).tolist())
    if not damaged:
      return
    with _locked(self.directory):
      # Re-read under the lock: another writer may have committed chunks since.
      _, complete = _read_meta(self.directory)
      for c in damaged:
        if complete.get(c) == self._checksums[c]:  # not rewritten by another writer since
          del complete[c]
      _write_meta(self.directory, self.spec, complete)
    self._done[damaged] = False
    warnings.warn(f'{self.directory}: chunk(s) {damaged} do not match their checksums (their '
                  'files changed after the search wrote them); searching them again',
                  stacklevel=3)

  def _upgrade(self, complete: Iterable[int]) -> None:
    """Rewrites a format 2 store's meta.json as this format (caller holds the metadata lock).

    Of the chunks format 2 listed as ``complete``, those whose values are all finite (all it
    could check) stay complete with their crc32 from here on; the others are marked
    unwritten, with a warning, so that the search redoes them.
    """
    damaged = []
    for c in complete:
      start, stop = self.chunk_range(c)
      values = [*(m[start:stop].view(self.value_dtype) for m in self._layers),
                self._best_loss[start:stop], self._init_loss[start:stop]]
      if all(np.isfinite(v).all() for v in values):
        self._checksums[c] = _crc32(self._chunk_rows(c))
      else:
        damaged.append(c)
    _write_meta(self.directory, self.spec, self._checksums)
    # Verified: their checksums were just computed from these very rows.
    self._done[list(self._checksums)] = self._verified[list(self._checksums)] = True
    # stacklevel 4: the caller of create_or_open.
    if damaged:
      warnings.warn(f'{self.directory}: chunk(s) {damaged} hold NaN or inf values; searching '
                    'them again', stacklevel=4)
    warnings.warn(f'{self.directory}: upgraded in place from store format 2 to {FORMAT_VERSION}; '
                  'crc32 checksums cover its completed chunks from here on', stacklevel=4)

  def missing_chunks(self) -> list[int]:
    """Ids of the chunks not yet written, ascending."""
    return np.flatnonzero(~self._done).tolist()

  def is_complete(self) -> bool:
    return bool(self._done.all())

  @property
  def nbytes(self) -> int:
    """Bytes of all targets in the store dtype (the losses and indices not counted)."""
    itemsize = _disk_dtype(self.spec.dtype).itemsize
    return sum(self.spec.num_images * math.prod(s) * itemsize for s in self.spec.shapes)

  @property
  def best_loss(self) -> np.ndarray:
    """(N, L) float32 best loss after each search layer (nats); NaN in unwritten chunks."""
    self._verify(range(self.num_chunks))
    return np.array(self._best_loss)

  @property
  def init_loss(self) -> np.ndarray:
    """(N,) float32 loss before the search (nats); NaN in unwritten chunks."""
    self._verify(range(self.num_chunks))
    return np.array(self._init_loss)

  def write_chunk(self, c: int, targets: Sequence[np.ndarray], best_loss: np.ndarray,
                  init_loss: np.ndarray) -> None:
    """Writes chunk ``c`` durably, then marks it complete.

    Args:
      c: the chunk id; its positions are :meth:`chunk_range` ``(c)``, n of them.
      targets: per search layer, (n, *spec.shapes[l]) float targets (any float dtype; rounded
        to the store dtype).
      best_loss: (n, L) best loss after each search layer.
      init_loss: (n,) loss before the search.

    Raises:
      StoreError: a read-only store, a shape that does not fit, or targets that are NaN/inf
        (or overflow float16).
    """
    if not self._writable:
      raise StoreError(f'{self.directory} was opened read-only (TargetStore.open); use '
                       f'TargetStore.create_or_open to write chunks')
    start, stop = self.chunk_range(c)
    n, num_layers = stop - start, len(self.spec.shapes)
    if len(targets) != num_layers:
      raise StoreError(f'chunk {c}: got {len(targets)} target arrays, the store has '
                       f'{num_layers} layers')
    # Everything is checked and converted before the first byte is written.
    encoded = [self._encode(c, l, t, (n, *s))
               for l, (t, s) in enumerate(zip(targets, self.spec.shapes))]
    best_loss = np.asarray(best_loss, np.float32)
    init_loss = np.asarray(init_loss, np.float32)
    if best_loss.shape != (n, num_layers) or init_loss.shape != (n,):
      raise StoreError(f'chunk {c}: best_loss {best_loss.shape} and init_loss {init_loss.shape} '
                       f'must be ({n}, {num_layers}) and ({n},)')
    for l, array in enumerate(encoded):
      self._write_rows(self._layers[l], f'layer{l}.npy', start, array)
    self._write_rows(self._best_loss, 'best_loss.npy', start, best_loss)
    self._write_rows(self._init_loss, 'init_loss.npy', start, init_loss)
    self._commit(c, _crc32([*encoded, best_loss, init_loss]))

  def _encode(self, c: int, l: int, target: Any, shape: tuple[int, ...]) -> np.ndarray:
    target = np.asarray(target)
    if target.shape != shape:
      raise StoreError(f'chunk {c} layer {l}: targets have shape {target.shape}, the store '
                       f'needs {shape}')
    with np.errstate(over='ignore'):  # overflow is detected and reported just below
      stored = target.astype(_value_dtype(self.spec.dtype))
    bad = ~np.isfinite(stored)
    if bad.any():
      if np.isfinite(target[bad]).all():
        raise StoreError(f'chunk {c} layer {l}: {int(bad.sum())} values overflow '
                         f'{self.spec.dtype} (max |value| {np.abs(target).max():.3g}); use '
                         f'store_dtype bfloat16 or float32')
      raise StoreError(f'chunk {c} layer {l}: {int(bad.sum())} targets are NaN or inf; the '
                       f'search produced them, fix it before caching')
    return stored.view(_disk_dtype(self.spec.dtype))

  def _write_rows(self, mapped: np.memmap, name: str, start: int, rows: np.ndarray) -> None:
    _pwrite(self.directory / name, mapped.offset + start * rows[0].nbytes, rows)

  def _commit(self, c: int, checksum: str) -> None:
    """Atomically adds chunk ``c``, with its checksum, to the completed chunks in meta.json."""
    with _locked(self.directory):
      # Re-read under the lock: another writer may have committed chunks since.
      found, complete = _read_meta(self.directory)
      if found != self.spec:
        raise StoreError(f'{self.directory / _META} changed under this writer (another run '
                         f'recreated the store); give each run its own directory')
      complete[c] = checksum
      _write_meta(self.directory, self.spec, complete)
    self._checksums.update(complete)
    self._done[list(complete)] = True
    self._verified[c] = True

  def _check_positions(self, positions: np.ndarray, allow_incomplete: bool) -> np.ndarray:
    positions = np.asarray(positions)
    if positions.ndim != 1 or positions.dtype.kind not in 'iu':
      raise StoreError(f'positions must be a 1-D integer array, got {positions.shape} '
                       f'{positions.dtype}')
    if positions.size and (positions.min() < 0 or positions.max() >= self.spec.num_images):
      raise StoreError(f'positions span {positions.min()}..{positions.max()}, the store holds '
                       f'0..{self.spec.num_images - 1}')
    if not allow_incomplete:
      chunks = positions // self.spec.chunk_size
      missing = np.unique(chunks[~self._done[chunks]])
      if missing.size:
        raise StoreError(f'{self.directory}: positions fall in unwritten chunk(s) '
                         f'{missing.tolist()} ({len(self.missing_chunks())} of {self.num_chunks} '
                         f'missing); finish the search on this directory, or pass '
                         f'allow_incomplete=True to read them anyway')
    return positions.astype(np.int64)

  def _layer_indices(self, layers: Iterable[int] | None) -> list[int]:
    num_layers = len(self.spec.shapes)
    if layers is None:
      return list(range(num_layers))
    chosen = [operator.index(l) for l in layers]
    bad = [l for l in chosen if not -num_layers <= l < num_layers]
    if bad:
      raise StoreError(f'layers {bad} are out of range: the store has search layers '
                       f'0..{num_layers - 1} (negative counts from the end, -1 the logits)')
    return [l % num_layers for l in chosen]

  def _decode(self, raw: np.ndarray, dtype: Any, copy: bool) -> np.ndarray:
    return raw.view(self.value_dtype).astype(dtype, copy=copy)

  @property
  def value_dtype(self) -> np.dtype:
    """The dtype the targets are kept in (``ml_dtypes.bfloat16`` for a bfloat16 store); pass it
    as ``dtype`` to read them without a conversion."""
    return _value_dtype(self.spec.dtype)

  def read(self, positions: np.ndarray | None = None, *, layers: Iterable[int] | None = None,
           dtype: Any = np.float32, allow_incomplete: bool = False) -> tuple[np.ndarray, ...]:
    """Targets in host memory: of chosen positions (e.g. a random batch), or of every image.

    The first read that touches a completed chunk checks the chunk against its checksum (see
    the module docstring), which reads its rows of every file; later reads touch only the
    requested layers' rows.

    Args:
      positions: (B,) integer store positions, any order, repeats allowed; None: every image,
        B = N, in store order.
      layers: the search layers to read, in the order given (negative counts from the end:
        -1 is the logits); None: all of them.
      dtype: dtype of the result; float32 by default, :attr:`value_dtype` to skip the
        conversion.
      allow_incomplete: read unwritten chunks too (zeros, or a killed writer's leftovers).

    Returns:
      Per requested layer l, a (B, *spec.shapes[l]) array of ``dtype``.

    Raises:
      StoreError: positions or layers out of range, positions in an unwritten chunk (for
        ``positions=None``: an incomplete store) unless allowed, or in a damaged one (one that
        does not match its checksum).
    """
    layers = self._layer_indices(layers)
    if positions is None:
      if not allow_incomplete and not self.is_complete():
        raise StoreError(f'{self.directory} is incomplete (chunks {self.missing_chunks()} '
                         f'missing); finish the search on this directory, or pass '
                         f'allow_incomplete=True')
      self._verify(range(self.num_chunks))
      # Whole memmaps, copied: a fancy index over every position would hold two copies.
      return tuple(self._decode(self._layers[l], dtype, copy=True) for l in layers)
    positions = self._check_positions(positions, allow_incomplete)
    self._verify(np.unique(positions // self.spec.chunk_size).tolist())
    return tuple(self._decode(self._layers[l][positions], dtype, copy=False) for l in layers)

  def put_on_devices(self, max_bytes: int, *,
                     sharding: jax.sharding.Sharding | jax.Device | None = None,
                     ) -> tuple[jax.Array, ...] | None:
    """Every image's targets placed on the devices, if they fit the budget.

    Args:
      max_bytes: device memory budget for the targets, in bytes.
      sharding: where to put the arrays (``jax.device_put`` semantics; None: default device).

    Returns:
      None if :attr:`nbytes` > ``max_bytes``; else per layer an (N, *spec.shapes[l]) array in
      the store dtype (16-bit stores stay 16-bit; cast in the loss).

    Raises:
      StoreError: the store is incomplete, or damaged.
    """
    if not self.is_complete():
      raise StoreError(f'{self.directory} is incomplete (chunks {self.missing_chunks()} '
                       f'missing); finish the search on this directory before training')
    if self.nbytes > max_bytes:
      return None
    # One layer at a time, so host memory peaks at one layer, not the whole store.
    return tuple(jax.device_put(self.read(layers=[l], dtype=self.value_dtype)[0], sharding)
                 for l in range(len(self.spec.shapes)))


def _create(directory: pathlib.Path, spec: StoreSpec, indices: np.ndarray) -> None:
  """Creates the files of a new store in ``directory`` (caller holds the lock)."""
  strangers = sorted(p.name for p in directory.iterdir() if not _LAYOUT.fullmatch(p.name))
  if strangers:
    raise StoreError(f'{directory} holds no target store ({_META} missing) but other files '
                     f'{strangers[:5]}; give the store an empty or new directory')
  # Without meta.json no chunk was ever committed: anything here is a killed creation's
  # leftover, and stale layer files of another layer count must not survive.
  for p in directory.iterdir():
    if p.name not in _KEPT:
      p.unlink()
  itemsize = _disk_dtype(spec.dtype).itemsize
  need = sum(spec.num_images * math.prod(s) * itemsize for s in spec.shapes)
  free = shutil.disk_usage(directory).free
  if need > free:
    raise StoreError(f'the store needs {need / 1e9:.2f} GB and {directory} has '
                     f'{free / 1e9:.2f} GB free; use store_dtype float16/bfloat16 (half the '
                     f'size) or a directory on a bigger disk')
  n, num_layers = spec.num_images, len(spec.shapes)
  np.save(directory / 'indices.npy', indices)
  np.save(directory / 'best_loss.npy', np.full((n, num_layers), np.nan, np.float32))
  np.save(directory / 'init_loss.npy', np.full((n,), np.nan, np.float32))
  for l, shape in enumerate(spec.shapes):
    # Sparse: allocates no disk blocks until chunks are written.
    np.lib.format.open_memmap(directory / f'layer{l}.npy', mode='w+',
                              dtype=_disk_dtype(spec.dtype), shape=(n, *shape))
  for p in directory.iterdir():
    with open(p, 'rb+') as f:
      os.fsync(f.fileno())
  _fsync_dir(directory)
  _write_meta(directory, spec, [])
