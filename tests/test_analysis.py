"""The paper's analyses: exact values of the measures, and analyze.py end to end."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax import data
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.analysis import diversity
from decouple_jax.analysis import plots
from decouple_jax.analysis import scaling
from decouple_jax.analysis import trajectories
from decouple_jax.learn import sgd
from decouple_jax.learn import trainer
from decouple_jax.mesh import mesh_1d

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_identical_rows_span_one_direction():
  x = np.tile([[1.0, -2.0, 3.0]], (5, 1))
  assert diversity.collision_entropy(x) == pytest.approx(0.0, abs=1e-12)
  assert diversity.effective_number(x) == pytest.approx(1.0)
  # Scale and sign do not matter: cosine similarity squared.
  assert diversity.effective_number(x * [[1], [2], [-3], [0.5], [7]]) == pytest.approx(1.0)


@pytest.mark.parametrize('n', [1, 2, 4, 7])
def test_orthogonal_rows_span_n_directions(n):
  x = 3.0 * np.eye(8)[:n].reshape(n, 2, 4)
  assert diversity.collision_entropy(x) == pytest.approx(np.log(n))
  assert diversity.effective_number(x) == pytest.approx(n)


def test_two_rows_at_60_degrees():
  # K = [[1, 1/2], [1/2, 1]]: sum K^2 = 2.5, trace 2, H = -log(2.5 / 4).
  x = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])
  assert diversity.collision_entropy(x) == pytest.approx(np.log(1.6))


def test_class_collision_entropy():
  # Class 0: two orthogonal rows (H = log 2); class 1: three copies of one row (H = 0).
  # Class means (0.5, 0.5, 0) and (0, 0, 1) are orthogonal: between = log 2.
  x = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0], [0, 0, 1.0], [0, 0, 5.0]])
  within, between = diversity.class_collision_entropy(x, np.array([0, 0, 1, 1, 1]))
  assert within == pytest.approx(np.log(2) / 2)
  assert between == pytest.approx(np.log(2))


def test_cosine_distance_per_image():
  a = np.array([[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 2.0]]])
  b = np.array([[[3.0, 0.0]], [[0.0, 1.0]], [[-1.0, -1.0]], [[1.0, 1.0]]])
  np.testing.assert_allclose(diversity.cosine_distance(a, b),
                             [0.0, 1.0, 2.0, 1 - np.sqrt(0.5)], atol=1e-12)
  with pytest.raises(ValueError, match='equal shapes'):
    diversity.cosine_distance(a, b[:2])


def test_kept_effective_numbers_over_runs():
  # 3 runs x 2 images. Image 0: all kept, directions e0, e1, e0 -> N_eff 1, 2, 9/5.
  # Image 1: run 0 dropped (p = exp(-2) < 0.5), then two orthogonal directions -> -, 1, 2.
  targets = np.array([[[1.0, 0.0], [5.0, 5.0]],
                      [[0.0, 1.0], [1.0, 1.0]],
                      [[2.0, 0.0], [1.0, -1.0]]])
  loss = np.array([[0.1, 2.0], [0.1, 0.1], [0.1, 0.1]])
  n_eff, images, kept = scaling.kept_effective_numbers(targets, loss)
  np.testing.assert_allclose(n_eff, [1.0, 1.5, (1.8 + 2.0) / 2])
  np.testing.assert_array_equal(images, [1, 2, 2])
  np.testing.assert_allclose(kept, [0.5, 1.5, 2.5])
  n_eff, images, _ = scaling.kept_effective_numbers(targets, loss, threshold=0.99)
  assert np.isnan(n_eff).all() and (images == 0).all()


def test_scaled_search_configs_keep_proportions():
  base = cfglib.SearchConfig()  # 240 = 20 + 100 + 120
  half = scaling.scale_population(base, 120)
  assert (half.population, half.top_k, half.n_explore, half.n_refine) == (120, 10, 50, 60)
  tiny = scaling.scale_population(base, 5)
  assert (tiny.top_k, tiny.n_explore, tiny.n_refine) == (1, 2, 2)
  gens = scaling.scale_generations(base, 0.5)
  assert [l.generations for l in gens.layers.values()] == [150, 50, 50, 5]
  assert [l.generations for l in scaling.scale_generations(base, 0.01).layers.values()] == [
      3, 1, 1, 1]
  assert gens.layers['block0'].alpha == base.layers['block0'].alpha


def _analyze(workdir, mnist_dir, *extra):
  """Runs launch/analyze.py on configs/mnist.py:smoke (one device: fastest on 2 cores)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  cmd = [sys.executable, 'launch/analyze.py', '--config=configs/mnist.py:smoke',
         f'--workdir={workdir}', f'--config.data.dir={mnist_dir}', *extra]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}'
  return proc.stdout


@pytest.mark.slow
def test_launch_analyze_all_writes_every_figure_and_resumes(tmp_path, mnist_dir):
  # configs/mnist.py:smoke sizes the analyses: 2 images, populations 6 and 12 (the config's),
  # generations x1, 2 diversity runs with threshold 0 (smoke searches never reach p > 0.5),
  # 128 training images and 32 probe images for accuracy and trajectories.
  one_epoch = ('--config.sgd.train.optim.epochs=1', '--config.student.train.optim.epochs=1')
  stdout = _analyze(tmp_path, mnist_dir, '--analysis=all', *one_epoch)
  for stem in ('scaling', 'diversity', 'accuracy', 'target_distance', 'class_entropy'):
    assert f'{tmp_path}/{stem}.png' in stdout
    assert (tmp_path / f'{stem}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  about = {'data': 'mnist', 'config': 'mnist:smoke', 'scale': 'scaled down (smoke)'}
  layers = ['block0', 'block1', 'block2', 'logits']

  scaling_json = json.loads((tmp_path / 'scaling.json').read_text())
  assert {k: scaling_json[k] for k in about} == about
  assert scaling_json['layers'] == layers and scaling_json['n_images'] == 2
  assert scaling_json['population']['sizes'] == [6, 12]
  assert scaling_json['population']['parts'] == [[1, 2, 3], [2, 4, 6]]
  assert np.shape(scaling_json['population']['mean_best_loss']) == (2, 4)
  assert scaling_json['generations']['per_layer'] == [[2, 1, 1, 1]]
  # The base setting is in both sweeps and is searched once.
  assert (scaling_json['generations']['mean_best_loss'][0] ==
          scaling_json['population']['mean_best_loss'][1])

  diversity_json = json.loads((tmp_path / 'diversity.json').read_text())
  assert {k: diversity_json[k] for k in about} == about
  assert diversity_json['runs'] == [1, 2] and diversity_json['seeds'] == [0, 1]
  for name in layers:
    part = diversity_json[name]
    assert part['images'] == [2, 2] and part['kept'] == [1.0, 2.0]
    assert part['n_eff_all'] == part['n_eff']  # threshold 0 keeps every candidate anyway
    assert part['n_eff'][0] == pytest.approx(1.0)
    assert 1.0 <= part['n_eff'][1] <= 2.0

  accuracy_json = json.loads((tmp_path / 'accuracy.json').read_text())
  assert accuracy_json['train_images'] == 128 and accuracy_json['config'] == 'mnist:smoke'
  assert accuracy_json['population']['sizes'] == [6, 12]
  assert accuracy_json['generations']['per_layer'] == [[2, 1, 1, 1]]
  accuracies = (accuracy_json['population']['test_accuracy'] +
                accuracy_json['generations']['test_accuracy'])
  assert all(0 <= a <= 1 for a in accuracies)
  # Population 12 with generations x1 is the config's own search: one run serves both.
  assert (accuracy_json['population']['test_accuracy'][1] ==
          accuracy_json['generations']['test_accuracy'][0])
  assert len(list((tmp_path / 'accuracy').iterdir())) == 2
  # Two search settings; the trajectories reuse the config's own training-split search and
  # add its hold-out search.
  searches = sorted((tmp_path / 'searches').iterdir())
  assert len(searches) == 2
  assert sorted(p.name for s in searches for p in s.iterdir()) == [
      'targets', 'targets', 'targets_holdout']

  distance = json.loads((tmp_path / 'target_distance.json').read_text())
  entropy = json.loads((tmp_path / 'class_entropy.json').read_text())
  for method in ('SGD', 'search-based (all_layers)'):
    for probe in ('train', 'holdout'):
      assert distance[method][probe]['epochs'] == [1]
      assert np.all(np.abs(np.array(distance[method][probe]['cosine_distance'])) <= 2)
      assert np.shape(entropy[method][probe]['within_entropy']) == (1, 3)
      assert np.shape(entropy[method][probe]['between_entropy']) == (1, 3)

  # A second run finds every search and training run finished: same numbers.
  _analyze(tmp_path, mnist_dir, '--analysis=all', *one_epoch)
  assert json.loads((tmp_path / 'accuracy.json').read_text()) == accuracy_json
  assert json.loads((tmp_path / 'target_distance.json').read_text()) == distance


def test_representation_metrics_exact_values():
  # Image 0 is orthogonal to its target, images 1 and 2 match theirs: mean distance 1/3.
  # Class 0's two block outputs are orthogonal (log 2), class 1 has one (0); the class means
  # (1/2, 1/2) and (1, 1) are parallel (0).
  h = np.array([[[[1.0, 0.0]]], [[[0.0, 1.0]]], [[[1.0, 1.0]]]])
  t = np.array([[[[0.0, 1.0]]], [[[0.0, 3.0]]], [[[1.0, 1.0]]]])
  out = trajectories.representation_metrics([h], [t], np.array([0, 0, 1]))
  assert out == pytest.approx({'repr_train_cosine_distance_block0': 1 / 3,
                               'repr_train_within_entropy_block0': np.log(2) / 2,
                               'repr_train_between_entropy_block0': 0.0})


def test_epoch_callback_logs_trajectories_and_plots(tmp_path, mnist_dir):
  ds = data.load_dataset(cfglib.DataConfig(dir=str(mnist_dir), train_limit=128, holdout=64,
                                           test_limit=64))
  model, variables = models.init_for_dataset(
      cfglib.ModelConfig(widths=(8, 8, 8), whiten_images=64), ds, 0)
  train = cfglib.TrainConfig(optim=cfglib.OptimConfig(batch_size=64, epochs=2, clip_norm=2.0),
                             eval_batch=64, flip=False)
  shapes = models.tap_shapes(model, ds.image_shape)[:3]
  targets = [np.random.default_rng(l).normal(size=(32, *s)) for l, s in enumerate(shapes)]
  probes = {'train': trajectories.Probe(ds.train_images[:32], ds.train_labels[:32], targets),
            'holdout': trajectories.Probe(ds.holdout_images[:32], ds.holdout_labels[:32],
                                          targets)}
  callback = trajectories.make_epoch_callback(ds, probes, batch_size=16, bn_batch_stats=True)
  trainer.fit(model, variables, sgd.cross_entropy_loss_fn(model, 10),
              trainer.TrainData.from_dataset(ds), train, tmp_path / 'run', config={'run': 'h'},
              mesh=mesh_1d('batch', jax.devices()[:1]), epoch_callback=callback)
  records = runlog.JsonLines(tmp_path / 'run' / 'metrics.jsonl').records()
  for probe in probes:
    epochs, distance = trajectories.trajectory(records, 'cosine_distance', probe)
    assert epochs == [1, 2] and distance.shape == (2, 3)
    # Random targets are nearly orthogonal to any block output.
    assert np.all(np.abs(distance - 1) < 0.2)
  _, within = trajectories.trajectory(records, 'within_entropy')
  assert np.all((within >= 0) & (within <= np.log(32)))

  about = plots.describe('mnist', 'test', 'scaled down (test)')
  runs = {'SGD': records, 'search-based': records}
  for plot, measures in ((plots.plot_target_distance, ['cosine_distance']),
                         (plots.plot_class_entropy, ['within_entropy', 'between_entropy'])):
    png = plot(runs, tmp_path / f'{plot.__name__}.png', about)
    assert png.read_bytes()[:4] == b'\x89PNG'
    numbers = json.loads(png.with_suffix('.json').read_text())
    assert numbers['data'] == 'mnist'
    for probe in probes:
      assert numbers['SGD'][probe]['epochs'] == [1, 2]
      assert all(np.shape(numbers['SGD'][probe][m]) == (2, 3) for m in measures)
