"""One process of test_distributed.py's two-process run (``jax.distributed`` on a loopback
coordinator, gloo collectives): it searches its share of a tiny store and trains a tiny SGD
run, both in directories the two processes share, and saves the variables it was returned.

  python tests/distributed_worker.py COORDINATOR PROCESS_ID MNIST_DIR WORKDIR
"""

import dataclasses
import pathlib
import sys

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data
from decouple_jax import distributed
from decouple_jax.learn import sgd
from decouple_jax.search import driver

DATA = dict(train_limit=96, holdout=64, test_limit=64)
SEARCH = cfglib.SearchConfig(
    model=cfglib.ModelConfig(widths=(4, 4, 4), whiten_images=64),
    layers={name: dataclasses.replace(l, generations=g)
            for (name, l), g in zip(cfglib.PAPER_SCHEDULE.items(), (2, 1, 1, 1))},
    population=12, top_k=2, n_explore=4, n_refine=6, batch_images=4, chunk_size=32)
# A larger BatchNorm eps: MNIST's batch-constant channels would amplify the two runs'
# different float reduction orders by ~1/sqrt(eps).
SGD = cfglib.SGDConfig(
    model=cfglib.ModelConfig(widths=(4, 4, 4), convs_per_block=2, whiten_images=64, bn_eps=1e-3),
    train=cfglib.TrainConfig(optim=cfglib.OptimConfig(batch_size=48, epochs=2, clip_norm=2.0),
                             eval_batch=64, flip=False))


def data_config(mnist_dir) -> cfglib.DataConfig:
  return cfglib.DataConfig(dir=str(mnist_dir), **DATA)


def main(coordinator: str, process_id: str, mnist_dir: str, workdir: str) -> None:
  distributed.initialize(coordinator, 2, int(process_id))
  workdir = pathlib.Path(workdir)
  data_cfg = data_config(mnist_dir)
  ds = data.load_dataset(data_cfg)
  driver.run_search(data_cfg, SEARCH, workdir / 'targets', ds=ds)
  results = sgd.train_sgd(data_cfg, SGD, workdir / 'sgd', ds=ds)
  np.savez(workdir / f'variables{process_id}.npz', *jax.tree.leaves(results['variables']))


if __name__ == '__main__':
  main(*sys.argv[1:])
