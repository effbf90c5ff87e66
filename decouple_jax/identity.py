"""What identifies a run, and whether it is finished: one answer for every kind of run.

A run's *identity* is a JSON-ready dict of everything its result depends on: the data by
content (:func:`decouple_jax.data.identity`, so moved files keep their runs) and config
dataclasses as :func:`of` records them, without their speed-only fields
(:data:`decouple_jax.config.SPEED_ONLY`: ``search.batch_images``, ``model.conv_impl``,
``train.checkpoint_every``, ``student.device_targets_gb``). Its :func:`hash_of` names the run.

A finished run leaves a JSON *record* holding its identity (``config``) and hash
(``config_hash``) beside its results; :func:`finished` reads it back: the record if the run is
this identity's and finished, None if there is none yet, and a :class:`~decouple_jax.config.
ConfigError` naming the settings that differ if it is another run's. The kinds of run:

  search store      identity ``StoreId.config()`` (:mod:`decouple_jax.search.store_ids`), built
                    on :func:`of`; record ``STORE/summary.json``
  SGD run           :func:`sgd`; record ``WORKDIR/results.json`` (a checkpoint records it too,
                    checked on resume with :func:`check_same`)
  student run       :func:`student`; record ``WORKDIR/results.json``, as SGD
  feedback round    :func:`feedback_round`; record ``round{r}/round.json``
  reproduce         its sub-runs: stores and training runs, each as above
  scaling point     a student (:func:`decouple_jax.analysis.scaling.accuracy_vs_compute`)
  gap-study row     :func:`hash_of` over :func:`of` the arm's data, search and student configs
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import runlog


def of(cfg) -> dict[str, Any]:
  """Config dataclass ``cfg`` as a JSON-ready dict of what changes its runs' results.

  Speed-only fields are recorded at their defaults: any value gives one identity, and a run
  made before they were marked keeps its own. Fields added later
  (:data:`decouple_jax.config.ADDED_LATER`: a search's ``network_seed`` and ``average_of``)
  are recorded only away from their defaults, the one computation there was before them, so
  the runs made before them keep their identity.
  """
  out = {}
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    default = cfglib.field_default(type(cfg), field.name)
    if field.metadata.get(cfglib.SPEED_ONLY):
      value = default
    elif field.metadata.get(cfglib.ADDED_LATER) and value == default:
      continue
    out[field.name] = _value(value)
  return out


def _value(value: Any) -> Any:
  if dataclasses.is_dataclass(value):
    return of(value)
  if isinstance(value, (tuple, list)):
    return type(value)(_value(v) for v in value)
  if isinstance(value, dict):  # keyed search layers, operator parameters
    return {k: _value(v) for k, v in value.items()}
  return value


def hash_of(identity: Any) -> str:
  """16 hex digits naming ``identity`` (any JSON-ready object)."""
  return cfglib.hash_dict(identity)


def _trained(cfg) -> dict[str, Any]:
  """:func:`of` a config holding a ``train`` config (SGD's, the student's), whose
  ``compute_dtype`` is recorded as the dtype it resolves to here (a run on another backend is
  another run), and left out when that is float32, the only dtype before it was a setting."""
  out = of(cfg)
  if isinstance(getattr(cfg, 'train', None), cfglib.TrainConfig):
    dtype = cfglib.compute_dtype_name(out['train'].pop('compute_dtype'))
    if dtype != 'float32':
      out['train']['compute_dtype'] = dtype
  return out


def training(data_cfg: cfglib.DataConfig, ds: datalib.Dataset, **parts) -> dict:
  """A training run's identity: the data by content and the named config dataclasses."""
  return {'data': datalib.identity(data_cfg, ds), **{k: _trained(v) for k, v in parts.items()}}


def sgd(data_cfg: cfglib.DataConfig, ds: datalib.Dataset, sgd_cfg: cfglib.SGDConfig) -> dict:
  """An SGD baseline's identity."""
  return training(data_cfg, ds, sgd=sgd_cfg)


def student(data_cfg: cfglib.DataConfig, ds: datalib.Dataset, search_cfg: cfglib.SearchConfig,
            student_cfg: cfglib.StudentConfig, network_id: str, start: str = 'fresh') -> dict:
  """A student's identity: its data, the search that made its targets and the network they
  were searched in (``network_id``, as in the store's id), its own config, and what it started
  from ('fresh', or the :func:`~decouple_jax.config.hash_tree` of its initial variables)."""
  return {**training(data_cfg, ds, search=search_cfg, student=student_cfg),
          'network': network_id, 'start': start}


def feedback_round(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, r: int) -> dict:
  """What a finished feedback round ``r`` depends on: the data (by content), round 1's search
  and the student, and from round 2 on the loop's settings (not the number of rounds, so
  asking for more rounds keeps the finished ones; round 1, the paper's pipeline, serves loops
  of any settings)."""
  parts = {'data': datalib.identity(exp.data, ds), 'search': of(exp.search),
           'student': _trained(exp.student)}
  if r > 1:
    parts['feedback'] = of(dataclasses.replace(exp.feedback, rounds=1))
  return parts


def check_same(config: dict, found: dict, where: Any, fix: str,
               error: type[Exception] = cfglib.ConfigError) -> None:
  """Refuses ``found`` (a record with ``config_hash`` and ``config``) unless it is ``config``'s.

  Raises:
    error: naming ``where``, each setting that differs (expected vs found) and ``fix``.
  """
  if found.get('config_hash') == hash_of(config):
    return
  if 'config' not in found:
    raise error(f'{where} holds a run of another configuration (hash '
                f'{found.get("config_hash")} != {hash_of(config)}) written by an older version, '
                f'which did not record its config; {fix}')
  raise error(f'{where} holds a run of another configuration:\n  ' +
              '\n  '.join(cfglib.differences(config, found['config'])) + f'\n{fix}')


def record(config: dict, **results) -> dict:
  """The record a finished run of identity ``config`` writes: ``results`` with ``config`` and
  its ``config_hash``."""
  return {**results, 'config_hash': hash_of(config), 'config': config}


def finished(path: str | pathlib.Path, config: dict, *, required: str | None = None,
             fix: str | None = None) -> dict | None:
  """The record at ``path`` if it is a finished run of identity ``config``, else None.

  Args:
    path: the run's record (e.g. ``WORKDIR/results.json``).
    config: the identity the run must have.
    required: a key the record must hold to count as finished (a run killed between writing
      its record and adding this is finished by running it again).
    fix: what the error says to do (default: use another workdir or delete the run's).

  Raises:
    ConfigError: the record is another identity's, naming the settings that differ.
  """
  path = pathlib.Path(path)
  if not path.exists():
    return None
  found = runlog.read_json(path)
  if 'config_hash' not in found:
    # A record from before records held their identity (a store's summary): not known to be
    # this run's, so the run is asked again, which checks its own files and returns at once.
    return None
  check_same(config, found, path.parent,
             fix or f'Use a new --workdir, or delete {path.parent} to start over.')
  return found if required is None or required in found else None
