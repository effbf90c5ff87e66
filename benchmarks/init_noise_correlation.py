"""How much of an image survives the search's initial noise, per data set and noise scale.

The search starts from noisy copies of the normalised image (``search.init_noise`` times each
channel's std, white noise). The whitening stem then scales each 2x2 patch component by
1/sqrt(eigenvalue + eps): natural images have little energy in their high-frequency
components, so those are amplified most, and white noise has as much energy there as anywhere.
This prints, per data set and noise scale, the correlation between a noisy copy's block
activations and the clean image's in the untrained search network (1 - anchor_distance / 2,
mean over images): what the search's first population still holds of the image.

  .venv/bin/python benchmarks/init_noise_correlation.py --cifar10_dir=DIR --cifar10_source=folder

Seconds on a CPU. A data set whose files are missing is skipped with the reason.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import models
from decouple_jax.search import operators

REPO = pathlib.Path(__file__).resolve().parents[1]


def correlations(ds: datalib.Dataset, model_cfg: cfglib.ModelConfig, noises, images: int,
                 seed: int = 0) -> dict[float, list[float]]:
  """noise scale -> mean correlation per block between noisy and clean activations."""
  model, variables = models.init_for_dataset(model_cfg, ds, seed)
  x = datalib.normalize(ds.train_images[:images], ds.mean, ds.std)
  forward = jax.jit(lambda h: model.apply(variables, h, use_running_average=True)[:-1])
  clean = forward(x)
  distance = jax.vmap(lambda h, ref: operators.anchor_distance(h[None], ref, 1e-5)[0])
  draws = jax.random.normal(jax.random.key(seed), x.shape)
  out = {}
  for noise in noises:
    noisy = forward(x + noise * operators.spread(x) * draws)
    out[noise] = [float(1 - distance(n, c).mean() / 2) for n, c in zip(noisy, clean)]
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--mnist_dir', default=str(REPO / 'data' / 'mnist'))
  parser.add_argument('--cifar10_dir', default=str(REPO / 'data' / 'cifar10'))
  parser.add_argument('--cifar10_source', default='files')
  parser.add_argument('--width', type=int, default=32)
  parser.add_argument('--images', type=int, default=64)
  args = parser.parse_args(argv)
  noises = (0.1, 0.03, 0.01)
  model_cfg = cfglib.ModelConfig(widths=(args.width,) * 3, whiten_images=2000)
  print('| data | initial noise | correlation of block 0 / 1 / 2 with the clean image |')
  print('|---|---|---|')
  for name, directory, source in (('mnist', args.mnist_dir, 'files'),
                                  ('cifar10', args.cifar10_dir, args.cifar10_source)):
    try:
      ds = datalib.load_dataset(cfglib.DataConfig(name=name, dir=directory, source=source,
                                                  holdout=0, train_limit=2000))
    except (datalib.DataError, cfglib.ConfigError) as e:
      print(f'| {name} | skipped: {e} | |')
      continue
    for noise, corr in correlations(ds, model_cfg, noises, args.images).items():
      print(f'| {name} | {noise} | {" / ".join(f"{c:.2f}" for c in corr)} |')


if __name__ == '__main__':
  main(sys.argv[1:])
