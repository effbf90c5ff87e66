"""Tests of the image-folder source (decouple_jax/data/folder.py): synthetic folders written with
Pillow for the order, the labels, the cache and every error; the shared JPEG copy of CIFAR-10
for a real check when it is on this machine."""

import os
import pathlib
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
from PIL import Image

from decouple_jax import data
from decouple_jax.config import DataConfig
from decouple_jax.data import folder

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR10 = folder.KNOWN_CLASSES['cifar10']


def _shared_data() -> pathlib.Path:
  """$DECOUPLE_JAX_SHARED_DATA, else ../shared/data beside the main checkout (which, for a git
  worktree, is not the directory of this one)."""
  if 'DECOUPLE_JAX_SHARED_DATA' in os.environ:
    return pathlib.Path(os.environ['DECOUPLE_JAX_SHARED_DATA'])
  git = subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--path-format=absolute',
                        '--git-common-dir'], capture_output=True, text=True, check=False)
  main = pathlib.Path(git.stdout.strip()).parent if git.returncode == 0 else REPO
  return main.parent / 'shared' / 'data'


SHARED_JPEG = _shared_data() / 'cifar10-jpeg.tar.gz'


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  """The decoded-image cache of each test, in its own directory."""
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  return tmp_path / 'cache' / 'decouple_jax' / 'folders'


def _image(seed, shape=(4, 5, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path, pixels, mode=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels.squeeze(), mode=mode).save(path)


def _write(root, counts, shape=(4, 5, 3)):
  """PNGs ``root/<split>/<class>/<i>.png`` for counts {split: {class: n}}; returns
  {(split, class, i): pixels}."""
  written = {}
  for split, classes in counts.items():
    for name, n in classes.items():
      (root / split / name).mkdir(parents=True, exist_ok=True)
      for i in range(n):
        pixels = _image(len(written), shape)
        _save(root / split / name / f'{i}.png', pixels)
        written[(split, name, i)] = pixels
  return written


def _cfg(root, name='flowers', **kwargs):
  return DataConfig(name=name, source='folder', dir=str(root), holdout=0, **kwargs)


SMALL = {'train': {'tulip': 1, 'daisy': 3, 'rose': 2}, 'test': {'daisy': 1, 'rose': 1, 'tulip': 1}}


def test_labels_from_sorted_folders_interleaved_by_class(tmp_path):
  written = _write(tmp_path, SMALL)
  ds = data.load_dataset(_cfg(tmp_path))
  # daisy, rose, tulip = 0, 1, 2; every class's first file, then every class's second, ...
  order = [('daisy', 0), ('rose', 0), ('tulip', 0), ('daisy', 1), ('rose', 1), ('daisy', 2)]
  assert ds.num_classes == 3 and ds.image_shape == (4, 5, 3)
  assert ds.train_labels.tolist() == [0, 1, 2, 0, 1, 0]
  np.testing.assert_array_equal(ds.train_images,
                                [written[('train', c, i)] for c, i in order])
  assert ds.test_labels.tolist() == [0, 1, 2]
  np.testing.assert_array_equal(ds.test_images,
                                [written[('test', c, 0)] for c in ('daisy', 'rose', 'tulip')])
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  # A prefix holds the classes in proportion, whatever order the folder is sorted in.
  limited = data.load_dataset(_cfg(tmp_path, train_limit=3))
  assert limited.train_labels.tolist() == [0, 1, 2]


def test_files_in_a_class_in_name_order(tmp_path):
  pixels = {name: _image(i) for i, name in enumerate(['b.png', 'a10.PNG', 'a9.jpeg'])}
  for name, image in pixels.items():
    _save(tmp_path / 'train' / 'x' / name, image)
  _save(tmp_path / 'test' / 'x' / '0.png', _image(9))
  ds = data.load_dataset(_cfg(tmp_path))
  np.testing.assert_array_equal(ds.train_images[[0, 2]], [pixels['a10.PNG'], pixels['b.png']])
  # a9.jpeg, in between, is lossy: close to what was written, not equal.
  assert np.abs(ds.train_images[1].astype(int) - pixels['a9.jpeg']).mean() < 64


def test_known_data_set_gets_its_own_class_order(tmp_path):
  counts = {'train': dict.fromkeys(reversed(CIFAR10), 1), 'test': dict.fromkeys(CIFAR10, 1)}
  written = _write(tmp_path, counts, shape=(2, 2, 3))
  ds = data.load_dataset(_cfg(tmp_path, name='cifar10'))
  assert ds.num_classes == 10 and ds.train_labels.tolist() == list(range(10))
  np.testing.assert_array_equal(ds.train_images[CIFAR10.index('cat')],
                                written[('train', 'cat', 0)])


def test_grayscale_images_get_one_channel(tmp_path):
  for split in ('train', 'test'):
    _save(tmp_path / split / '7' / '0.png', _image(1, (3, 3)))
  ds = data.load_dataset(_cfg(tmp_path))
  assert ds.image_shape == (3, 3, 1)
  np.testing.assert_array_equal(ds.test_images[0, ..., 0], _image(1, (3, 3)))


def test_cache_hit_gives_the_same_arrays_without_decoding(tmp_path, cache_dir, monkeypatch):
  _write(tmp_path, SMALL)
  first = data.load_dataset(_cfg(tmp_path))
  assert [p.suffix for p in cache_dir.iterdir()] == ['.npz']  # no .part left behind

  def no_decoding(*args):
    raise AssertionError(f'decoded {args[1]} despite the cache')
  monkeypatch.setattr(folder, '_decode', no_decoding)
  again = data.load_dataset(_cfg(tmp_path))
  assert again.fingerprint == first.fingerprint
  np.testing.assert_array_equal(again.train_images, first.train_images)
  np.testing.assert_array_equal(again.test_labels, first.test_labels)


def test_a_changed_file_invalidates_the_cache(tmp_path, cache_dir):
  _write(tmp_path, SMALL)
  before = data.load_dataset(_cfg(tmp_path))
  changed = _image(99)
  _save(tmp_path / 'test' / 'rose' / '0.png', changed)
  after = data.load_dataset(_cfg(tmp_path))
  np.testing.assert_array_equal(after.test_images[1], changed)
  assert after.fingerprint != before.fingerprint
  assert len(list(cache_dir.iterdir())) == 2


def test_a_damaged_cache_is_decoded_again(tmp_path, cache_dir):
  _write(tmp_path, SMALL)
  before = data.load_dataset(_cfg(tmp_path))
  (cache_file,) = cache_dir.iterdir()
  cache_file.write_bytes(cache_file.read_bytes()[:100])
  assert data.load_dataset(_cfg(tmp_path)).fingerprint == before.fingerprint


def test_fingerprint_is_that_of_the_arrays(tmp_path):
  written = _write(tmp_path, {'train': {'a': 1}, 'test': {'a': 1}})
  arrays = (np.stack([written[('train', 'a', 0)]]), np.zeros(1, np.int32),
            np.stack([written[('test', 'a', 0)]]), np.zeros(1, np.int32))
  assert data.load_dataset(_cfg(tmp_path)).fingerprint == data.fingerprint(arrays)


BREAKAGES = {
    'missing train': (lambda r: shutil.rmtree(r / 'train'), r'train: no such directory'),
    'missing test': (lambda r: shutil.rmtree(r / 'test'), r'test: no such directory'),
    'file beside the classes': (lambda r: (r / 'train' / 'notes.txt').write_text('x'),
                                r'train/notes.txt: a file beside the class folders'),
    'stray non-image': (lambda r: (r / 'test' / 'rose' / 'Thumbs.db').write_text('x'),
                        r'test/rose/Thumbs.db: not a \.jpeg/\.jpg/\.png image file; move it '
                        r'out of'),
    'folder inside a class': (lambda r: (r / 'train' / 'rose' / 'more.png').mkdir(),
                              r'train/rose/more.png: not a .* image file'),
    'empty class': (lambda r: _empty(r / 'test' / 'tulip'),
                    r'test/tulip: empty class folder'),
    'class only in train': (lambda r: shutil.rmtree(r / 'test' / 'rose'),
                            r"test: no folder 'rose', which train/ has; every class needs "
                            r'images in both'),
    'class only in test': (lambda r: _save(r / 'test' / 'lily' / '0.png', _image(0)),
                           r"test: folder 'lily', which train/ lacks"),
    'another size': (lambda r: _save(r / 'test' / 'rose' / '0.png', _image(0, (5, 4, 3))),
                     r'test/rose/0.png: 4x5 RGB, but .*train/daisy/0.png is 5x4 RGB; all '
                     r'images must share one size and mode'),
    'another mode': (lambda r: _save(r / 'train' / 'rose' / '1.png', _image(0, (4, 5))),
                     r'train/rose/1.png: 5x4 L, but .* is 5x4 RGB'),
    'unsupported mode': (lambda r: _save(r / 'train' / 'daisy' / '0.png',
                                         _image(0, (4, 5, 4))),
                         r'train/daisy/0.png: image mode RGBA; .* convert the files'),
    'corrupt file': (lambda r: (r / 'train' / 'daisy' / '2.png').write_bytes(b'not a png'),
                     r'train/daisy/2.png: not a readable image \(cannot identify'),
    'truncated file': (lambda r: _truncate(r / 'test' / 'daisy' / '0.png'),
                       r'test/daisy/0.png: not a readable image'),
}


def _empty(path):
  for p in path.iterdir():
    p.unlink()


def _truncate(path):
  path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize('breakage', sorted(BREAKAGES))
def test_bad_folders_refused_naming_the_file_and_nothing_cached(tmp_path, cache_dir, breakage):
  root = tmp_path / 'images'
  _write(root, SMALL)
  damage, message = BREAKAGES[breakage]
  damage(root)
  with pytest.raises(data.DataError, match=message) as e:
    data.load_dataset(_cfg(root))
  assert '\n' not in str(e.value)
  assert not cache_dir.exists() or not list(cache_dir.iterdir())


def test_unreadable_file_refused(tmp_path, cache_dir, monkeypatch):
  _write(tmp_path, SMALL)
  target = tmp_path / 'train' / 'daisy' / '1.png'
  read_bytes = pathlib.Path.read_bytes

  def refuse(path):
    if path == target:
      raise PermissionError(13, 'Permission denied', str(path))
    return read_bytes(path)
  monkeypatch.setattr(pathlib.Path, 'read_bytes', refuse)
  with pytest.raises(data.DataError, match=r'daisy/1.png: unreadable \(Permission denied\); '
                                           'fix its permissions or remove it'):
    data.load_dataset(_cfg(tmp_path))
  assert not cache_dir.exists()


@pytest.mark.parametrize('damage, message', [
    (lambda r: shutil.rmtree(r / 'test' / 'truck'), r"test: no folder 'truck' of cifar10"),
    (lambda r: _save(r / 'train' / 'plane' / '0.png', _image(0)),
     r"train: folder 'plane' is not a class of cifar10 \('airplane', .*give data.name a name "
     'of your own'),
], ids=['missing class', 'unknown class'])
def test_known_data_set_refuses_other_classes(tmp_path, damage, message):
  _write(tmp_path, {split: dict.fromkeys(CIFAR10, 1) for split in ('train', 'test')})
  damage(tmp_path)
  with pytest.raises(data.DataError, match=message):
    data.load_dataset(_cfg(tmp_path, name='cifar10'))


# ----------------------------------------------------------------------------------------------
# The shared JPEG copy of CIFAR-10.

PER_CLASS = {'train': 20, 'test': 10}


@pytest.fixture(scope='module')
def jpeg_subset(tmp_path_factory):
  """The first PER_CLASS images of every class and split of the shared copy, unpacked."""
  if not SHARED_JPEG.is_file():
    pytest.skip(f'{SHARED_JPEG} is absent (a clone outside this project\'s machines has no '
                '../shared; set DECOUPLE_JAX_SHARED_DATA to its directory to run this)')
  root = tmp_path_factory.mktemp('jpeg')
  with tarfile.open(SHARED_JPEG) as tar:
    for member in tar:
      parts = pathlib.PurePosixPath(member.name).parts
      if (member.isfile() and len(parts) == 4 and parts[1] in PER_CLASS
          and int(pathlib.PurePosixPath(parts[3]).stem) < PER_CLASS[parts[1]]):
        tar.extract(member, root, filter='data')
  return root / 'cifar10-jpeg'


def test_shared_cifar10_jpegs_load_with_their_labels(jpeg_subset):
  ds = data.load_dataset(_cfg(jpeg_subset, name='cifar10'))
  assert ds.num_classes == 10
  assert ds.train_images.shape == (200, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (100, 32, 32, 3)
  # Interleaved: image i is file i // 10 of class i % 10.
  assert ds.train_labels.tolist() == list(range(10)) * 20
  for i in (0, 57, 199):
    name = f'train/{CIFAR10[i % 10]}/{i // 10:04d}.jpg'
    with Image.open(jpeg_subset / name) as image:
      np.testing.assert_array_equal(ds.train_images[i], np.asarray(image))
  # Test image 0 of CIFAR-10, a cat, is test/cat/0000.jpg; the foolbox wheel has the original.
  cat = ds.test_images[CIFAR10.index('cat')]
  original = REPO / 'data' / 'cifar_samples' / 'cifar10_00_3.png'
  if original.is_file():
    with Image.open(original) as image:
      assert np.abs(cat.astype(int) - np.asarray(image)).mean() < 10  # JPEG noise: 4.6-7.4
