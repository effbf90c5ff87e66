"""Reproduces the paper's result tables (PAPER.md section 5) for one experiment; resumable.

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
from decouple_jax import locks
from decouple_jax import runlog
from decouple_jax.analysis import plots
from decouple_jax.analysis.plots import scale_label
from decouple_jax.learn import sgd
from decouple_jax.learn import student
from decouple_jax.mesh import mesh_1d
from decouple_jax.search import driver
from decouple_jax.search import sharding

# PAPER.md section 5: test accuracy %, (mean, std) over 3 runs, keyed by (table, data set).
# Table 1 is without augmentation, Table 2 with it.
PAPER_RESULTS = {
    (1, 'mnist'): {'sgd': (99.1, 0.1), 'all_layers': (99.0, 0.1)},
    (1, 'cifar10'): {'sgd': (89.1, 0.3), 'all_layers': (88.3, 0.3)},
    (1, 'cifar100'): {'sgd': (62.3, 0.5), 'all_layers': (61.6, 0.2)},
    (2, 'cifar10'): {'sgd': (93.0, 0.2), 'skip_block0': (92.0, 0.1), 'all_layers': (90.6, 0.3)},
    (2, 'cifar100'): {'sgd': (71.8, 0.4), 'skip_block0': (69.2, 0.3), 'all_layers': (66.5, 0.3)},
}
METHOD_NAMES = {'sgd': 'SGD', 'all_layers': 'Search-based (All layers)',
                'skip_block0': 'Search-based (Skip block 0)'}
_WALL = 'wall_seconds.json'


def paper_result(data_name: str, method: str, augment: bool) -> tuple[int, tuple | None]:
  """(paper table, (mean %, std %) or None if the paper has no such number)."""
  table = 2 if augment else 1
  return table, PAPER_RESULTS.get((table, data_name), {}).get(method)


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
    runlog.write_json(self.workdir / _WALL, self.wall)
    self.ran.append(name)
    return result


def _finished_training(workdir: pathlib.Path, config: dict, required: str
                       ) -> Callable[[], dict | None]:
  """The ``done`` of a training sub-run for :class:`_Runner`: its results if ``workdir``
  holds a finished run of ``config`` (one whose results.json has ``required``), else None.

  The returned callable raises ConfigError, naming the settings that differ, if ``workdir``
  holds a run of another config.
  """
  def done():
    path = workdir / 'results.json'
    if not path.exists():
      return None
    results = runlog.read_json(path)
    if results.get('config_hash') != cfglib.hash_dict(config):
      raise cfglib.ConfigError(
          f'{workdir} holds a run of another configuration:\n  ' + '\n  '.join(
              cfglib.differences(config, results.get('config', {}))) +
          f'\nUse a new --workdir, or delete {workdir} to start over.')
    # A run killed after training but before its last results were added is finished by
    # running it again: it resumes from its final checkpoint.
    return results if required in results else None
  return done


def _without_variables(results: dict) -> dict:
  return {k: v for k, v in results.items() if k != 'variables'}


def _search(runner: _Runner, exp: cfglib.ExperimentConfig, ds: datalib.Dataset, split: str,
            mesh: jax.sharding.Mesh) -> tuple[pathlib.Path, dict]:
  """(store directory, search summary) of ``split``, searched unless already complete."""
  directory = driver.store_dir(runner.workdir / 'search', split)
  summary = directory / 'summary.json'

  def done():
    if not summary.exists():
      return None
    student.open_targets(directory, exp.data, exp.search, ds, split)  # refuses another config
    return runlog.read_json(summary)

  def run():
    driver.run_search(exp.data, exp.search, directory, ds=ds, mesh=mesh, split=split)
    return runlog.read_json(summary)
  return directory, runner(f'search_{split}', done, run)


def _run_name(seed: int, method: str, convs: int | None = None) -> str:
  """A training sub-run's directory under the workdir: 'seed{s}/student_{variant}' for a
  student variant, 'seed{s}/sgd_convs{n}' for the SGD baseline (``method`` 'sgd')."""
  return f'seed{seed}/sgd_convs{convs}' if method == 'sgd' else f'seed{seed}/student_{method}'


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
      _finished_training(run_dir, student.run_config(exp.data, ds, exp.search, cfg),
                         'diagnostics'),
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
  name = _run_name(seed, 'sgd', convs)
  run_dir = runner.workdir / name
  return runner(
      name,
      _finished_training(run_dir, sgd.run_config(exp.data, ds, cfg), 'test_accuracy'),
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
    ``workdir/table.md`` gets :func:`format_table` of it.
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

  students = {v: {} for v in rc.variants}
  sgd_runs = {n: {} for n in rc.sgd_convs}
  for seed in exp.seeds:
    for variant in rc.variants:
      students[variant][seed] = _student(runner, exp, ds, seed, variant, targets,
                                         holdout_targets, train_mesh)
    for convs in rc.sgd_convs:
      sgd_runs[convs][seed] = _sgd(runner, exp, ds, seed, convs, train_mesh)

  best_convs, selected_by = _sgd_selection(sgd_runs)
  rows = []
  for method, runs, augment in (
      [('sgd', sgd_runs[best_convs], exp.sgd.train.augment)] +
      [(v, students[v], exp.student.train.augment) for v in rc.variants]):
    table, paper = paper_result(exp.data.name, method, augment)
    rows.append({'method': method, 'name': METHOD_NAMES[method], 'augment': augment,
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
      'search': {'train': search_summary, 'holdout': holdout_summary},
      'throughput': _throughput(exp, students, sgd_runs),
      'wall_seconds': {'recorded_total': sum(runner.wall.values()),
                       'this_invocation': time.perf_counter() - t_start,
                       'per_run': runner.wall},
      'ran_this_invocation': runner.ran,
      'config': cfglib.to_dict(exp),
  }
  runlog.write_json(workdir / 'results.json', results)
  (workdir / 'table.md').write_text(format_table(results))
  curves = {f'{METHOD_NAMES[method]}, seed {seed}': runlog.JsonLines(
      workdir / _run_name(seed, method, best_convs) / 'metrics.jsonl').records()
            for seed in exp.seeds for method in ('sgd', *rc.variants)}
  plots.plot_training_curves(curves, workdir / 'training_curves.png',
                             plots.describe(ds.name, exp.name, exp.scale))
  return results


def _pm(stats: dict | tuple | None) -> str:
  if stats is None:
    return '-'
  mean, std = (stats['mean'], stats['std']) if isinstance(stats, dict) else stats
  return f'{mean:.2f}' if std is None else f'{mean:.2f} ± {std:.2f}'


def _floats(values, digits: int = 3) -> str:
  return '-' if values is None else ' / '.join(f'{v:.{digits}f}' for v in values)


def format_table(results: dict) -> str:
  """The Markdown report of :func:`reproduce`'s results: the paper's table and ours."""
  scale = scale_label(results['scale'])
  scaled = results['scale'] != 'paper'
  title = (f'# {results["name"]} ({scale}): NOT the paper\'s settings' if scaled
           else f'# {results["name"]}: the paper\'s settings')
  seeds = ', '.join(map(str, results['seeds']))
  hw = results['hardware']
  sgd = results['sgd']
  convs = ', '.join(f'{n}: {_pm(v["test_accuracy"])}' for n, v in sgd['per_convs'].items())
  # Without a hold-out split every run reports its last epoch (and SGD's convs/block are
  # chosen by test accuracy: the row says so).
  selected = ('hold-out-selected model' if results['config']['data']['holdout'] else
              "last epoch's model (data.holdout=0: no hold-out split to select on)")
  lines = [
      title, '',
      f'Test accuracy (%) of the {selected}, mean ± std over seeds {seeds}; '
      'paper: PAPER.md section 5 (Table 1 without augmentation, Table 2 with it).'
      + (' Numbers of a scaled-down run are not comparable with the paper\'s.' if scaled
         else ''), '',
      '| method | measured | paper | augmentation | config | scale | seeds |',
      '|---|---|---|---|---|---|---|',
  ]
  for row in results['rows']:
    name = row['name']
    if row['method'] == 'sgd':
      name += f' (best convs/block by {sgd["selected_by"]}: {sgd["selected_convs"]})'
    paper = (f'{_pm(row["paper"])} (Table {row["paper_table"]})' if row['paper'] else
             f'- (not in Table {row["paper_table"]})')
    lines.append(f'| {name} | {_pm(row["test_accuracy"])} | {paper} | '
                 f'{"yes" if row["augment"] else "no"} | {results["name"]} | {scale} | {seeds} |')
  lines += ['', f'SGD test accuracy per convs/block: {convs}.', '',
            '## What limits the student (mean over seeds)', '',
            'R^2 of each block\'s output against its searched targets (block 0 / 1 / 2), on '
            'training images and on hold-out images (searched too); how often p_hat\'s argmax '
            'is the true label; a linear probe trained with true labels on the frozen block-2 '
            'output next to the KL-trained head (same test images).', '',
            '| student | R^2 train | R^2 hold-out | p_hat = label | linear probe | KL head |',
            '|---|---|---|---|---|---|']
  for variant, s in results['students'].items():
    d = s['diagnostics']
    lines.append(f'| {METHOD_NAMES[variant]} | {_floats(d["r2_train"])} | '
                 f'{_floats(d["r2_holdout"])} | {100 * d["phat_accuracy"]:.1f}% | '
                 f'{100 * d["linear_probe_test_accuracy"]:.1f}% | '
                 f'{100 * d["head_test_accuracy"]:.1f}% |')
  tp = results['throughput']
  lines += ['', '## Throughput', '']
  for variant in results['students']:
    t = tp[variant]
    cost = t['student_step_cost_vs_sgd']
    lines.append(
        f'- {METHOD_NAMES[variant]}: {t["student_images_per_s"]:.0f} training images/s'
        + (f' vs SGD with {tp["sgd_convs_per_block"]} convs/block {tp["sgd_images_per_s"]:.0f}:'
           f' a student step costs {cost:.2f}x an SGD step (aim: <= 1.3)'
           if cost is not None else
           f' (no SGD run with {tp["sgd_convs_per_block"]} convs/block to compare)'))
  lines.append(f'- {tp["note"]}' + ('' if tp['same_widths'] else
                                    '; SGD and student widths differ'))
  search, wall = results['search'], results['wall_seconds']
  holdout = search['holdout']
  lines += [
      '', '## Setup', '',
      f'- Search: one search (search.seed={results["config"]["search"]["seed"]}) of '
      f'{search["train"]["images"]} training images serves every seed; the seeds set the '
      'initialisation, shuffling and augmentation of the students and SGD baselines, so the '
      'spread is that of training only. Mean best loss per layer: '
      f'{_floats(search["train"]["mean_best_loss"].values())}. Hold-out searched: '
      + (f'{holdout["images"]} images.' if holdout else 'no.'),
      f'- Hardware: {hw["platform"]} ({hw["device_kind"]}) x {hw["devices"]}.',
      f'- Wall time: {wall["recorded_total"]:.0f} s over the sub-runs reproduce ran (all '
      f'invocations); this invocation {wall["this_invocation"]:.0f} s.',
      '',
  ]
  return '\n'.join(lines)
