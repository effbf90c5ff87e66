"""The paper's figures (docs/method.md section 7), and the gap study's: one function per
figure, each writing a PNG and the JSON of its numbers side by side.

Every title names the data set, the config and its scale, so a scaled-down figure is never
mistaken for the paper's.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use('Agg')  # Files only: no display on a training host.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top
import numpy as np

from decouple_jax import report
from decouple_jax import runlog
from decouple_jax.analysis import trajectories


def _colors() -> list[str]:
  """The colour cycle, to give one run (or layer) one colour across several lines."""
  return plt.rcParams['axes.prop_cycle'].by_key()['color']


def _nan_for_none(values) -> list[float]:
  """JSON nulls (no value) back to NaN, which matplotlib leaves as a gap."""
  return [np.nan if v is None else v for v in values]


def describe(data_name: str, config_name: str, scale: str) -> dict:
  """What every figure's title and JSON say about where its numbers come from."""
  return {'data': data_name, 'config': config_name, 'scale': report.scale_label(scale)}


def _title(what: str, about: dict) -> str:
  return f'{what}\n{about["data"]}, config {about["config"]}, {about["scale"]}'


def _save(fig, path: pathlib.Path, numbers: dict, about: dict) -> pathlib.Path:
  """Writes ``path`` (.png) and its .json (``numbers`` plus ``about``); returns the PNG path."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  runlog.write_json(path.with_suffix('.json'), {**numbers, **about})
  return path


def _sweep_figure(result: dict, draw, ylabel: str, population_label: str):
  """A figure of two panels sharing y: the population sweep and the generations sweep of
  ``result``, on log2 x axes; ``draw(ax, sweep's dict, x values)`` plots one sweep."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  sweeps = (('population', 'sizes', f'{population_label} (candidates per image)'),
            ('generations', 'multipliers', "generations (x the config's, every layer)"))
  for ax, (sweep, xkey, xlabel) in zip(axes, sweeps):
    x = result[sweep][xkey]
    draw(ax, result[sweep], x)
    ax.set_xscale('log', base=2)
    ax.set_xticks(x, [f'{v:g}' for v in x])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(ylabel)
  axes[1].legend()
  return fig


def plot_scaling(result: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """Paper Fig. 2: mean best loss per search layer vs population size and vs generations.

  Args:
    result: :func:`decouple_jax.analysis.scaling.search_scaling`'s output.
    path: the PNG to write; the JSON goes beside it (same name, .json).
    about: :func:`describe` of the run.
  """
  def draw(ax, part, x):
    loss = np.asarray(part['mean_best_loss'])
    for layer, name in enumerate(result['layers']):
      ax.plot(x, loss[:, layer], 'o-', label=f'{name} search')
    ax.plot(x, part['mean_init_loss'], 'k--', label='initial population')
  fig = _sweep_figure(result, draw, 'mean best cross-entropy (nats)', 'population size')
  fig.suptitle(_title(f'Search loss vs compute, first {result["n_images"]} training images',
                      about))
  return _save(fig, pathlib.Path(path), result, about)


def plot_diversity(result: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """Paper Fig. 3: effective number of distinct targets per layer vs independent runs; solid:
  the candidates kept by the threshold (the paper's measure), dashed: every run's candidate.
  The left panel shows the scale of "every run distinct", the right one zooms on the data.

  Args:
    result: :func:`decouple_jax.analysis.scaling.search_diversity`'s output.
    path: the PNG to write; the JSON goes beside it (same name, .json).
    about: :func:`describe` of the run.
  """
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout='constrained')
  runs = result['runs']
  axes[0].plot(runs, runs, ':', color='gray', label='every run distinct')
  for ax in axes:
    for name, color in zip(result['layers'], _colors()):
      part = result[name]
      ax.plot(runs, _nan_for_none(part['n_eff']), 'o-', color=color,
              label=f'{name} ({part["images"][-1]}/{result["n_images"]} images kept any)')
      ax.plot(runs, _nan_for_none(part['n_eff_all']), 'x--',
              color=color, alpha=0.6, label=f'{name}, every run\'s candidate (no threshold)')
    ax.set_xticks(runs)
    ax.set_xlabel('independent search runs')
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('effective number of targets, exp(H)')
  axes[1].set_title('zoomed', fontsize='medium')
  axes[0].legend(fontsize='small')
  fig.suptitle(_title(f'Target diversity (kept if p(true class) > {result["threshold"]:g}), '
                      f'mean over images', about))
  return _save(fig, pathlib.Path(path), result, about)


def plot_accuracy(result: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """Paper Fig. 4: student test accuracy vs the population size and generations of the search
  that made its targets.

  Args:
    result: :func:`decouple_jax.analysis.scaling.accuracy_vs_compute`'s output.
    path: the PNG to write; the JSON goes beside it (same name, .json).
    about: :func:`describe` of the run.
  """
  def draw(ax, part, x):
    ax.plot(x, 100 * np.asarray(part['test_accuracy']), 'o-', label='search-based student')
  fig = _sweep_figure(result, draw, 'test accuracy (%)', 'search population size')
  fig.suptitle(_title(f'Accuracy vs search compute, {result["train_images"]} training images',
                      about))
  return _save(fig, pathlib.Path(path), result, about)


_MEASURE_LABELS = {'cosine_distance': 'cosine distance to searched target',
                   'within_entropy': 'within-class collision entropy (nats)',
                   'between_entropy': 'between-class collision entropy (nats)'}


def _plot_trajectories(runs: dict, measures: tuple[str, ...], what: str,
                       path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """One row per measure, one column per block, one line per run and probe set (solid:
  training images, dashed: hold-out images) against epochs."""
  fig, axes = plt.subplots(len(measures), 3, figsize=(12, 3.4 * len(measures)), squeeze=False,
                           layout='constrained')
  numbers = {}
  for (method, records), color in zip(runs.items(), _colors()):
    numbers[method] = {}
    for probe, style in (('train', 'o-'), ('holdout', 's--')):
      for row, measure in zip(axes, measures):
        epochs, values = trajectories.trajectory(records, measure, probe)
        if not epochs:
          continue
        numbers[method].setdefault(probe, {'epochs': epochs})[measure] = values.tolist()
        for block, ax in enumerate(row):
          ax.plot(epochs, values[:, block], style, color=color,
                  label=f'{method}, {probe} images')
  for row, measure in zip(axes, measures):
    row[0].set_ylabel(_MEASURE_LABELS[measure])
    for block, ax in enumerate(row):
      ax.set_title(f'block {block}', fontsize='medium')
      ax.set_xlabel('epoch')
      ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
      ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize='small')
  fig.suptitle(_title(what, about))
  return _save(fig, pathlib.Path(path), numbers, about)


def plot_target_distance(runs: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """Paper Fig. 5: cosine distance between the searched targets and each run's block outputs
  per epoch.

  Args:
    runs: {method label (e.g. 'SGD'): its ``metrics.jsonl`` records}, logged with
      :func:`decouple_jax.analysis.trajectories.make_epoch_callback`; the JSON holds
      {method: {probe: {'epochs', measure: (epochs, 3) values}}}.
    path: the PNG to write; the JSON goes beside it.
    about: :func:`describe` of the run.
  """
  return _plot_trajectories(runs, ('cosine_distance',),
                            'Distance of block outputs to the searched targets', path, about)


def plot_class_entropy(runs: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """Paper Figs. 6-7: within- and between-class collision entropy of each run's block outputs
  per epoch (arguments as :func:`plot_target_distance`)."""
  return _plot_trajectories(runs, ('within_entropy', 'between_entropy'),
                            'Collision entropy of block outputs over training', path, about)


def plot_training_curves(runs: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """Hold-out accuracy per epoch of every run (left) and each student's MSE per block (right).

  Args:
    runs: {label (e.g. 'SGD, seed 0'): its ``metrics.jsonl`` records}; a run whose records
      hold 'mse_block0' is drawn on the right too.
    path: the PNG to write; the JSON beside it holds {label: {'epochs', 'holdout_accuracy'
      (%), 'mse' ((epochs, 3) or absent)}}.
    about: :func:`describe` of the run.
  """
  fig, (acc_ax, mse_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout='constrained')
  numbers = {}
  for (label, records), color in zip(runs.items(), _colors()):
    logged = [r for r in records if 'holdout_accuracy' in r]
    epochs = [r['epoch'] for r in logged]
    acc = [100 * r['holdout_accuracy'] for r in logged]
    numbers[label] = {'epochs': epochs, 'holdout_accuracy': acc}
    acc_ax.plot(epochs, acc, 'o-', color=color, label=label)
    if logged and 'mse_block0' in logged[0]:
      mse = [[r[f'mse_block{l}'] for l in range(3)] for r in logged]
      numbers[label]['mse'] = mse
      for l, style in enumerate(('o-', 's--', '^:')):
        mse_ax.plot(epochs, [m[l] for m in mse], style, color=color, label=f'{label}, block {l}')
  acc_ax.set_ylabel('hold-out accuracy (%)')
  mse_ax.set_ylabel('training MSE to the searched targets')
  mse_ax.set_yscale('log')
  for ax in (acc_ax, mse_ax):
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize='small')
  fig.suptitle(_title('Training curves', about))
  return _save(fig, pathlib.Path(path), numbers, about)


def plot_feedback(results: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """Accuracy per round of the search-learn loop against SGD (left), and the search's mean
  best loss per layer in every round (right).

  Args:
    results: :func:`decouple_jax.feedback.run_feedback`'s output.
    path: the PNG to write; the JSON beside it holds the plotted numbers (accuracies in %).
    about: :func:`describe` of the run.
  """
  rounds = results['rounds']
  x = [r['round'] for r in rounds]
  numbers = {
      'student': results['student'],
      'rounds': x,
      'test_accuracy': [100 * r['test_accuracy'] for r in rounds],
      'holdout_accuracy': [None if r['holdout_accuracy'] is None else 100 * r['holdout_accuracy']
                           for r in rounds],
      'sgd_test_accuracy': 100 * results['sgd']['test_accuracy'],
      'mean_init_loss': [r['mean_init_loss'] for r in rounds],
      'mean_best_loss': [list(r['mean_best_loss'].values()) for r in rounds],
      'layers': list(rounds[0]['mean_best_loss']),
  }
  fig, (acc_ax, ce_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout='constrained')
  acc_ax.plot(x, numbers['test_accuracy'], 'o-', label=f'{results["student"]}, test')
  acc_ax.plot(x, _nan_for_none(numbers['holdout_accuracy']), 's--', label='the same, hold-out')
  acc_ax.axhline(numbers['sgd_test_accuracy'], color='k', ls=':',
                 label=f'SGD, same network, test ({numbers["sgd_test_accuracy"]:.2f}%)')
  acc_ax.set_ylabel('accuracy (%)')
  ce_ax.plot(x, numbers['mean_init_loss'], 'k--', label='before the search')
  for l, name in enumerate(numbers['layers']):
    ce_ax.plot(x, [b[l] for b in numbers['mean_best_loss']], 'o-', label=f'after {name}')
  ce_ax.set_ylabel('mean best cross-entropy (nats)')
  for ax in (acc_ax, ce_ax):
    ax.set_xlabel('round (1: the untrained search network)')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  fig.suptitle(_title('Search and learning in a loop', about))
  return _save(fig, pathlib.Path(path), numbers, about)


def plot_gap_vs_compute(curve: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """The hold-out gap between SGD and the search-based student against one kind of compute
  (the search's or the student's), log-log, with the fitted power law.

  Args:
    curve: ``kind`` ('search' or 'student'), optionally ``reading`` (what the points share,
      for the title), ``compute`` (each point's compute, in ``unit``),
      ``seconds`` (each point's search or student seconds), ``holdout_accuracy`` (%),
      ``sgd_holdout_accuracy`` (%, the SGD the gap is taken to), and ``fit``:
      ``{'coef': a, 'slope': b}`` of gap = a * compute**b (points), or None; optionally
      ``fit_upper``, the same fitted to the largest computes alone.
    path: the PNG to write; the JSON beside it holds ``curve``.
    about: :func:`describe` of the study.
  """
  x = np.asarray(curve['compute'], float)
  gap = curve['sgd_holdout_accuracy'] - np.asarray(curve['holdout_accuracy'])
  fig, ax = plt.subplots(figsize=(6.5, 4.4), layout='constrained')
  ax.plot(x, gap, 'o', label='hold-out gap to SGD (same network, same images)')
  for xi, y, s in zip(x, gap, curve['seconds']):
    ax.annotate(f'{s:.0f} s', (xi, y), textcoords='offset points', xytext=(5, 4),
                fontsize='small')
  for key, style, which in (('fit', 'k--', 'every point'), ('fit_upper', 'k:', '3 largest')):
    if curve.get(key) is not None:
      xs = np.geomspace(x.min(), x.max() * 8, 50)
      a, b = curve[key]['coef'], curve[key]['slope']
      ax.plot(xs, a * xs ** b, style, label=f'fit, {which}: {a:.3g} * x^{b:.2f}')
  ax.axhline(1.0, color='gray', ls=':', label='1 point')
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_formatter(ticker.ScalarFormatter())
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel(f'x = {curve["unit"]} (label: {curve["kind"]} seconds)')
  ax.set_ylabel('SGD minus student, hold-out (points)')
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize='small')
  reading = f', {curve["reading"]}' if curve.get('reading') else ''
  fig.suptitle(_title(f'Gap to SGD against {curve["kind"]} compute{reading}', about))
  return _save(fig, pathlib.Path(path), curve, about)


def plot_ensembles(results: dict, path: str | pathlib.Path, about: dict) -> pathlib.Path:
  """Ensemble test accuracy against the number of members k, one line per family (left), and
  each pair of members' disagreement against their mean accuracy, with each family's mean
  (right).

  Args:
    results: :func:`decouple_jax.ensemble.run_ensemble`'s output.
    path: the PNG to write; the JSON beside it holds, per family, 'k', 'accuracy' (%),
      'pair_accuracy' and 'pair_disagreement' (%, one entry per pair i < j).
    about: :func:`describe` of the run.
  """
  fig, (acc_ax, dis_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout='constrained')
  numbers = {}
  for (family, f), color in zip(results['families'].items(), _colors()):
    curve = f['curve']
    acc = [100 * a for a in f['per_member']['accuracy']]
    i, j = np.triu_indices(len(acc), k=1)
    numbers[family] = {
        'k': curve['k'], 'accuracy': [100 * a for a in curve['accuracy']],
        'pair_accuracy': ((np.take(acc, i) + np.take(acc, j)) / 2).tolist(),
        'pair_disagreement': (100 * np.asarray(f['pairwise_disagreement'])[i, j]).tolist()}
    n = numbers[family]
    acc_ax.plot(n['k'], n['accuracy'], 'o-', color=color, label=family)
    dis_ax.plot(n['pair_accuracy'], n['pair_disagreement'], 'o', color=color, alpha=0.5,
                label=family)
    dis_ax.plot(np.mean(acc), 100 * f['disagreement'], '*', color=color, markersize=14,
                markeredgecolor='k')
  acc_ax.set_xlabel('members averaged, k (mean over every k-subset)')
  acc_ax.set_ylabel('test accuracy of the averaged softmax (%)')
  acc_ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  dis_ax.set_title('dots: pairs of members; stars: family means', fontsize='medium')
  dis_ax.set_xlabel('single-model test accuracy (%, mean of the pair)')
  dis_ax.set_ylabel('disagreement: test images predicted differently (%)')
  for ax in (acc_ax, dis_ax):
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  fig.suptitle(_title(f'Ensembles of {results["members"]} members', about))
  return _save(fig, pathlib.Path(path), numbers, about)
