"""Data sets from local files: sources, loading, splitting, fetching, augmentation.

docs/data.md says where each data set comes from, how it is checked and what its files hold;
:mod:`decouple_jax.data.sources` how a new source registers.
"""

from decouple_jax.data.augment import Views
from decouple_jax.data.augment import augment
from decouple_jax.data.augment import crop_with_offsets
from decouple_jax.data.augment import flip_with_mask
from decouple_jax.data.augment import follow_views
from decouple_jax.data.augment import normalize
from decouple_jax.data.augment import random_crop
from decouple_jax.data.augment import random_flip
from decouple_jax.data.augment import random_flips
from decouple_jax.data.augment import random_offsets
from decouple_jax.data.cifar import read_cifar_archive
from decouple_jax.data.datasets import Dataset
from decouple_jax.data.datasets import fingerprint
from decouple_jax.data.datasets import identity
from decouple_jax.data.datasets import load_dataset
from decouple_jax.data.errors import DataError
from decouple_jax.data.fetch import fetch_mnist
from decouple_jax.data.prefetch import Prefetcher
from decouple_jax.data.sources import Arrays
from decouple_jax.data.sources import Source
from decouple_jax.data.sources import get_source
from decouple_jax.data.sources import register_source
from decouple_jax.data.splits import split_holdout

__all__ = [
    'Arrays',
    'DataError',
    'Dataset',
    'Prefetcher',
    'Source',
    'Views',
    'augment',
    'crop_with_offsets',
    'fetch_mnist',
    'fingerprint',
    'flip_with_mask',
    'follow_views',
    'get_source',
    'identity',
    'load_dataset',
    'normalize',
    'random_crop',
    'random_flip',
    'random_flips',
    'random_offsets',
    'read_cifar_archive',
    'register_source',
    'split_holdout',
]
