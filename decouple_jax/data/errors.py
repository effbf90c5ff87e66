"""The one exception type of the data package."""

from __future__ import annotations

import pathlib


class DataError(Exception):
  """A data set that cannot be obtained or read.

  The message always names the problem and how to fix it, so launch scripts can print it as is
  instead of a traceback.
  """


def missing_files(directory: pathlib.Path, missing: list[str], obtain: str) -> DataError:
  """The error for files a source needs but ``directory`` lacks; ``obtain`` says how to get
  them."""
  return DataError(f'{directory}: missing {", ".join(missing)}. {obtain}')
