"""The Markdown report of a reproduction: the paper's result tables next to the measured ones.

:func:`format_table` turns the results :func:`decouple_jax.reproduce.reproduce` writes into
``table.md``; :data:`PAPER_RESULTS` holds the numbers it compares with.
"""

from __future__ import annotations

# The paper's Tables 1 and 2 (its section 4.3): test accuracy %, (mean, std) over 3 runs, keyed
# by (table, data set). Table 1 is without augmentation, Table 2 with it.
PAPER_RESULTS = {
    (1, 'mnist'): {'sgd': (99.1, 0.1), 'all_layers': (99.0, 0.1)},
    (1, 'cifar10'): {'sgd': (89.1, 0.3), 'all_layers': (88.3, 0.3)},
    (1, 'cifar100'): {'sgd': (62.3, 0.5), 'all_layers': (61.6, 0.2)},
    (2, 'cifar10'): {'sgd': (93.0, 0.2), 'skip_block0': (92.0, 0.1), 'all_layers': (90.6, 0.3)},
    (2, 'cifar100'): {'sgd': (71.8, 0.4), 'skip_block0': (69.2, 0.3), 'all_layers': (66.5, 0.3)},
}
METHOD_NAMES = {'sgd': 'SGD', 'all_layers': 'Search-based (All layers)',
                'skip_block0': 'Search-based (Skip block 0)'}


def method_name(method: str, search_method: str = 'evolution',
                frozen_blocks: tuple[int, ...] = (), augmented_targets: str = 'reuse') -> str:
  """A result row's name: :data:`METHOD_NAMES`'s, and for a control or a change beyond the
  paper, which: a student whose targets another search than the paper's evolution found
  (``search.method``) or whose augmented views regress onto moved targets
  (``student.augmented_targets``), or SGD with blocks kept untrained (``sgd.frozen_blocks``).
  Such a row must not read as the paper's."""
  name = METHOD_NAMES[method]
  if method == 'sgd':
    if not frozen_blocks:
      return name
    blocks = ', '.join(map(str, frozen_blocks))
    return f'{name}, block{"s" * (len(frozen_blocks) > 1)} {blocks} untrained (control)'
  moved = {'flip': 'mirrored', 'follow': 'mirrored and shifted'}.get(augmented_targets)
  if moved:
    name = f'{name}, {moved} targets (beyond the paper)'
  return name if search_method == 'evolution' else f'{name}, {search_method} control'


def run_method_name(method: str, config: dict) -> str:
  """:func:`method_name` of ``method`` in a run whose config is ``config`` (its ``to_dict``
  form, as results files hold it): the one place that reads which of a run's fields name its
  rows. Results written before a field existed lack it and ran with its default."""
  return method_name(method, config['search']['method'],
                     tuple(config['sgd'].get('frozen_blocks', ())),
                     config['student'].get('augmented_targets', 'reuse'))


def scale_label(scale: str) -> str:
  """``scale`` as printed next to every number: 'paper', or a visible 'scaled down' note."""
  return scale if scale == 'paper' or 'scaled down' in scale.lower() else f'scaled down: {scale}'


def paper_result(data_name: str, method: str, augment: bool) -> tuple[int, tuple | None]:
  """(paper table, (mean %, std %) or None if the paper has no such number)."""
  table = 2 if augment else 1
  return table, PAPER_RESULTS.get((table, data_name), {}).get(method)


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
      'paper: arXiv 2509.10973, section 4.3 (Table 1 without augmentation, Table 2 with it).'
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
  floor = results['random_feature_floor']['test_accuracy']
  lines.append(f'| Random features: a linear probe (true labels) on the untrained search '
               f'network\'s block-2 output | {100 * floor:.2f} | - | no | {results["name"]} | '
               f'{scale} | - |')
  lines += ['', f'SGD test accuracy per convs/block: {convs}. The random-feature row is the '
            'floor: what a student whose body learned nothing would reach (first 4,000 '
            'training and test images, as the students\' linear probe below).', '',
            '## What limits the student (mean over seeds)', '',
            'R^2 of each block\'s output against its searched targets (block 0 / 1 / 2), on '
            'training images and on hold-out images (searched too); how often p_hat\'s argmax '
            'is the true label; a linear probe trained with true labels on the frozen block-2 '
            'output next to the KL-trained head (same test images).', '',
            '| student | R^2 train | R^2 hold-out | p_hat = label | linear probe | KL head |',
            '|---|---|---|---|---|---|']
  search_method = results['config']['search']['method']
  student_name = lambda variant: run_method_name(variant, results['config'])
  for variant, s in results['students'].items():
    d = s['diagnostics']
    lines.append(f'| {student_name(variant)} | {_floats(d["r2_train"])} | '
                 f'{_floats(d["r2_holdout"])} | {100 * d["phat_accuracy"]:.1f}% | '
                 f'{100 * d["linear_probe_test_accuracy"]:.1f}% | '
                 f'{100 * d["head_test_accuracy"]:.1f}% |')
  tp = results['throughput']
  lines += ['', '## Throughput', '']
  for variant in results['students']:
    t = tp[variant]
    cost = t['student_step_cost_vs_sgd']
    lines.append(
        f'- {student_name(variant)}: {t["student_images_per_s"]:.0f} training '
        'images/s'
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
      f'- Search: one {search_method} search (search.seed='
      f'{results["config"]["search"]["seed"]}'
      + ('' if search_method == 'evolution' else
         f"; search.method='{search_method}': a control, not the paper's evolutionary search")
      + ') of '
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
