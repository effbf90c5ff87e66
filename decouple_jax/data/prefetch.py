"""Reads per-image data (e.g. searched targets) for the coming batches in a background thread.

The training loop asks for batches by dataset position; data too large to sit on the device is
read from disk at those positions and transferred while the previous steps run, so the step
does not wait for the disk. :class:`Prefetcher` knows only a ``read(positions)`` function, not
where the data lives.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable

import jax
import numpy as np


class _Failure:
  """An exception raised in the prefetch thread, on its way to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


_DONE = object()


class Prefetcher:
  """Reads batches of per-image data ahead of the consumer and puts them on the device.

  Iterating yields, in the order of ``batches``, ``(positions, arrays)``: positions the (B,)
  NumPy positions of the batch, arrays ``read(positions)`` each put on the devices. A background
  thread reads and transfers up to ``depth`` batches ahead. An exception in the thread (from
  ``batches`` or from ``read``) is raised by the consumer's next ``next()``. Use it as a
  context manager, or call :meth:`close`, so that the thread stops when the consumer stops
  early.

  Args:
    read: ``read(positions (B,) integers) -> tuple of (B, ...) host arrays``, called in the
      thread; e.g. a target store's ``read`` (see :mod:`decouple_jax.learn.student`).
    batches: iterable of (B,) integer position arrays; consumed in the background thread.
    put: ``put(host array) -> jax.Array``, how each array goes to the devices (default
      ``jax.device_put`` on the default device; e.g. assembling a batch sharded over several
      processes from each one's rows).
    depth: batches read ahead.
  """

  def __init__(self, read: Callable[[np.ndarray], tuple[np.ndarray, ...]],
               batches: Iterable[np.ndarray], *,
               put: Callable[[np.ndarray], jax.Array] = jax.device_put, depth: int = 2):
    self._read = read
    self._place = put
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._finished = False
    self._thread = threading.Thread(target=self._run, args=(batches,), daemon=True,
                                    name='prefetch')
    self._thread.start()

  def _run(self, batches: Iterable[np.ndarray]) -> None:
    try:
      for positions in batches:
        positions = np.asarray(positions)
        arrays = tuple(self._place(a) for a in self._read(positions))
        if not self._put((positions, arrays)):
          return
    except BaseException as e:  # all of them: otherwise the consumer would wait forever
      self._put(_Failure(e))
      return
    self._put(_DONE)

  def _put(self, item: Any) -> bool:
    """Queues ``item`` unless closed; False if closed."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)  # wake up now and then to notice close()
        return True
      except queue.Full:
        pass
    return False

  def __iter__(self) -> Prefetcher:
    return self

  def __next__(self) -> tuple[np.ndarray, tuple[jax.Array, ...]]:
    if self._finished:
      raise StopIteration
    item = self._queue.get()
    if item is _DONE or isinstance(item, _Failure):
      self._finished = True
      self._thread.join()
      if item is _DONE:
        raise StopIteration
      raise item.error
    return item

  def close(self) -> None:
    """Stops the thread and drops the batches read ahead; idempotent."""
    self._finished = True
    self._stop.set()
    self._thread.join()
    while not self._queue.empty():
      self._queue.get_nowait()

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
