"""What every launch script shares: known errors become one clear line, not a traceback."""

from __future__ import annotations

import functools
import sys

from absl import logging

from decouple_jax.config import ConfigError
from decouple_jax.data import DataError
from decouple_jax.learn.trainer import TrainError
from decouple_jax.search.store import StoreError

# Errors whose message already says what is wrong and how to fix it.
KNOWN_ERRORS = (ConfigError, DataError, StoreError, TrainError)


def run_cli(main):
  """Wraps an absl ``main`` so a known library error exits with status 1 and its message."""
  @functools.wraps(main)
  def wrapped(argv):
    # Orbax reports every save at INFO; progress bars already say what is happening.
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except KNOWN_ERRORS as e:
      sys.exit(f'error: {type(e).__name__}: {e}')
  return wrapped
