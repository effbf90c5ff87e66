"""CIFAR-100 configs: those of configs/cifar10.py on CIFAR-100 (fine labels by default).

Put ``cifar-100-python.tar.gz`` (or the binary archive) in ``data/cifar100``; coarse labels
with ``--config.data.cifar100_labels=coarse``.

  python launch/reproduce.py --config=configs/cifar100.py:paper --workdir=runs/cifar100
"""

import pathlib

from decouple_jax import config_files

# configs/ is not a package (it is not installed): load the sibling file by path.
_cifar10 = config_files.load_module(pathlib.Path(__file__).with_name('cifar10.py'))
VARIANTS = _cifar10.VARIANTS


def get_config(arg: str = 'cpu'):
  return _cifar10.get_config(arg, name='cifar100')
