"""What every launch script shares: ``--help`` lists the configs' variants, a bad flag, a
known library error or an OS error (a path not writable, a full disk, a directory deleted
mid-run) ends in one clear line, as do warnings and Ctrl-C, ``--workdir`` is held for the run,
and ``--distributed`` makes the script one process of several (``jax.distributed``).

Launch support only: the library never imports this module.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging as pylogging
import pathlib
import sys
import warnings

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from decouple_jax import config as cfglib
from decouple_jax import config_files
from decouple_jax import distributed
from decouple_jax import locks
from decouple_jax.config import ConfigError
from decouple_jax.data import DataError
from decouple_jax.learn.trainer import TrainError
from decouple_jax.runlog import RecordError
from decouple_jax.search.target_store import StoreError

# Errors whose message already says what is wrong and how to fix it.
KNOWN_ERRORS = (ConfigError, DataError, StoreError, TrainError, RecordError,
                locks.DirectoryBusy)
# What to do about an OS error, by errno; every fix ends with running the command again, which
# resumes (finished work is kept).
_AGAIN = 'then run the same command again (finished work is kept)'
_OS_FIXES = {
    **dict.fromkeys((errno.EACCES, errno.EPERM, errno.EROFS),
                    f'make it writable or choose another path (e.g. another --workdir), {_AGAIN}'),
    **dict.fromkeys((errno.EEXIST, errno.ENOTDIR),
                    'a file is where a directory must be: move it or choose another path (e.g. '
                    f'another --workdir), {_AGAIN}'),
    errno.ENOENT: f'it was deleted or unmounted while in use, or never existed: check it, {_AGAIN}',
    **dict.fromkeys((errno.ENOSPC, errno.EDQUOT),
                    f'the disk is full: free space on it or use a directory on a bigger disk, '
                    f'{_AGAIN}'),
}
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


def experiment_flags(workdir_help: str = 'Run directory (resumed if it exists).'):
  """Defines the two flags every launch script takes, both required: ``--config`` (a
  ``configs/*.py`` file:variant, with ``--config.a.b=value`` overrides) and ``--workdir``.

  Returns:
    (a function returning the parsed config as an :class:`~decouple_jax.config.ExperimentConfig`,
    the ``--workdir`` flag holder).
  """
  config = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file:variant.')
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  flags.mark_flags_as_required(['config', 'workdir'])
  return (lambda: cfglib.from_dict(cfglib.ExperimentConfig, config.value)), workdir


def variants_help(configs: pathlib.Path) -> str:
  """The config files in ``configs`` and their variants, one line each."""
  lines = ['', "configs (--config=FILE:VARIANT; each file's docstring describes them):"]
  for path in sorted(configs.glob('*.py')):
    module = config_files.load_module(path)
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


def _check_config_flags(argv: list[str], configs: pathlib.Path) -> None:
  """Exits with one line if ``--config`` names no file (listing those in ``configs``) or an
  unknown variant, or an override ``--config.a.b=...`` names no field; config_flags would bury
  these in a traceback."""
  value = _flag_value(argv, 'config')
  if value is None:
    return
  file = value.partition(':')[0]
  if not pathlib.Path(file).is_file():
    known = ', '.join(str(p.relative_to(configs.parent)) for p in sorted(configs.glob('*.py')))
    sys.exit(f'error: --config={value}: no such file {file}; the configs are {known} (--help '
             'lists their variants)')
  try:
    config = config_files.load(value)
  except ConfigError as e:
    sys.exit(f'error: --config={value}: {e}')
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
  # The launch scripts and configs/ sit side by side in the repository, while the package may
  # be installed anywhere (a wheel in site-packages), so configs/ is found from the script.
  configs = pathlib.Path(argv[0]).resolve().parents[1] / 'configs'
  if any(arg in _HELP for arg in argv[1:]):
    app.usage(shorthelp='--helpfull' not in argv, writeto_stdout=True)
    if 'config' in flags.FLAGS:
      print(variants_help(configs))
    sys.exit(0)
  _check_config_flags(argv[1:], configs)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {str(e).strip().splitlines()[0]} (--help lists the flags)')


def _os_error(e: BaseException) -> OSError | None:
  """The OS error that caused ``e`` (``e`` itself, or one it was raised from), if any."""
  while e is not None and not isinstance(e, OSError):
    e = e.__cause__ or e.__context__
  return e


def _os_error_line(e: OSError, workdir: str | None) -> str:
  """One line on an OS error: the path, what the OS said, and the fix."""
  if e.filename:
    where = str(e.filename) + (f' -> {e.filename2}' if e.filename2 else '')
  else:
    where = f'a file the OS did not name (--workdir {workdir})'
  fix = _OS_FIXES.get(e.errno, f'fix it, {_AGAIN}')
  return f'error: {where}: {e.strerror or e}; {fix}'


def _one_line_warning(message, category, *_args, **_kwargs) -> str:
  return f'warning: {message}\n'


class _OneLineLogs(pylogging.Filter):
  """Log records (Orbax's) in one line each, without tracebacks: a failure a library logs
  with its traceback (e.g. a full disk in a background save) also reaches the edge, which
  reports it in one line or, if unknown, re-raises it with its traceback."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    record.msg, record.args = record.getMessage().strip().split('\n', 1)[0], ()
    record.exc_info = record.exc_text = record.stack_info = None
    return True


def _guarded(main):
  """``main`` holding ``--workdir`` (if the script has one; shared by the processes of a
  ``--distributed`` run), with known library errors and OS errors ending in one line (exit
  status 1), a Ctrl-C in one line (status 130), and warnings in one line each."""
  @functools.wraps(main)
  def wrapped(argv):
    # Orbax reports every save at INFO; progress bars already say what is happening.
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_OneLineLogs())
    warnings.formatwarning = _one_line_warning
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
    except KeyboardInterrupt:
      print('interrupted: run the same command again to resume', file=sys.stderr)
      sys.exit(130)
    except Exception as e:  # pylint: disable=broad-except
      os_error = _os_error(e)
      if os_error is None:
        raise
      sys.exit(_os_error_line(os_error, workdir))
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
