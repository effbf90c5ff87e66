"""How much search compute stopping an image's layer early could save: measured before building it.

The idea (gap study, issue "close the gap"): once an image's best loss at a layer falls below a
threshold, stop that image's layer and spend the generations elsewhere. The search is
``vmap`` over a batch of images, so a generation is paid for the whole batch until the LAST
image of the batch stops: the saving is set by the slowest image of each batch, not the mean.

This searches ``--images`` training images with a gap-study arm's config, reads each layer's
curve (best loss after each generation) and prints, per layer and threshold: the share of
images that reach the threshold, the generations an image would use on average, and the
generations a batch of ``--batch`` images would still run (what the compute would be).

  .venv/bin/python benchmarks/early_stop_headroom.py [--arm=noise_g4_100] [--images=256] \\
      [--batch=64] [--thresholds=0.5,0.1,0.01]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import jax
import numpy as np

from gap_study import ARMS, arm_config, load_base
from decouple_jax import data as datalib
from decouple_jax.analysis import scaling


def generations_used(curve: np.ndarray, threshold: float) -> np.ndarray:
  """Generations each image needs to reach ``threshold``; all G if it never does.

  Args:
    curve: (N, G) best loss after each generation.
  Returns:
    (N,) int, in 1..G.
  """
  below = curve < threshold
  return np.where(below.any(1), below.argmax(1) + 1, curve.shape[1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--arm', default='noise_g4_100', choices=sorted(ARMS))
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--thresholds', default='0.5,0.1,0.01')
  args = parser.parse_args(argv)
  if args.images % args.batch:
    raise SystemExit(f'--images={args.images} must be a multiple of --batch={args.batch}')
  thresholds = [float(t) for t in args.thresholds.split(',')]
  exp = arm_config(load_base(5000, 1000), ARMS[args.arm][1])
  ds = datalib.load_dataset(exp.data)
  n = args.images
  curves = scaling.Searcher(exp.search, ds, n, mesh=None)(exp.search)['curves']
  print(f'arm {args.arm}, {n} MNIST training images, batches of {args.batch}; machine '
        f'{platform.node()} ({os.cpu_count()} cores), jax {jax.__version__}, '
        f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n')
  print('| layer | G | final best loss: mean / median | threshold | images reaching it | '
        'mean gens per image | gens per batch |')
  print('|---|---|---|---|---|---|---|')
  for layer, curve in enumerate(curves):
    curve = np.asarray(curve)
    g = curve.shape[1]
    for t in thresholds:
      used = generations_used(curve, t)
      per_batch = used.reshape(-1, args.batch).max(1)
      print(f'| {layer} | {g} | {curve[:, -1].mean():.3f} / {np.median(curve[:, -1]):.3f} | '
            f'{t} | {(curve < t).any(1).mean():.0%} | {used.mean():.1f} | '
            f'{per_batch.mean():.1f} |')


if __name__ == '__main__':
  main(sys.argv[1:])
