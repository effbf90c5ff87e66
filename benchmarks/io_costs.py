"""What reading data and checking stores cost: the image-folder source's first (decoding) and
cached loads, and the target store's chunk verification when a search resumes a store.

  .venv/bin/python benchmarks/io_costs.py --folder=DIR     # DIR/{train,test}/<class>/*.jpg
  .venv/bin/python benchmarks/io_costs.py --store_mb=512   # without a folder: the store only

The folder loads use a fresh cache directory (``XDG_CACHE_HOME``), so the first is cold for
the cache, though the files themselves may sit in the OS page cache. The store is made-up
float32 targets written through the store's own writer; opening it for writing checks every
finished chunk's crc32, which is what a resuming search pays.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax.search import target_store


def folder_loads(directory: str, name: str) -> tuple[float, float]:
  """Seconds of the first and of the cached ``load_dataset`` of an image folder."""
  cfg = cfglib.DataConfig(name=name, dir=directory, source='folder')
  times = []
  with tempfile.TemporaryDirectory() as cache:
    os.environ['XDG_CACHE_HOME'] = cache
    for _ in range(2):
      t0 = time.perf_counter()
      datalib.load_dataset(cfg)
      times.append(time.perf_counter() - t0)
  return times[0], times[1]


def store_verification(megabytes: int, chunks: int = 8) -> tuple[float, float]:
  """(bytes verified, seconds) of opening a complete float32 store of about ``megabytes`` for
  writing, which checks every chunk's checksum."""
  per_image = (15 * 15 * 256 + 10) * 4
  n = max(chunks, megabytes * 2**20 // per_image // chunks * chunks)
  shapes = ((15, 15, 256), (10,))
  spec = target_store.StoreSpec(shapes=shapes, dtype='float32', num_images=n,
                                chunk_size=n // chunks, config_hash='io', data_name='bench',
                                seed=0, index_hash=target_store.indices_hash(np.arange(n)))
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as d:
    st = target_store.TargetStore.create_or_open(d, spec, np.arange(n))
    for c in range(st.num_chunks):
      start, stop = st.chunk_range(c)
      st.write_chunk(c, [rng.normal(size=(stop - start, *s)).astype(np.float32)
                         for s in shapes], np.zeros((stop - start, 2), np.float32),
                     np.zeros(stop - start, np.float32))
    t0 = time.perf_counter()
    target_store.TargetStore.create_or_open(d, spec, np.arange(n))
    return n * per_image, time.perf_counter() - t0


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--folder', default='', help='an image folder to load (skipped if empty)')
  parser.add_argument('--name', default='cifar10', help="its data.name ('cifar10', ...)")
  parser.add_argument('--store_mb', type=int, default=512)
  args = parser.parse_args(argv)
  if args.folder:
    first, cached = folder_loads(args.folder, args.name)
    print(f'folder {pathlib.Path(args.folder).name}: first load {first:.1f} s, '
          f'cached {cached:.1f} s')
  size, seconds = store_verification(args.store_mb)
  print(f'store: {size / 2**20:.0f} MB verified in {seconds:.2f} s '
        f'({size / 2**30 / seconds:.1f} GB/s) on opening for writing')


if __name__ == '__main__':
  main(sys.argv[1:])
