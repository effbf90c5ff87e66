"""Source ``folder``: images in the usual image-folder layout, decoded once, cached by content.

Layout: ``data.dir/train/<class>/*.{png,jpg,jpeg}`` and ``data.dir/test/<class>/...``, the
same class folders in both; every image of one size and one mode, 8-bit grayscale (L) or RGB.

Labels follow :data:`KNOWN_CLASSES` for a data set it names ('cifar10': airplane, automobile,
..., truck), and the sorted folder names for any other ``data.name``, which is then just the
user's label for their data set.

Order: within a class by file name; across classes interleaved (every class's first file in
class order, then every class's second, ...), so a prefix, which is what ``data.train_limit``
and ``data.test_limit`` keep, holds the classes in proportion. A folder sorted by class (such as
the JPEG copy of CIFAR-10) would otherwise give a prefix of airplanes only.

Cache: decoding is the slow part (about 6 s for CIFAR-10's 60,000 JPEGs on this project's
2-core machine; a thread pool was no faster), reading and hashing every file's bytes the cheap
one (about 1.3 s; statting them alone cost 1.2 s, so keying by modification times would save
little and trust more). The decoded arrays are kept in
``<cache dir>/folders/<content hash>.npz`` (the cache dir of
:func:`decouple_jax.data.fetch.default_cache_dir`, ``~/.cache/decouple_jax``), where the hash
covers the class order and every file's relative path and bytes: a changed, added or removed
file gives another key, a moved folder the same one. The file is written only after every image
decoded, under a temporary name renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import pathlib
import warnings
import zipfile

import numpy as np
import tqdm

from decouple_jax.config import DataConfig
from decouple_jax.data import sources
from decouple_jax.data.errors import DataError
from decouple_jax.data.fetch import default_cache_dir

SPLITS = ('train', 'test')
IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png')
# The class order of data sets that have one: a folder loaded under such a name must have
# exactly these class folders, so a misnamed or missing class is caught.
KNOWN_CLASSES = {
    'cifar10': ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                'truck'),
    'mnist': tuple('0123456789'),
}
# Pillow mode -> channels.
_CHANNELS = {'L': 1, 'RGB': 3}
# Part of the cache key: bump it when decoding the same files would give other arrays.
_CACHE_VERSION = 1
_KEYS = ('train_images', 'train_labels', 'test_images', 'test_labels')
_OBTAIN = ('Point data.dir at a directory holding train/<class>/*.png|jpg|jpeg and '
           'test/<class>/*.png|jpg|jpeg (docs/data.md).')


def class_names(cfg: DataConfig) -> tuple[str, ...]:
  """The class folder names in label order (see the module docstring).

  Raises:
    DataError: no train/ or test/ folder, a file beside the class folders, a class folder
      missing from one split, or one that is not a class of the data set ``cfg.name``.
  """
  root = pathlib.Path(cfg.dir)
  found = {}
  for split in SPLITS:
    if not (root / split).is_dir():
      raise DataError(f'{root / split}: no such directory. {_OBTAIN}')
    stray = sorted(p for p in (root / split).iterdir() if not p.is_dir())
    if stray:
      raise DataError(f'{stray[0]}: a file beside the class folders; move it into its class '
                      f'folder or out of {root}.')
    found[split] = sorted(p.name for p in (root / split).iterdir())
  known = KNOWN_CLASSES.get(cfg.name)
  classes = known or tuple(found['train'])
  if not classes:
    raise DataError(f'{root / "train"}: no class folders. {_OBTAIN}')
  for split in SPLITS:
    missing = [c for c in classes if c not in found[split]]
    extra = [c for c in found[split] if c not in classes]
    if known and (missing or extra):
      what = (f'no folder {missing[0]!r}' if missing
              else f'folder {extra[0]!r} is not a class')
      raise DataError(f'{root / split}: {what} of {cfg.name} {known}. Name the class folders '
                      'so, or give data.name a name of your own to label the classes by their '
                      'sorted folder names.')
    if missing or extra:  # Only test/ can differ: the classes are train/'s folders.
      what = f'no folder {missing[0]!r}, which train/ has' if missing else (
          f'folder {extra[0]!r}, which train/ lacks')
      raise DataError(f'{root / split}: {what}; every class needs images in both train/ and '
                      'test/.')
  return classes


def _files(root: pathlib.Path, split: str, classes: tuple[str, ...]) -> list[tuple[str, int]]:
  """(path relative to ``root``, label) of one split's images, interleaved by class (see the
  module docstring)."""
  per_class = []
  for label, name in enumerate(classes):
    folder = root / split / name
    # scandir's entries know whether they are files without a stat per file.
    with os.scandir(folder) as it:
      entries = sorted(it, key=lambda e: e.name)
    if not entries:
      raise DataError(f'{folder}: empty class folder; put the class\'s images in it.')
    for entry in entries:
      if not (entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES):
        raise DataError(f'{folder / entry.name}: not a {"/".join(IMAGE_SUFFIXES)} image file; '
                        f'move it out of {root}.')
    per_class.append([(f'{split}/{name}/{entry.name}', label) for entry in entries])
  return [item for row in itertools.zip_longest(*per_class) for item in row
          if item is not None]


def _read(path: pathlib.Path) -> bytes:
  try:
    return path.read_bytes()
  except OSError as e:
    raise DataError(f'{path}: unreadable ({e.strerror}); fix its permissions or remove '
                    'it.') from e


def _decode(blob: bytes, path: pathlib.Path) -> tuple[np.ndarray, str]:
  """(pixels (H, W) or (H, W, 3) uint8, Pillow mode) of one image file's bytes."""
  # Imported on first use, so that importing the data package does not load Pillow.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(blob)) as image:
      return np.asarray(image), image.mode
  except Exception as e:  # A damaged file can raise almost anything from Pillow's decoders.
    raise DataError(f'{path}: not a readable image ({e}); replace the file or remove '
                    'it.') from e


def _decode_all(blobs: list[bytes], paths: list[pathlib.Path]) -> np.ndarray:
  """(N, H, W, C) uint8: the images, which must all share the first one's size and mode."""
  images, first = None, None
  with tqdm.tqdm(total=len(blobs), desc='decoding images', unit='image', disable=None,
                 mininterval=1.0) as bar:
    for i, (blob, path) in enumerate(zip(blobs, paths)):
      pixels, mode = _decode(blob, path)
      if first is None:
        if mode not in _CHANNELS:
          raise DataError(f'{path}: image mode {mode}; the folder source reads 8-bit grayscale '
                          '(L) or RGB images: convert the files.')
        first = (path, pixels.shape, mode)
        images = np.empty((len(blobs), *pixels.shape[:2], _CHANNELS[mode]), np.uint8)
      elif (pixels.shape, mode) != first[1:]:
        raise DataError(f'{path}: {_describe(pixels.shape, mode)}, but {first[0]} is '
                        f'{_describe(*first[1:])}; all images must share one size and mode: '
                        'resize or convert it.')
      images[i] = pixels.reshape(images.shape[1:])
      bar.update()
  return images


def _describe(shape: tuple[int, ...], mode: str) -> str:
  return f'{shape[1]}x{shape[0]} {mode}'


def _cache_path(digest: str) -> pathlib.Path:
  return default_cache_dir() / 'folders' / f'{digest}.npz'


def _read_cache(path: pathlib.Path, sizes: tuple[int, int]) -> sources.Arrays | None:
  """The cached arrays, or None if there are none or they are damaged (then decoded again)."""
  try:
    with np.load(path) as z:
      arrays = tuple(z[key] for key in _KEYS)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None
  if (len(arrays[0]), len(arrays[2])) != sizes or any(
      len(x) != len(y) for x, y in (arrays[:2], arrays[2:])):
    return None
  return arrays


def _write_cache(path: pathlib.Path, arrays: sources.Arrays) -> None:
  """Writes the arrays under a temporary name, then renames it into place; a cache that cannot
  be written costs a decode next time, not this load."""
  part = path.with_name(f'{path.stem}.{os.getpid()}.part')
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(part, 'wb') as f:
      np.savez(f, **dict(zip(_KEYS, arrays)))
    os.replace(part, path)
  except OSError as e:
    part.unlink(missing_ok=True)
    warnings.warn(f'could not cache the decoded images in {path} ({e}); the next load decodes '
                  'them again.')


@sources.register_source('folder', None, num_classes=lambda cfg: len(class_names(cfg)),
                         obtain=_OBTAIN)
def load_folder(cfg: DataConfig) -> sources.Arrays:
  """Reads the image folder ``cfg.dir`` (see the module docstring); ``cfg.verify`` and
  ``cfg.cifar100_labels`` do not apply.

  Returns:
    ``(train_images, train_labels, test_images, test_labels)``: (N, H, W, C) uint8 with C 1 for
    grayscale and 3 for RGB, (N,) int32, (M, H, W, C) uint8, (M,) int32.

  Raises:
    DataError: a missing train/ or test/ folder, a class folder missing from one split or
      empty, a stray file, an unreadable or damaged image, or images of different sizes or
      modes. Nothing is cached then.
  """
  root = pathlib.Path(cfg.dir)
  classes = class_names(cfg)
  files = {split: _files(root, split, classes) for split in SPLITS}
  names = [name for split in SPLITS for name, _ in files[split]]
  paths = [root / name for name in names]
  blobs = [_read(path) for path in paths]
  # A file's split and label follow from its relative path and the class order.
  digest = hashlib.sha256(repr((_CACHE_VERSION, classes)).encode())
  for name, blob in zip(names, blobs):
    digest.update(f'{name}\0{len(blob)}\0'.encode())
    digest.update(blob)
  cache = _cache_path(digest.hexdigest()[:32])
  n_train = len(files['train'])
  cached = _read_cache(cache, (n_train, len(paths) - n_train))
  if cached is not None:
    return cached
  images = _decode_all(blobs, paths)
  train_labels, test_labels = (np.array([label for _, label in files[split]], np.int32)
                               for split in SPLITS)
  arrays = (images[:n_train], train_labels, images[n_train:], test_labels)
  _write_cache(cache, arrays)
  return arrays
