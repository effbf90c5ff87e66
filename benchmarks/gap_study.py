"""The gap study: what closes the distance between search-based learning and SGD on MNIST.

Every arm is ``configs/mnist.py:cpu`` on a fixed MNIST subset (``--train_images`` training
images, ``--holdout`` hold-out images, the full test set) with a few fields changed. An arm
searches its training images (cached by target hash, so arms that differ only in the student
share a search), trains the student, and reports: search seconds, mean best cross-entropy per
search layer, R^2 of the student's taps against the targets per block, the linear probe on the
student's block-2 output, the KL head's accuracy, and the student's hold-out and test accuracy.
Beside them, per search width, two references on the same images: the random-feature floor (a
linear probe trained with true labels on the UNTRAINED search network's block-2 features) and
SGD with the student's network.

Choices are made on hold-out accuracy; the test column is reported, never used to choose.
Everything is **scaled down** (the paper searches 60k images at width 256).

Resumable: a finished arm's row is kept in ``WORKDIR/rows/<arm>.json`` and not rerun; an
unfinished search or student resumes from its own files. Every finished row is also written
into the study section of ``--benchmarks_md`` (between its markers), with the date and the
machine's load, so a session that stops mid-study loses nothing; lines already recorded there
for arms this workdir lacks are kept, so a study resumed on a fresh machine adds to the table.

  .venv/bin/python benchmarks/gap_study.py --workdir=runs/gap_study                # every arm
  .venv/bin/python benchmarks/gap_study.py --workdir=runs/gap_study --arms=noise,gradient
  .venv/bin/python benchmarks/gap_study.py --workdir=runs/gap_study --list          # the arms

One arm takes 3-10 minutes on 2 idle cores (mostly its search).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import pathlib
import platform
import re
import sys
import time

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.analysis import plots
from decouple_jax.learn import diagnostics
from decouple_jax.learn import sgd
from decouple_jax.learn import student
from decouple_jax.search import driver

REPO = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = '<!-- gap_study:begin -->', '<!-- gap_study:end -->'

# The reading every arm starts from: ``mnist:cpu`` as it was before the study (blur the whole
# child, 16 generations per block, the paper's MNIST alpha, the paper's MSE weight), whatever
# the config says today, so that an arm's row means the same in every session.
STUDY_BASE = {'search.blur_target': 'candidate', 'gens': (16, 16, 16, 60),
              'alpha': (0.1, 0.1, 0.1, 0.1), 'student.mse_coef': 1.0}

# name -> (what it tests, overrides applied on top of STUDY_BASE). Overrides are dotted
# ConfigDict paths, plus four shorthands: 'gens', 'alpha' and 'blur' (generations, alpha and
# blur passes of the 4 search layers) and 'width' (search and student block width).
ARMS = {
    'candidate': ('blur the whole child (appendix order)', {'search.blur_target': 'candidate'}),
    'noise': ('blur only the mutation noise (section 3.1)', {'search.blur_target': 'noise'}),
    'candidate_g100': ('candidate, blocks 1-2 at 100 generations',
                       {'search.blur_target': 'candidate', 'gens': (16, 100, 100, 60)}),
    'noise_g100': ('noise, blocks 1-2 at 100 generations',
                   {'search.blur_target': 'noise', 'gens': (16, 100, 100, 60)}),
    'noise_g4_100': ('noise, block 0 at 4, blocks 1-2 at 100',
                     {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60)}),
    'gradient_g4_100': ('gradient descent control, same evaluations as noise_g4_100',
                        {'search.blur_target': 'noise', 'search.method': 'gradient',
                         'gens': (4, 100, 100, 60)}),
    # Where the search compute goes (noise, block 0 at 4).
    'noise_g4_200': ('noise, blocks 1-2 at 200', {'search.blur_target': 'noise',
                                                  'gens': (4, 200, 200, 60)}),
    'noise_g4_50': ('noise, blocks 1-2 at 50', {'search.blur_target': 'noise',
                                                'gens': (4, 50, 50, 60)}),
    'noise_g4_25': ('noise, blocks 1-2 at 25', {'search.blur_target': 'noise',
                                                'gens': (4, 25, 25, 60)}),
    'noise_g4_400': ('noise, blocks 1-2 at 400', {'search.blur_target': 'noise',
                                                  'gens': (4, 400, 400, 60)}),
    'noise_g4_100_p48': ('noise_g4_100, population 48 = 8 + 20 + 20',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'search.population': 48, 'search.top_k': 8,
                          'search.n_explore': 20, 'search.n_refine': 20}),
    'noise_g4_100_a02': ('noise_g4_100, alpha 0.2 at blocks 1-2',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'alpha': (0.1, 0.2, 0.2, 0.1)}),
    'noise_g4_100_a03': ('noise_g4_100, alpha 0.3 at blocks 1-2',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'alpha': (0.1, 0.3, 0.3, 0.1)}),
    'noise_g4_100_w32': ('noise_g4_100, search and student width 32',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'width': 32}),
    'noise_g4_100_w64': ('noise_g4_100, search and student width 64',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'width': 64}),
    'noise_g4_100_parents': ('noise_g4_100, refinement parents from the parents only (prose)',
                             {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                              'search.refine_pool': 'parents'}),
    'noise_g4_100_bnbatch': ('noise_g4_100, search-net BatchNorm on population statistics',
                             {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                              'search.bn_mode': 'batch'}),
    # The student (same search as noise_g4_100: these cost a student run each).
    'noise_g4_100_ep24': ('noise_g4_100, student 24 epochs',
                          {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                           'student.train.optim.epochs': 24}),
    'noise_g4_100_lr8': ('noise_g4_100, student lr 8 (decoupled units)',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'student.train.optim.lr': 8.0}),
    'noise_g4_100_mse10': ('noise_g4_100, student MSE coefficient 10',
                           {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                            'student.mse_coef': 10.0}),
    'noise_g4_100_kl003': ('noise_g4_100, student lambda 0.03 (paper)',
                           {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                            'student.kl_weight': 0.03}),
    'noise_g4_100_skip0': ('noise_g4_100, student skips block 0',
                           {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                            'student.variant': 'skip_block0'}),
    'noise_g4_100_msesum': ('noise_g4_100, squared error summed over elements (the formula)',
                            {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                             'student.mse_reduction': 'sum'}),
    'noise_g4_100_mse10_ep24': ('noise_g4_100, student MSE coefficient 10 and 24 epochs',
                                {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                                 'student.mse_coef': 10.0, 'student.train.optim.epochs': 24}),
    'noise_g4_100_a02_mse10': ('noise_g4_100_a02, student MSE coefficient 10',
                               {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                                'alpha': (0.1, 0.2, 0.2, 0.1), 'student.mse_coef': 10.0}),
    'noise_g4_100_a03_mse10': ('noise_g4_100_a03, student MSE coefficient 10',
                               {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                                'alpha': (0.1, 0.3, 0.3, 0.1), 'student.mse_coef': 10.0}),
    'noise_g4_100_a05': ('noise_g4_100, alpha 0.5 at blocks 1-2',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'alpha': (0.1, 0.5, 0.5, 0.1)}),
    'noise_g4_100_blur2': ('noise_g4_100, 2 blur passes at blocks 1-2',
                           {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                            'blur': (5, 2, 2, 0)}),
}

# The gap against search compute: these arms differ only in blocks 1-2's generations (16x).
COMPUTE_CURVE = ('noise_g4_25', 'noise_g4_50', 'noise_g4_100', 'noise_g4_200', 'noise_g4_400')


def load_base(train_images: int, holdout: int) -> dict:
  """``configs/mnist.py:cpu`` as a ConfigDict, cut to the study's subset."""
  spec = importlib.util.spec_from_file_location('mnist_config', REPO / 'configs' / 'mnist.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config('cpu')
  c.data.dir = str(REPO / 'data' / 'mnist')
  c.data.train_limit, c.data.holdout = train_images, holdout
  return c


def arm_config(base, overrides: dict) -> cfglib.ExperimentConfig:
  """The experiment of one arm: ``base`` (a ConfigDict) with ``overrides`` applied."""
  c = base.copy_and_resolve_references()
  for key, value in {**STUDY_BASE, **overrides}.items():
    if key == 'gens':
      c.search.layers = tuple(dict(l, generations=g) for l, g in zip(c.search.layers, value))
    elif key in ('alpha', 'blur'):
      c.search.layers = tuple(dict(l, **{key: v}) for l, v in zip(c.search.layers, value))
    elif key == 'width':
      c.search.model.widths = c.student.model.widths = (value,) * 3
    else:
      *path, leaf = key.split('.')
      node = c
      for part in path:
        node = node[part]
      node[leaf] = value
  return cfglib.from_dict(cfglib.ExperimentConfig, c)


def student_row(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, workdir: pathlib.Path
                ) -> dict:
  """Search (cached) + student of one arm, and the numbers of its row."""
  targets = driver.cached_search(exp.data, exp.search, ds, workdir / 'searches')
  summary = runlog.read_json(targets / 'summary.json')
  run = workdir / 'students' / cfglib.hash_dict(
      student.run_config(exp.data, ds, exp.search, exp.student))
  results = student.train_student(exp.data, exp.search, exp.student, run, targets, ds=ds)
  d = results['diagnostics']
  return {
      'search_seconds': summary['seconds_this_run'],
      'mean_best_loss': list(summary['mean_best_loss'].values()),
      'r2_train': d['r2_train'],
      'linear_probe': d['linear_probe_test_accuracy'],
      'head': d['head_test_accuracy'],
      'holdout_accuracy': results['holdout_accuracy'],
      'test_accuracy': results['test_accuracy'],
      'student_seconds': results['train_seconds'],
  }


def reference_row(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, workdir: pathlib.Path
                  ) -> dict:
  """The random-feature floor and SGD with the student's network, at ``exp``'s width."""
  model, variables = models.init_for_dataset(exp.search.model, ds, exp.search.seed)
  floor = diagnostics.random_feature_floor(
      model, variables, ds, batch_size=1000,
      max_images=max(len(ds.train_images), len(ds.test_images)))
  sgd_cfg = sgd.with_network(exp.sgd, exp.student.model)
  run = workdir / 'sgd' / cfglib.hash_dict(sgd.run_config(exp.data, ds, sgd_cfg))
  results = sgd.train_sgd(exp.data, sgd_cfg, run, ds=ds)
  return {'random_feature_floor': floor, 'sgd_holdout_accuracy': results['holdout_accuracy'],
          'sgd_test_accuracy': results['test_accuracy']}


def compute_curve(rows: dict, refs: dict) -> dict | None:
  """The hold-out gap to SGD of the :data:`COMPUTE_CURVE` arms this workdir holds, and the
  power law gap = coef * G**slope fitted by least squares in log-log (from 3 points).

  Returns None below 2 points. Otherwise the numbers of
  :func:`decouple_jax.analysis.plots.plot_gap_vs_compute`; the fit also says at which G, and
  after how many search seconds (linear in G, fitted likewise), the gap would fall to 1 and to
  0.5 points (accuracies in %).
  """
  names = [n for n in COMPUTE_CURVE if n in rows]
  if len(names) < 2 or 16 not in refs:
    return None
  g = np.array([rows[n]['overrides']['gens'][1] for n in names], float)
  seconds = np.array([rows[n]['search_seconds'] for n in names])
  holdout = np.array([100 * rows[n]['holdout_accuracy'] for n in names])
  sgd = 100 * refs[16]['sgd_holdout_accuracy']
  gap = sgd - holdout
  fit = None
  if len(names) >= 3 and (gap > 0).all():
    slope, log_coef = np.polyfit(np.log(g), np.log(gap), 1)
    per_g, offset = np.polyfit(g, seconds, 1)
    fit = {'coef': float(np.exp(log_coef)), 'slope': float(slope)}
    for points in (1.0, 0.5):
      at = (float(np.exp((np.log(points) - log_coef) / slope)) if slope < 0 else None)
      fit[f'generations_for_{points}_point'] = at
      fit[f'search_seconds_for_{points}_point'] = (None if at is None else
                                                   float(per_g * at + offset))
  return {'arms': names, 'generations': g.tolist(), 'search_seconds': seconds.tolist(),
          'holdout_accuracy': holdout.tolist(),
          'test_accuracy': [100 * rows[n]['test_accuracy'] for n in names],
          'sgd_holdout_accuracy': sgd, 'fit': fit}


def describe_curve(curve: dict) -> str:
  """One paragraph of the study section: the fitted trend of :func:`compute_curve`."""
  points = ', '.join(f'G {g:.0f}: {gap:.2f}' for g, gap in
                     zip(curve['generations'],
                         curve['sgd_holdout_accuracy'] - np.array(curve['holdout_accuracy'])))
  text = (f'Gap against search compute (arms {", ".join(curve["arms"])}; width 16; G = '
          f'generations at each of blocks 1-2; hold-out points below SGD\'s '
          f'{curve["sgd_holdout_accuracy"]:.2f}%): {points}.')
  fit = curve['fit']
  if fit is None:
    return text + ' Too few points with a positive gap for a fit.'
  text += f' Least-squares fit in log-log: gap = {fit["coef"]:.3g} * G^{fit["slope"]:.3f}'
  for points in (1.0, 0.5):
    at = fit[f'generations_for_{points}_point']
    text += ('; the gap does not shrink with G' if at is None else
             f'; {points} point at G ~ {at:,.0f} '
             f'(~{fit[f"search_seconds_for_{points}_point"]:,.0f} s of search for these images, '
             'extrapolated)')
  return text + '. Figure: `results/gap_vs_compute.png`.'


def _f(values, digits=2) -> str:
  return ' / '.join(f'{v:.{digits}f}' for v in values)


def format_table(rows: dict, refs: dict, recorded: str = '') -> str:
  """The study's Markdown table (accuracies in %), arms in the order of :data:`ARMS`.

  ``rows`` (arm name -> row) and ``refs`` (width -> reference row) are the rows this workdir
  holds. ``recorded`` is the study section as last written: its line for an arm or width that
  ``rows``/``refs`` lack is kept as it stands, so a study resumed on a fresh machine (whose
  workdir has none of the earlier rows) adds its rows to the table instead of replacing it.
  An arm's name stands for its definition: an arm whose overrides change gets a new name.
  """
  arm_lines = {m[1]: m[0] for m in re.finditer(r'^\| `([^`]+)` \|.*$', recorded, re.M)}
  ref_lines = {int(m[1]): m[0] for m in re.finditer(r'^\| (\d+) \|.*$', recorded, re.M)}
  for name, row in rows.items():
    arm_lines[name] = (
        f'| `{name}` | {row["what"]} | {row["search_seconds"]:.0f} | '
        f'{_f(row["mean_best_loss"])} | {_f(row["r2_train"])} | '
        f'{100 * row["linear_probe"]:.1f} | {100 * row["head"]:.1f} | '
        f'{100 * row["holdout_accuracy"]:.2f} | {100 * row["test_accuracy"]:.2f} | '
        f'{row["load"]} |')
  for width, ref in refs.items():
    ref_lines[width] = (
        f'| {width} | {100 * ref["random_feature_floor"]:.1f} | '
        f'{100 * ref["sgd_holdout_accuracy"]:.2f} | {100 * ref["sgd_test_accuracy"]:.2f} |')
  lines = ['| arm | what | search s | mean best CE 0/1/2/logits | R^2 blocks 0/1/2 | probe | '
           'head | hold-out | test | load |', '|---|---|---|---|---|---|---|---|---|---|']
  lines += [arm_lines[name] for name in ARMS if name in arm_lines]
  lines += ['', '| width | random-feature floor (untrained block-2 probe) | '
            'SGD, student\'s network: hold-out | test |', '|---|---|---|---|']
  lines += [ref_lines[width] for width in sorted(ref_lines)]
  return '\n'.join(lines)


def _split(path: pathlib.Path) -> list[str]:
  """``path``'s text as [before the study section, the section, after it]."""
  text = path.read_text()
  if BEGIN not in text or END not in text:
    raise SystemExit(f'{path} has no {BEGIN} ... {END} section to write the study into')
  head, rest = text.split(BEGIN, 1)
  return [head, *rest.split(END, 1)]


def read_section(path: pathlib.Path) -> str:
  """The text between the study's markers in ``path``."""
  return _split(path)[1]


def write_section(path: pathlib.Path, body: str) -> None:
  """Replaces the text between the study's markers in ``path`` with ``body``."""
  head, _, tail = _split(path)
  path.write_text(f'{head}{BEGIN}\n{body}\n{END}{tail}')


def _load() -> str:
  return '/'.join(f'{x:.1f}' for x in os.getloadavg())


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', default='runs/gap_study')
  parser.add_argument('--arms', default='all', help="comma-separated names, or 'all'")
  parser.add_argument('--train_images', type=int, default=5000)
  parser.add_argument('--holdout', type=int, default=1000)
  parser.add_argument('--benchmarks_md', default=str(REPO / 'BENCHMARKS.md'),
                      help="where finished rows are recorded ('' to skip)")
  parser.add_argument('--figure', default=str(REPO / 'results' / 'gap_vs_compute.png'),
                      help="the gap-against-compute figure ('' to skip)")
  parser.add_argument('--list', action='store_true', help='print the arms and exit')
  args = parser.parse_args(argv)
  if args.list:
    for name, (what, overrides) in ARMS.items():
      print(f'{name:24s} {what}: {overrides}')
    return
  names = list(ARMS) if args.arms == 'all' else args.arms.split(',')
  unknown = [n for n in names if n not in ARMS]
  if unknown:
    raise SystemExit(f'unknown arm(s) {unknown}; --list shows the arms')
  workdir = pathlib.Path(args.workdir)
  base = load_base(args.train_images, args.holdout)
  ds = datalib.load_dataset(cfglib.from_dict(cfglib.ExperimentConfig, base).data)
  rows_dir = workdir / 'rows'
  for name in names:
    path = rows_dir / f'{name}.json'
    what, overrides = ARMS[name]
    exp = arm_config(base, overrides)
    width = exp.search.model.widths[0]
    ref_path = rows_dir / f'reference_width{width}.json'
    if not ref_path.exists():
      runlog.write_json(ref_path, {**reference_row(exp, ds, workdir), 'load': _load()})
    arm_hash = cfglib.config_hash(exp.data, exp.search, exp.student)
    if path.exists() and runlog.read_json(path).get('config_hash', arm_hash) != arm_hash:
      # The arm's definition (or STUDY_BASE) changed since its row was measured. Rows from
      # before rows carried a hash were measured on STUDY_BASE's reading and are kept.
      print(f'{name}: its row was measured with another config; measuring it again', flush=True)
      path.unlink()
    if not path.exists():
      t0 = time.perf_counter()
      row = student_row(exp, ds, workdir)
      runlog.write_json(path, {**row, 'what': what, 'overrides': overrides,
                               'config_hash': arm_hash, 'load': _load(),
                               'arm_seconds': time.perf_counter() - t0,
                               'finished': datetime.datetime.now(datetime.timezone.utc)
                               .strftime('%Y-%m-%d %H:%M UTC')})
    rows = {n: runlog.read_json(rows_dir / f'{n}.json') for n in ARMS
            if (rows_dir / f'{n}.json').exists()}
    refs = {int(re.search(r'\d+', p.stem).group()): runlog.read_json(p)
            for p in rows_dir.glob('reference_width*.json')}
    md = pathlib.Path(args.benchmarks_md) if args.benchmarks_md else None
    section = read_section(md) if md else ''
    table = format_table(rows, refs, section)
    curve = compute_curve(rows, refs)
    recorded = re.search(r'^Gap against search compute.*$', section, re.M)
    if curve is None and recorded:  # measured in an earlier workdir: kept, like its rows
      table += f'\n\n{recorded[0]}'
    elif curve is not None:
      table += f'\n\n{describe_curve(curve)}'
      if args.figure:
        plots.plot_gap_vs_compute(curve, args.figure, plots.describe(
            'MNIST, 5,000 training images', 'mnist:cpu (gap study)', 'scaled down'))
    print(f'\n{table}\n', flush=True)
    if md:
      header = (f'Command: `.venv/bin/python benchmarks/gap_study.py --workdir={args.workdir}`; '
                f'{args.train_images} training / {args.holdout} hold-out MNIST images, full test '
                f'set; machine {platform.node()} ({os.cpu_count()} cores), jax {jax.__version__}; '
                f'table written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. '
                '**Scaled down** (`mnist:cpu` otherwise). "load" is the 1/5/15-minute load '
                'average when the arm finished (2 cores: about 2 is the study alone, as its '
                'search keeps both busy; more means other jobs shared them).')
      write_section(md, f'{header}\n\n{table}')


if __name__ == '__main__':
  main(sys.argv[1:])
