"""Runs of more than one process (``jax.distributed``): who does what, and who writes.

JAX's multi-controller model runs the same program in every process (one per host, each with
its own devices). In this library:

* a search splits its store's missing chunks between the processes (:func:`share`, after
  :func:`agree` gives them one view of what is missing); every process searches its chunks on
  its own devices and commits them to the shared store itself;
* training runs one data-parallel step over every process's devices; files that describe the
  run (metrics, results, summaries) are written by the main process only (:func:`is_main`),
  checkpoints by Orbax, which coordinates the processes itself.

With one process every function here is trivial, so single-process code paths are the same.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """``jax.distributed.initialize``, with gloo collectives when the devices are CPUs.

  Call it before anything else touches JAX. On Cloud TPU, Slurm and Open MPI every argument
  may be left out (JAX detects them); elsewhere give all three: the address ``host:port`` of
  process 0, which every process can reach, the number of processes, and this one's id.
  """
  # CPU collectives are off by default; gloo runs them over TCP (a no-op on accelerators).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator, num_processes, process_id)


def is_main() -> bool:
  """True in the process that writes the run's own files (process 0)."""
  return jax.process_index() == 0


def share(items: list) -> list:
  """This process's share of ``items`` (every process must pass the same list): every
  ``process_count()``-th one, starting at its index, so shares differ by at most one."""
  return items[jax.process_index()::jax.process_count()]


def agree(mask: np.ndarray) -> np.ndarray:
  """Process 0's value of a boolean array, in every process (for one view of a shared
  directory that the processes read at slightly different times)."""
  if jax.process_count() == 1:
    return mask
  return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(mask, np.int32))) > 0


def total(n: int) -> int:
  """The sum of ``n`` over the processes."""
  if jax.process_count() == 1:
    return n
  return int(np.sum(multihost_utils.process_allgather(np.asarray(n, np.int64))))


def local_rows(sharding: jax.sharding.Sharding, n: int) -> slice:
  """The rows of an (n, ...) array sharded by ``sharding`` over its first axis that this
  process's devices hold (one block: a 1-D mesh lists each process's devices together)."""
  blocks = [index[0].indices(n)[:2] for index in sharding.addressable_devices_indices_map(
      (n,)).values()]
  start, stop = min(b[0] for b in blocks), max(b[1] for b in blocks)
  if sum(b - a for a, b in set(blocks)) != stop - start:
    raise ValueError(f'the rows of this process are not one block: {sorted(set(blocks))}')
  return slice(start, stop)


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier of this ``name``."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
