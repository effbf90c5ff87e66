"""What every launch script shares: ``--help`` lists the configs' variants, a bad flag or a
known library error ends in one clear line, ``--workdir`` is held for the run, and
``--distributed`` makes the script one process of several (``jax.distributed``).

Launch support only: the library never imports this module.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from decouple_jax import distributed
from decouple_jax import locks
from decouple_jax.config import ConfigError
from decouple_jax.data import DataError
from decouple_jax.learn.trainer import TrainError
from decouple_jax.runlog import RecordError
from decouple_jax.search.store import StoreError

# Errors whose message already says what is wrong and how to fix it.
KNOWN_ERRORS = (ConfigError, DataError, StoreError, TrainError, RecordError,
                locks.DirectoryBusy)
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
_HELP = ('-h', '-?', '--help', '--helpshort', '--helpfull')

_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Run as one of several processes (jax.distributed.initialize, one '
    'process per host): on Cloud TPU, Slurm or Open MPI nothing else is needed; elsewhere give '
    '--coordinator, --num_processes and --process_id. --workdir must be on a filesystem every '
    'process shares.')
_COORDINATOR = flags.DEFINE_string('coordinator', None,
                                   'host:port of process 0, reachable by every process.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'How many processes run the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.')


def _load_config_file(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f'decouple_jax_cli_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def variants_help(configs: pathlib.Path = CONFIGS) -> str:
  """The config files in ``configs`` and their variants, one line each."""
  lines = ['', "configs (--config=FILE:VARIANT; each file's docstring describes them):"]
  for path in sorted(configs.glob('*.py')):
    module = _load_config_file(path)
    lines.append(f'  {path.relative_to(configs.parent)}: {", ".join(module.VARIANTS)}')
  return '\n'.join(lines)


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of ``--name=value`` or ``--name value`` in ``argv``, the last one given."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _check_config_flags(argv: list[str]) -> None:
  """Exits with one line if ``--config`` names no file or an unknown variant, or an override
  ``--config.a.b=...`` names no field; config_flags would bury these in a traceback."""
  value = _flag_value(argv, 'config')
  if value is None:
    return
  file, colon, variant = value.partition(':')
  path = pathlib.Path(file)
  if not path.is_file():
    known = ', '.join(str(p.relative_to(CONFIGS.parent)) for p in sorted(CONFIGS.glob('*.py')))
    sys.exit(f'error: --config={value}: no such file {file}; the configs are {known} (--help '
             'lists their variants)')
  module = _load_config_file(path)
  variants = getattr(module, 'VARIANTS', None)
  if (variant or colon) and variants is not None and variant not in variants:
    # An empty variant (an unset shell variable) would reach get_config('') in config_flags.
    what = f'unknown variant {variant!r}' if variant else 'no variant after the colon'
    sys.exit(f'error: --config={value}: {what}; {file} has {", ".join(variants)}')
  config = module.get_config(*([variant] if variant else []))
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    node, where = config, 'config'
    for key in arg[len('--config.'):].split('=', 1)[0].split('.'):
      if not hasattr(node, 'keys') or key not in node:
        fields = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else 'none'
        sys.exit(f'error: {arg}: {where} has no field {key!r}; its fields: {fields}')
      node, where = node[key], f'{where}.{key}'


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flags parser, with ``--help`` that exits 0 and one-line flag errors."""
  if any(arg in _HELP for arg in argv[1:]):
    app.usage(shorthelp='--helpfull' not in argv, writeto_stdout=True)
    if 'config' in flags.FLAGS:
      print(variants_help())
    sys.exit(0)
  _check_config_flags(argv[1:])
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {str(e).strip().splitlines()[0]} (--help lists the flags)')


def _guarded(main):
  """``main`` holding ``--workdir`` (if the script has one; shared by the processes of a
  ``--distributed`` run), with known library errors ending in one line (exit status 1)."""
  @functools.wraps(main)
  def wrapped(argv):
    # Orbax reports every save at INFO; progress bars already say what is happening.
    logging.set_verbosity(logging.WARNING)
    if _DISTRIBUTED.value:
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value) != (None,) * 3:
      sys.exit('error: --coordinator, --num_processes and --process_id need --distributed')
    workdir = flags.FLAGS['workdir'].value if 'workdir' in flags.FLAGS else None
    try:
      with _holding(pathlib.Path(workdir)) if workdir else contextlib.nullcontext():
        return main(argv)
    except KNOWN_ERRORS as e:
      sys.exit(f'error: {type(e).__name__}: {e}')
  return wrapped


@contextlib.contextmanager
def _holding(workdir: pathlib.Path):
  """Holds ``workdir``; if this run made it and fails before writing anything into it (e.g.
  a refused config), it removes it again, with the parents it made."""
  made = [d for d in (workdir, *workdir.parents) if not d.exists()]
  with locks.hold(workdir):
    try:
      yield
    except BaseException:
      if made and [p.name for p in workdir.iterdir()] == [locks.LOCK_FILE]:
        (workdir / locks.LOCK_FILE).unlink()
        with contextlib.suppress(OSError):  # another writer may have taken it meanwhile
          for d in made:
            d.rmdir()
      raise


def run(main) -> None:
  """``absl.app.run(main)`` for a launch script (see the module docstring)."""
  app.run(_guarded(main), flags_parser=_parse_flags)
