"""Reproduces the paper's result tables (its section 4.3) for one experiment; resumable.

:func:`reproduce` is what ``launch/reproduce.py`` calls. It runs, in ``workdir``:

  search/targets              the search of the training split (the students' targets)
  search/targets_holdout      the search of the hold-out split (diagnostics only)
  seed{s}/student_{variant}   one student per variant in ``exp.reproduce.variants``
  seed{s}/sgd_convs{n}        one SGD baseline per option in ``exp.reproduce.sgd_convs``

and writes ``results.json`` (every number), ``table.md`` (the paper's table next to ours) and
``training_curves.png`` (hold-out accuracy per epoch, and the students' MSE per block).

Seeds: the search does not depend on the seed of a repetition. One search (``search.seed``)
serves every seed, and seed s sets ``train.seed`` (initialisation, shuffling, augmentation)
of the students and the SGD baselines. The spread over seeds is therefore that of training
only, not of the search.

SGD: the paper tries 2, 4 and 6 convs per block and reports the best; here the best is the
option with the highest mean hold-out accuracy (test accuracy only without a hold-out split),
and the table says which won.

Resumption: a sub-run whose ``results.json`` (a search: ``summary.json``) exists is read, not
rerun, after checking that it was made with this config; an unfinished one resumes from its
own checkpoints or completed chunks. Running the same command again therefore only finishes
what is missing.

Several processes (``jax.distributed``, e.g. ``launch/reproduce.py --distributed``) share every
sub-run (see :mod:`decouple_jax.search.driver` and :mod:`decouple_jax.learn.trainer`); the main
process writes the reproduction's own files.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Callable, Sequence

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import distributed
from decouple_jax import identity
from decouple_jax import locks
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax import report
from decouple_jax.analysis import plots
from decouple_jax.learn import diagnostics
from decouple_jax.learn import sgd
from decouple_jax.learn import student
from decouple_jax.mesh import mesh_1d
from decouple_jax.search import driver
from decouple_jax.search import sharding
from decouple_jax.search import store_ids

_WALL = 'wall_seconds.json'


def mean_std(values: Sequence[float]) -> dict:
  """Mean and sample std (None for one value) of accuracies, in percent."""
  pct = 100 * np.asarray(values, np.float64)
  return {'mean': float(pct.mean()), 'std': float(pct.std(ddof=1)) if len(pct) > 1 else None,
          'values': pct.tolist()}


class _Runner:
  """Runs sub-runs of one reproduction unless done; records what ran and its wall time."""

  def __init__(self, workdir: pathlib.Path):
    self.workdir = workdir
    self.wall = runlog.read_json(workdir / _WALL) if (workdir / _WALL).exists() else {}
    self.ran: list[str] = []

  def __call__(self, name: str, done: Callable[[], dict | None],
               run: Callable[[], dict]) -> dict:
    """``done()`` if it finds the finished sub-run, else ``run()`` (timed)."""
    found = done()
    if found is not None:
      return found
    t0 = time.perf_counter()
    result = run()
    self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0
    if distributed.is_main():
      runlog.write_json(self.workdir / _WALL, self.wall)
    self.ran.append(name)
    return result


def _without_variables(results: dict) -> dict:
  return {k: v for k, v in results.items() if k != 'variables'}


def _search(runner: _Runner, exp: cfglib.ExperimentConfig, ds: datalib.Dataset, split: str,
            mesh: jax.sharding.Mesh) -> tuple[pathlib.Path, dict]:
  """(store directory, search summary) of ``split``, searched unless already complete."""
  directory = store_ids.store_dir(runner.workdir / 'search', split)
  summary = directory / 'summary.json'

  def done():
    return identity.finished(summary, store_ids.StoreId(exp.data, exp.search, ds, split).config())

  def run():
    driver.run_search(exp.data, exp.search, directory, ds=ds, mesh=mesh, split=split)
    return runlog.read_json(summary)
  return directory, runner(f'search_{split}', done, run)


def _random_feature_floor(runner: _Runner, exp: cfglib.ExperimentConfig,
                          ds: datalib.Dataset) -> dict:
  """{'test_accuracy'} of :func:`decouple_jax.learn.diagnostics.random_feature_floor` on the
  untrained search network, measured once beside the search it belongs to."""
  path = runner.workdir / 'search' / 'random_feature_floor.json'

  def run():
    model, variables = models.init_for_dataset(exp.search.model, ds,
                                                exp.search.untrained_network_seed)
    result = {'test_accuracy': diagnostics.random_feature_floor(
        model, variables, ds, batch_size=exp.student.train.eval_batch)}
    if distributed.is_main():
      runlog.write_json(path, result)
    return result
  return runner('random_feature_floor', lambda: runlog.read_json(path) if path.exists() else None,
                run)


def _run_name(seed: int, method: str, convs: int | None = None,
              frozen_blocks: tuple[int, ...] = ()) -> str:
  """A training sub-run's directory under the workdir: 'seed{s}/student_{variant}' for a
  student variant, 'seed{s}/sgd_convs{n}' for the SGD baseline (``method`` 'sgd'), with
  '_frozen{b}' per block an SGD control keeps untrained."""
  if method != 'sgd':
    return f'seed{seed}/student_{method}'
  return f'seed{seed}/sgd_convs{convs}' + ''.join(f'_frozen{b}' for b in frozen_blocks)


def _student(runner: _Runner, exp: cfglib.ExperimentConfig, ds: datalib.Dataset, seed: int,
             variant: str, targets: pathlib.Path, holdout_targets: pathlib.Path | None,
             mesh: jax.sharding.Mesh) -> dict:
  """The results of the student ``variant`` with ``seed``, trained unless finished."""
  cfg = dataclasses.replace(exp.student, variant=variant,
                            train=dataclasses.replace(exp.student.train, seed=seed))
  name = _run_name(seed, variant)
  run_dir = runner.workdir / name
  return runner(
      name,
      lambda: identity.finished(
          run_dir / 'results.json',
          identity.student(exp.data, ds, exp.search, cfg, store_ids.UNTRAINED),
          required='diagnostics'),
      lambda: _without_variables(student.train_student(
          exp.data, exp.search, cfg, run_dir, targets, holdout_targets=holdout_targets, ds=ds,
          mesh=mesh)))


def _sgd(runner: _Runner, exp: cfglib.ExperimentConfig, ds: datalib.Dataset, seed: int,
         convs: int, mesh: jax.sharding.Mesh) -> dict:
  """The results of the SGD baseline with ``convs`` per block and ``seed``, trained unless
  finished."""
  cfg = dataclasses.replace(exp.sgd,
                            model=dataclasses.replace(exp.sgd.model, convs_per_block=convs),
                            train=dataclasses.replace(exp.sgd.train, seed=seed))
  name = _run_name(seed, 'sgd', convs, exp.sgd.frozen_blocks)
  run_dir = runner.workdir / name
  return runner(
      name,
      lambda: identity.finished(run_dir / 'results.json', identity.sgd(exp.data, ds, cfg),
                                required='test_accuracy'),
      lambda: _without_variables(sgd.train_sgd(exp.data, cfg, run_dir, ds=ds, mesh=mesh)))


def _sgd_selection(sgd_runs: dict) -> tuple[int, str]:
  """(convs per block of the best SGD option, the accuracy that chose it)."""
  runs = [r for by_seed in sgd_runs.values() for r in by_seed.values()]
  key = ('holdout_accuracy' if all(r['holdout_accuracy'] is not None for r in runs)
         else 'test_accuracy')
  scores = {n: np.mean([r[key] for r in by_seed.values()]) for n, by_seed in sgd_runs.items()}
  # max keeps the first listed of equal scores.
  return max(scores, key=scores.get), key.replace('_', ' ')


def _mean_diagnostics(runs: Sequence[dict]) -> dict:
  """Diagnostics averaged over seeds (R^2 per block); None where a seed has none."""
  diags = [r['diagnostics'] for r in runs]
  out = {}
  for key in diags[0]:
    values = [d[key] for d in diags]
    if any(v is None for v in values):
      out[key] = None
    elif isinstance(values[0], dict):
      out[key] = values[0]
    else:
      out[key] = np.mean(values, axis=0).tolist()
  return out


def _throughput(exp: cfglib.ExperimentConfig, students: dict, sgd_runs: dict) -> dict:
  """Training images/s of each student variant and of the SGD baseline with the student's
  convs per block (if that option ran), and how many SGD steps a student step costs."""
  convs = exp.student.model.convs_per_block
  sgd_ips = (float(np.mean([r['train_images_per_s'] for r in sgd_runs[convs].values()]))
             if convs in sgd_runs else None)
  out = {'sgd_convs_per_block': convs, 'sgd_images_per_s': sgd_ips,
         'same_widths': tuple(exp.sgd.model.widths) == tuple(exp.student.model.widths),
         'note': 'images/s include the first epoch, i.e. compilation'}
  for variant, runs in students.items():
    ips = float(np.mean([r['train_images_per_s'] for r in runs.values()]))
    out[variant] = {'student_images_per_s': ips,
                    'student_step_cost_vs_sgd': None if sgd_ips is None else sgd_ips / ips}
  return out


def _hardware(devices: Sequence[jax.Device]) -> dict:
  return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'devices': len(devices)}


@locks.holding('workdir')
def reproduce(exp: cfglib.ExperimentConfig, workdir: str | pathlib.Path, *,
              devices: Sequence[jax.Device] | None = None) -> dict:
  """Runs the search, the students and the SGD baselines of ``exp`` for every seed.

  Args:
    exp: the experiment; ``exp.seeds`` are the repetitions and ``exp.reproduce`` says which
      student variants and SGD options run.
    workdir: where every sub-run and the results go (layout in the module docstring);
      resumed if it exists.
    devices: the devices every phase runs on (the search on a mesh with axis 'images',
      training on one with axis 'batch'); default all.

  Returns:
    The dict also written to ``workdir/results.json``: per sub-run results, the table rows,
    the students' diagnostics, throughput, hardware, wall times and the config.
    ``workdir/table.md`` gets :func:`decouple_jax.report.format_table` of it.
  """
  t_start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  devices = list(devices) if devices is not None else jax.devices()
  train_mesh = mesh_1d('batch', devices)
  rc = exp.reproduce
  ds = datalib.load_dataset(exp.data)
  runner = _Runner(workdir)

  targets, search_summary = _search(runner, exp, ds, 'train', sharding.make_mesh(devices))
  holdout_targets, holdout_summary = None, None
  if rc.holdout_search and len(ds.holdout_images):
    holdout_targets, holdout_summary = _search(runner, exp, ds, 'holdout',
                                               sharding.make_mesh(devices))

  floor = _random_feature_floor(runner, exp, ds)
  students = {v: {} for v in rc.variants}
  sgd_runs = {n: {} for n in rc.sgd_convs}
  for seed in exp.seeds:
    for variant in rc.variants:
      students[variant][seed] = _student(runner, exp, ds, seed, variant, targets,
                                         holdout_targets, train_mesh)
    for convs in rc.sgd_convs:
      sgd_runs[convs][seed] = _sgd(runner, exp, ds, seed, convs, train_mesh)

  best_convs, selected_by = _sgd_selection(sgd_runs)
  frozen = exp.sgd.frozen_blocks
  config = cfglib.to_dict(exp)
  name_of = lambda method: report.run_method_name(method, config)
  rows = []
  for method, runs, augment in (
      [('sgd', sgd_runs[best_convs], exp.sgd.train.augment)] +
      [(v, students[v], exp.student.train.augment) for v in rc.variants]):
    table, paper = report.paper_result(exp.data.name, method, augment)
    name = name_of(method)
    if name != report.METHOD_NAMES[method]:  # not the paper's method: no paper number
      paper = None
    rows.append({'method': method, 'name': name, 'augment': augment,
                 'test_accuracy': mean_std([r['test_accuracy'] for r in runs.values()]),
                 'paper_table': table, 'paper': paper})
  results = {
      'name': exp.name, 'scale': exp.scale, 'seeds': list(exp.seeds),
      'hardware': _hardware(devices),
      'rows': rows,
      'sgd': {'selected_convs': best_convs, 'selected_by': selected_by,
              'per_convs': {n: {'test_accuracy': mean_std([r['test_accuracy']
                                                           for r in runs.values()]),
                                'runs': runs} for n, runs in sgd_runs.items()}},
      'students': {v: {'diagnostics': _mean_diagnostics(list(runs.values())), 'runs': runs}
                   for v, runs in students.items()},
      'random_feature_floor': floor,
      'search': {'train': search_summary, 'holdout': holdout_summary},
      'throughput': _throughput(exp, students, sgd_runs),
      'wall_seconds': {'recorded_total': sum(runner.wall.values()),
                       'this_invocation': time.perf_counter() - t_start,
                       'per_run': runner.wall},
      'ran_this_invocation': runner.ran,
      'config': config,
  }
  if distributed.is_main():
    runlog.write_json(workdir / 'results.json', results)
    (workdir / 'table.md').write_text(report.format_table(results))
    curves = {f'{name_of(m)}, seed {s}': runlog.JsonLines(
        workdir / _run_name(s, m, best_convs, frozen) / 'metrics.jsonl').records()
              for s in exp.seeds for m in ('sgd', *rc.variants)}
    plots.plot_training_curves(curves, workdir / 'training_curves.png',
                               plots.describe(ds.name, exp.name, exp.scale))
  return results
