"""Test setup: 8 emulated CPU devices (set before JAX starts) and the repo's real data."""

import os
import pathlib
import shutil
import tempfile

import pytest

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One XLA compilation cache for the session, inherited by the launch scripts the tests run as
# subprocesses: they compile the same tiny programs as the tests in this process, and on 2
# cores compiling is most of their time.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='decouple_jax_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


def pytest_unconfigure(config):
  del config
  if '_CACHE' in globals():
    shutil.rmtree(_CACHE, ignore_errors=True)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def mnist_dir() -> pathlib.Path:
  """The real MNIST files fetched by `make data`."""
  d = REPO / 'data' / 'mnist'
  if not (d / 'train-images-idx3-ubyte.gz').exists():
    pytest.fail(f'real MNIST is missing from {d}: run `make data` first')
  return d
