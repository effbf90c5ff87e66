"""Test setup: 8 emulated CPU devices (set before JAX starts) and the repo's real data."""

import os
import pathlib

import pytest

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def mnist_dir() -> pathlib.Path:
  """The real MNIST files fetched by `make data`."""
  d = REPO / 'data' / 'mnist'
  if not (d / 'train-images-idx3-ubyte.gz').exists():
    pytest.fail(f'real MNIST is missing from {d}: run `make data` first')
  return d
