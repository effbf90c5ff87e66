"""benchmarks/gap_study.py's record in BENCHMARKS.md: a study resumed on a fresh machine, whose
workdir has none of the earlier rows, adds its rows to the recorded table and loses none."""

import importlib.util
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def gap_study():
  spec = importlib.util.spec_from_file_location('gap_study', REPO / 'benchmarks' / 'gap_study.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _row(what, holdout):
  return {'what': what, 'search_seconds': 10.0, 'mean_best_loss': [2.0, 1.0, 0.5, 0.0],
          'r2_train': [0.8, 0.5, 0.6], 'linear_probe': 0.9, 'head': 0.91,
          'holdout_accuracy': holdout, 'test_accuracy': holdout - 0.01, 'load': '1.0/1.0/1.0'}


def test_a_resumed_study_keeps_the_recorded_rows_and_replaces_only_its_own(gap_study, tmp_path):
  study = gap_study.STUDIES['mnist']
  ref = {'random_feature_floor': 0.864, 'sgd_holdout_accuracy': 0.982, 'sgd_test_accuracy': 0.975}
  first = gap_study.format_table(study, {'noise': _row('first', 0.897), 'candidate': _row('c', 0.858)},
                                 {16: ref})
  md = tmp_path / 'BENCHMARKS.md'
  md.write_text(f'# B\n\n{study.begin}\nold header\n{study.end}\n\nreading\n')
  gap_study.write_section(study, md, f'header\n\n{first}')

  # A fresh workdir: one new arm at a new width, and `noise` measured again.
  later = gap_study.format_table(
      study, {'noise_g4_100_w64': _row('wide', 0.95), 'noise': _row('again', 0.90)},
      {64: dict(ref, random_feature_floor=0.93)}, gap_study.read_section(study, md))
  gap_study.write_section(study, md, f'header 2\n\n{later}')
  text = md.read_text()

  assert text.startswith('# B\n\n') and text.endswith(f'{study.end}\n\nreading\n')
  section = gap_study.read_section(study, md)
  arms = [line.split('`')[1] for line in section.splitlines() if line.startswith('| `')]
  assert arms == ['candidate', 'noise', 'noise_g4_100_w64']  # the order of ARMS
  assert '| `noise` | again |' in section and 'first' not in section
  assert '| `candidate` | c |' in section and '85.80' in section
  widths = [line.split('|')[1].strip() for line in section.splitlines()
            if line.startswith('| ') and line.split('|')[1].strip().isdigit()]
  assert widths == ['16', '64']
  assert '| 64 | 93.0 |' in section and '| 16 | 86.4 |' in section
  assert section.count('| arm |') == 1 and section.count('| width |') == 1


def test_a_file_without_the_study_markers_is_refused(gap_study, tmp_path):
  md = tmp_path / 'BENCHMARKS.md'
  md.write_text('# no study here\n')
  for study in gap_study.STUDIES.values():
    with pytest.raises(SystemExit, match=f'no {study.begin}'):
      gap_study.read_section(study, md)


def test_the_compute_curve_recovers_a_power_law_and_is_plotted(gap_study, tmp_path):
  from decouple_jax import runlog
  from decouple_jax.analysis import plots
  study = gap_study.STUDIES['mnist']
  spec, = study.curves
  base = gap_study.load_base(study, 100, 10)
  sgd = 0.98
  rows = {}
  for name in spec.arms[:4]:
    e = gap_study.search_evaluations(gap_study.arm_config(study, base, study.arms[name][1]))
    rows[name] = dict(_row(name, sgd - 0.2 * e ** -0.5), search_seconds=2.0 * e,
                      overrides=study.arms[name][1])
  curve = gap_study.compute_curve(study, spec, rows, {16: {'sgd_holdout_accuracy': sgd}}, base)
  fit = curve['fit']
  assert curve['arms'] == list(spec.arms[:4]) and curve['kind'] == 'search'
  assert fit['slope'] == pytest.approx(-0.5) and fit['coef'] == pytest.approx(20.0)
  # gap = 20 / sqrt(x) reaches 1 point at x = 400 and 0.5 at 1600; seconds = 2 x.
  assert fit['x_for_1.0_point'] == pytest.approx(400)
  assert fit['seconds_for_0.5_point'] == pytest.approx(3200)
  text = gap_study.describe_curve(study, curve)
  assert 'over every point: gap = 20 * x^-0.500' in text and '1.0 point at x ~ 400 ' in text
  # 4 points: the 3 largest computes are fitted alone too (the same law here).
  assert curve['fit_upper']['slope'] == pytest.approx(-0.5)
  assert 'over the 3 largest computes alone: gap = 20 * x^-0.500' in text

  about = plots.describe('m', 'c', 'scaled down')
  png = plots.plot_gap_vs_compute(curve, tmp_path / 'gap.png', about)
  assert png.stat().st_size > 0
  assert runlog.read_json(png.with_suffix('.json'))['fit']['slope'] == pytest.approx(-0.5)
  # Too few points for a fit, or none at all.
  two = dict(list(rows.items())[:2])
  refs = {16: {'sgd_holdout_accuracy': sgd}}
  assert gap_study.compute_curve(study, spec, two, refs, base)['fit'] is None
  assert gap_study.compute_curve(study, spec, {}, refs, base) is None


def test_the_student_curve_measures_the_gap_to_the_best_sgd_at_equal_epochs(gap_study):
  study = gap_study.STUDIES['cifar10']
  spec = next(c for c in study.curves if c.kind == 'student')
  base = gap_study.load_base(study, 100, 10)
  # Both improve with epochs; SGD's best (at the most epochs) is the baseline.
  rows, refs = {}, {32: {'sgd_holdout_accuracy': 0.60}}
  for name in spec.arms:
    overrides = study.arms[name][1]
    epochs = gap_study.student_epochs(gap_study.arm_config(study, base, overrides))
    rows[name] = dict(_row(name, 0.62 - 0.3 * epochs ** -0.5), overrides=overrides,
                      student_seconds=10.0 * epochs)
    if name != 'init001':
      rows[name]['sgd'] = {'sgd_holdout_accuracy': 0.58 + epochs / 1000,
                           'sgd_test_accuracy': 0.5}
  exps = [gap_study.arm_config(study, base, rows[n]['overrides']) for n in spec.arms]
  assert all(e.sgd.train.optim.epochs == e.student.train.optim.epochs for e in exps)
  curve = gap_study.compute_curve(study, spec, rows, refs, base)
  assert curve['compute'] == [2.0, 4.0, 12.0, 32.0]
  assert curve['sgd_holdout_accuracy'] == pytest.approx(100 * max(0.60, 0.58 + 32 / 1000))
  assert curve['sgd_each_holdout_accuracy'][2] == pytest.approx(60.0)  # init001: the reference
  text = gap_study.describe_curve(study, curve)
  assert text.startswith('Gap against student compute, alpha 0.2 (') and '32: student' in text
  assert 'cifar10_gap_vs_student_compute_alpha_0_2.png' in text
  targets = {'cos_to_activation': [1.0] * 3, 'target_probe': [0.5] * 3,
             'activation_probe': [0.5] * 3}
  table = gap_study.format_table(
      study, {n: dict(r, r2_holdout=[0.5] * 3, targets=targets) for n, r in rows.items()}, {})
  assert '| `init001_ep32` | init001_ep32 (its SGD: hold-out 61.20, test ' in table


def test_each_curve_has_its_own_title_and_figure_and_its_arms_share_its_reading(gap_study):
  for study in gap_study.STUDIES.values():
    titles = [c.title for c in study.curves]
    figures = {gap_study.curve_figure(study, c._asdict()) for c in study.curves}
    assert len(set(titles)) == len(figures) == len(study.curves)
  cifar = gap_study.STUDIES['cifar10']
  base = gap_study.load_base(cifar, 100, 10)
  assert [c.reading for c in cifar.curves] == ['alpha 0.2'] * 2 + ['alpha 1.0'] * 2
  for curve in cifar.curves:
    alpha = float(curve.reading.split()[1])
    for name in curve.arms:
      layers = gap_study.arm_config(cifar, base, cifar.arms[name][1]).search.layers
      assert layers['block1'].alpha == layers['block2'].alpha == alpha, name
  mnist, = gap_study.STUDIES['mnist'].curves
  assert gap_study.curve_figure(gap_study.STUDIES['mnist'], mnist._asdict()) == (
      'mnist_gap_vs_search_compute.png')


def test_a_study_that_searches_its_holdout_reports_what_generalises(gap_study):
  study = gap_study.STUDIES['cifar10']
  assert study.search_holdout and set(study.arms) >= {'base', 'init001'}
  row = dict(_row('x', 0.40), r2_holdout=[0.73, 0.28, 0.23],
             targets={'cos_to_activation': [0.97, 0.7, 0.63], 'target_probe': [0.5, 0.8, 0.9],
                      'activation_probe': [0.48, 0.45, 0.368], 'images': [2000, 500]})
  table = gap_study.format_table(study, {'init001': row}, {})
  header, rule, line = table.splitlines()[:3]
  assert header.count('|') == rule.count('|') == line.count('|')
  # A row measured before the class share was added shows '-' in its place.
  assert '| 0.73 / 0.28 / 0.23 | 0.97 / 0.70 / 0.63 | - | 90.0 / 36.8 |' in line
  row['targets']['class_fraction'] = {'target': [0.04, 0.14, 0.27]}
  line = gap_study.format_table(study, {'init001': row}, {}).splitlines()[2]
  assert '| 0.97 / 0.70 / 0.63 | 0.04 / 0.14 / 0.27 | 90.0 / 36.8 |' in line
  # The MNIST study's table has none of those columns.
  mnist = gap_study.format_table(gap_study.STUDIES['mnist'], {'noise': _row('n', 0.9)}, {})
  assert 'hold-out 0/1/2' not in mnist.splitlines()[0]


def test_every_arm_builds_a_valid_config(gap_study):
  """An arm whose overrides name no field or an invalid value fails here, not an hour into a
  study."""
  for study in gap_study.STUDIES.values():
    base = gap_study.load_base(study, 100, 10)
    for name, (_, overrides) in study.arms.items():
      exp = gap_study.arm_config(study, base, overrides)
      assert exp.data.train_limit == 100, name


def test_an_arm_of_averaged_searches_counts_every_search_and_shows_the_mean_targets_loss(
    gap_study):
  study = gap_study.STUDIES['cifar10']
  base = gap_study.load_base(study, 100, 10)
  evaluations = lambda name: gap_study.search_evaluations(
      gap_study.arm_config(study, base, study.arms[name][1]))
  assert evaluations('init001_mean4') == 4 * evaluations('init001')
  row = dict(_row('mean4', 0.5), r2_holdout=[0.5] * 3, mean_target_loss=[2.5, 1.5, 1.0, 0.2],
             targets={'cos_to_activation': [0.9] * 3, 'target_probe': [0.4],
                      'activation_probe': [0.4]})
  line = gap_study.format_table(study, {'init001_mean4': row}, {}).splitlines()[2]
  assert '| 2.00 / 1.00 / 0.50 / 0.00 (the mean target: 2.50 / 1.50 / 1.00 / 0.20) |' in line


def test_extrapolated_seconds_stay_positive_across_rows_timed_at_different_loads(gap_study):
  # The CIFAR-10 search curve's top 3 as recorded: init001_s1_2 (472 s) and init001 (954 s)
  # timed under load, init001_s2 at twice init001's evaluations timed idle (523 s). A free line
  # through these seconds falls with compute.
  x = np.array([3168.0, 6336.0, 12672.0])
  fit = gap_study._power_fit(x, np.array([11.2, 8.8, 7.1]), np.array([472.0, 954.0, 523.0]))
  per_evaluation = (x @ np.array([472.0, 954.0, 523.0])) / (x @ x)
  assert fit['seconds_for_1.0_point'] == pytest.approx(per_evaluation * fit['x_for_1.0_point'])
  assert fit['seconds_for_0.5_point'] > fit['seconds_for_1.0_point'] > 0
