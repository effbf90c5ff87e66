"""One writer per directory: an advisory lock that a killed process cannot leave behind.

Every entry point that writes a directory holds its lock while it runs: ``learn``'s trainer
(its workdir), a writable target store (its directory, for the store's lifetime),
``reproduce`` and ``analysis.run_analysis`` (their workdirs), and the launch scripts (their
``--workdir``). A second process on a directory in use stops at once with
:class:`DirectoryBusy`, naming the holder (pid, command, since when), instead of redoing its
work or interleaving its logs.

The lock is ``fcntl.flock`` on ``DIRECTORY/writer.lock``: the kernel drops it when the holder
exits or is killed, so no stale lock ever needs deleting. The file's contents only say who
holds it. Holds nest within one process: ``reproduce`` holding its workdir may train in a
sub-directory, and a training run started on the very directory a script already holds just
counts the hold again.

Cooperating writers: processes that split one job between them (e.g. the hosts of one
multi-process search filling one store, which serialises their commits itself and refuses a
writer of another config) take the lock with ``cooperate=True``, a shared lock. Any number of
cooperating writers may hold a directory together; an ordinary (exclusive) writer is refused
while they do, and they while it does. By default the processes of a ``jax.distributed`` run
cooperate and a lone process does not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import inspect
import json
import os
import pathlib
import sys
import threading
import time
from typing import Callable, Iterator

import jax

LOCK_FILE = 'writer.lock'


class DirectoryBusy(RuntimeError):
  """Another process is writing the directory."""


@dataclasses.dataclass
class _Held:
  file: object
  count: int


_HELD: dict[pathlib.Path, _Held] = {}
_GUARD = threading.Lock()


def _holders(path: pathlib.Path) -> str:
  try:
    lines = path.read_text().splitlines()
  except OSError:
    lines = []
  found = []
  for line in lines:
    try:
      h = json.loads(line)
      found.append(f"pid {h['pid']} ({h['command']}, since {h['since']})")
    except (ValueError, KeyError, TypeError):
      continue
  return '; '.join(found) or 'a process that has not yet said who it is'


def acquire(directory: str | os.PathLike, *, cooperate: bool | None = None) -> pathlib.Path:
  """Takes the writer lock of ``directory`` (created if needed), or raises at once.

  Args:
    directory: the directory to write.
    cooperate: share the lock with other cooperating writers (see the module docstring);
      None: when this process is one of several of a ``jax.distributed`` run.

  Returns:
    The lock's key, for :func:`release`.

  Raises:
    DirectoryBusy: another process holds the lock (in the other mode, or exclusively).
  """
  if cooperate is None:
    cooperate = jax.process_count() > 1
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  key = directory.resolve()
  with _GUARD:
    held = _HELD.get(key)
    if held is not None:
      held.count += 1
      return key
    f = open(key / LOCK_FILE, 'a+')
    try:
      fcntl.flock(f, (fcntl.LOCK_SH if cooperate else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
      f.close()
      raise DirectoryBusy(f'{directory} is in use by {_holders(key / LOCK_FILE)}: wait for '
                          'it to finish, stop it, or use another directory') from None
    me = json.dumps({'pid': os.getpid(), 'command': ' '.join(sys.argv) or sys.executable,
                     'since': time.strftime('%Y-%m-%d %H:%M:%S')})
    if not cooperate:
      f.truncate(0)
    f.write(me + '\n')
    f.flush()
    _HELD[key] = _Held(f, 1)
  return key


def release(key: pathlib.Path) -> None:
  """Undoes one :func:`acquire`; the lock goes with the last one."""
  with _GUARD:
    held = _HELD[key]
    held.count -= 1
    if held.count == 0:
      del _HELD[key]
      held.file.close()  # closing the file drops the flock


@contextlib.contextmanager
def hold(directory: str | os.PathLike, *, cooperate: bool | None = None) -> Iterator[None]:
  """``with hold(directory):`` holds its writer lock (see :func:`acquire`)."""
  key = acquire(directory, cooperate=cooperate)
  try:
    yield
  finally:
    release(key)


def holding(argument: str) -> Callable[[Callable], Callable]:
  """Decorates a function to hold the writer lock of its directory ``argument`` while it
  runs, e.g. ``@holding('workdir')``."""
  def decorate(fn):
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      with hold(signature.bind(*args, **kwargs).arguments[argument]):
        return fn(*args, **kwargs)
    return wrapped
  return decorate
