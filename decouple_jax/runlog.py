"""Run records: JSON-lines metrics, atomic JSON files, progress bars."""

from __future__ import annotations

import json
import os
import pathlib
import sys
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
  """Appends one JSON record per line; ``keep(pred)`` drops records a resumed run will redo."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)

  def records(self) -> list[dict]:
    if not self.path.exists():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

  def keep(self, pred) -> None:
    kept = [r for r in self.records() if pred(r)]
    tmp = self.path.with_suffix('.tmp')
    tmp.write_text(''.join(json.dumps(r) + '\n' for r in kept))
    os.replace(tmp, self.path)

  def write(self, record: dict) -> None:
    with self.path.open('a') as f:
      f.write(json.dumps(_plain(record)) + '\n')


def progress(iterable: Iterable | None = None, **kwargs) -> tqdm.tqdm:
  """A tqdm bar (with ETA) on stderr; quiet under pytest to keep test logs readable."""
  kwargs.setdefault('disable', 'pytest' in sys.modules)
  kwargs.setdefault('dynamic_ncols', True)
  kwargs.setdefault('mininterval', 1.0)
  return tqdm.tqdm(iterable, **kwargs)
