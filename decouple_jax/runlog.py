"""Run records: JSON-lines metrics, atomic JSON files, progress bars."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import sys
import warnings
from typing import Any, Iterable

import numpy as np
import tqdm


def _plain(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, (np.generic, np.ndarray)) or hasattr(x, '__array__'):
    arr = np.asarray(x)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as JSON atomically (temp file + rename): a kill never leaves half a file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + '.tmp')
  tmp.write_text(json.dumps(_plain(obj), indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
  return json.loads(pathlib.Path(path).read_text())


class JsonLines:
  """Appends one JSON record per line; ``keep(pred)`` drops records a resumed run will redo.

  A kill can tear the last line (a record written in part). Reading drops such a line with a
  warning, and the next write first cuts it off, so a torn record never merges with the next.
  A broken line anywhere else means a damaged file and raises :class:`RecordError`.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)

  def records(self) -> list[dict]:
    if not self.path.exists():
      return []
    lines = self.path.read_text().split('\n')
    records = []
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        if i < len(lines) - 1:  # a complete line: not a kill's doing
          raise RecordError(f'{self.path}, line {i + 1}: not a JSON record ({e}); the file is '
                            f'damaged: delete it or that line') from e
        warnings.warn(f'{self.path}: dropped a torn last line (a run was killed while writing '
                      f'it): {line[:80]!r}', stacklevel=2)
    return records

  def keep(self, pred) -> None:
    kept = [r for r in self.records() if pred(r)]
    tmp = self.path.with_suffix('.tmp')
    tmp.write_text(''.join(json.dumps(r) + '\n' for r in kept))
    os.replace(tmp, self.path)

  def write(self, record: dict) -> None:
    with self.path.open('a+b') as f:
      # Processes sharing one log (those of a multi-process search) append in turn, so none
      # takes another's half-written line for a torn one.
      fcntl.flock(f, fcntl.LOCK_EX)
      size = f.seek(0, os.SEEK_END)
      if size:
        f.seek(size - 1)
        if f.read(1) != b'\n':
          self.records()  # warns about the torn line
          f.seek(0)
          f.truncate(f.read().rfind(b'\n') + 1)
      f.write((json.dumps(_plain(record)) + '\n').encode())


class RecordError(ValueError):
  """A JSON-lines file with a broken record that is not its last line."""


class Progress(tqdm.tqdm):
  """A tqdm bar whose rate and ETA count from :meth:`start_clock`, by default its first
  update: the first step of a jitted loop includes its compilation."""

  _clock_started = False

  def start_clock(self) -> None:
    """Restarts rate and ETA from now and the current count (once; later calls do nothing)."""
    if self._clock_started:
      return
    self._clock_started = True
    n = self.n
    self.reset()
    self.n = self.initial = self.last_print_n = n
    self.refresh()

  def update(self, n: float = 1) -> bool | None:
    shown = super().update(n)
    self.start_clock()
    return shown


def progress(iterable: Iterable | None = None, **kwargs) -> Progress:
  """A :class:`Progress` bar on stderr; quiet under pytest to keep test logs readable."""
  kwargs.setdefault('disable', 'pytest' in sys.modules)
  kwargs.setdefault('dynamic_ncols', True)
  kwargs.setdefault('mininterval', 1.0)
  return Progress(iterable, **kwargs)
