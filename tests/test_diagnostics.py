"""The student's diagnostics: R^2, p_hat's accuracy, the linear probe and the head's input."""

import jax
import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import models
from decouple_jax.learn import diagnostics
from decouple_jax.search import target_store


def test_r_squared_exact_values():
  target = np.array([[0.0, 1.0], [2.0, 5.0]])
  assert diagnostics.r_squared(target, target) == 1.0
  mean = np.broadcast_to(target.mean(0), target.shape)
  assert diagnostics.r_squared(mean, target) == pytest.approx(0.0, abs=1e-12)
  # SSE 1, SST (0-1)^2 + (2-1)^2 + (1-3)^2 + (5-3)^2 = 10.
  assert diagnostics.r_squared(target + [[1.0, 0.0], [0.0, 0.0]], target) == pytest.approx(0.9)


def test_r_squared_statistics_add_over_batches():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 10, 3, 3, 4))
  parts = [diagnostics.r2_stats(pred[s], target[s]) for s in (slice(0, 4), slice(4, 10))]
  together = diagnostics.r2_from_stats(diagnostics.add_r2_stats(*parts))
  assert together == pytest.approx(diagnostics.r_squared(pred, target), rel=1e-6)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_phat_accuracy_reads_the_cached_logits(tmp_path, dtype):
  logits = np.array([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
  shapes = ((2, 2, 1), (3,))
  spec = target_store.StoreSpec(shapes=shapes, dtype=dtype, num_images=4, chunk_size=4,
                                config_hash='c', data_name='mnist', seed=0,
                                index_hash=target_store.indices_hash(np.arange(4)))
  st = target_store.TargetStore.create_or_open(tmp_path, spec, np.arange(4))
  st.write_chunk(0, [np.zeros((4, 2, 2, 1)), logits], np.zeros((4, 2), np.float32),
                 np.zeros(4, np.float32))
  assert diagnostics.phat_accuracy(st, np.array([0, 1, 1, 0])) == 0.75


def test_linear_probe_separates_separable_features():
  rng = np.random.default_rng(0)
  centers = 4.0 * rng.normal(size=(3, 16))

  def draw(n):
    labels = rng.integers(0, 3, n)
    feats = centers[labels] + rng.normal(size=(n, 16))
    # A constant feature carries nothing and must not break standardisation.
    return np.concatenate([feats, np.ones((n, 1))], 1), labels
  (x, y), (x_test, y_test) = draw(300), draw(200)
  assert diagnostics.linear_probe(x, y, x_test, y_test, 3, epochs=200, lr=0.05) == 1.0


@pytest.mark.parametrize('batch_stats_mode', [True, False])
def test_features_are_the_heads_input(batch_stats_mode):
  model_cfg = cfglib.ModelConfig(widths=(4, 4, 4), convs_per_block=4, tap='pre_gelu',
                                 tap_scale=True)
  model = models.build(model_cfg, 10, 1, detach_head=True)
  images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  fn = diagnostics.make_features_fn(model, batch_stats_mode, np.zeros(1, np.float32),
                                    np.ones(1, np.float32))
  taps, features = fn(variables, images)
  assert features.shape == (6, 3 * 3 * 4)
  np.testing.assert_allclose(features @ variables['params']['head']['kernel'], taps[-1],
                             rtol=1e-5, atol=1e-5)


def test_random_feature_floor_is_the_probe_on_the_untrained_networks_head_input():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 30).astype(np.int32)
  mean, std = np.array([0.3], np.float32), np.array([0.4], np.float32)
  ds = datalib.Dataset('mnist', 10, images[:20], labels[:20], np.arange(20),
                       images[:0], labels[:0], np.arange(0), images[20:], labels[20:], mean, std,
                       fingerprint='test')
  model = models.build(cfglib.ModelConfig(widths=(4, 4, 4)), 10, 1, detach_head=True)
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  floor = diagnostics.random_feature_floor(model, variables, ds, batch_size=7, max_images=12,
                                           probe_epochs=50)
  # The probe sees the first max_images of each split, features in inference-form BatchNorm.
  fn = diagnostics.make_features_fn(model, False, mean, std)
  want = diagnostics.linear_probe(np.asarray(fn(variables, images[:12])[1]), labels[:12],
                                  np.asarray(fn(variables, images[20:30])[1]), labels[20:30], 10,
                                  epochs=50)
  assert floor == pytest.approx(want) and floor * 10 == pytest.approx(round(floor * 10))


def _store(directory, targets, logits):
  """A complete store of ``targets`` (block arrays) and ``logits`` at positions 0..N-1."""
  n = len(logits)
  spec = target_store.StoreSpec(shapes=tuple(t.shape[1:] for t in (*targets, logits)),
                                dtype='float32', num_images=n, chunk_size=n, config_hash='c',
                                data_name='mnist', seed=0,
                                index_hash=target_store.indices_hash(np.arange(n)))
  st = target_store.TargetStore.create_or_open(directory, spec, np.arange(n))
  st.write_chunk(0, [*targets, logits], np.zeros((n, len(targets) + 1), np.float32),
                 np.zeros(n, np.float32))
  return target_store.TargetStore.open(directory)


def test_target_diagnostics_measure_closeness_and_a_label_the_targets_carry(tmp_path):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (60, 28, 28, 1), dtype=np.uint8)
  labels = np.arange(60, dtype=np.int32) % 3
  mean, std = np.array([0.3], np.float32), np.array([0.4], np.float32)
  ds = datalib.Dataset('mnist', 3, images[:40], labels[:40], np.arange(40), images[40:],
                       labels[40:], np.arange(40, 60), images[:0], labels[:0], mean, std,
                       fingerprint='test')
  model = models.build(cfglib.ModelConfig(widths=(4, 4, 4)), 3, 1)
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  variables = {**variables, 'params': models.init_whitening(
      variables['params'], np.asarray(datalib.normalize(images[:40], mean, std)))}
  own = lambda x: model.apply(variables, datalib.normalize(x, mean, std),
                              use_running_average=True)[:3]
  logits = np.zeros((40, 3), np.float32)
  kept = [np.asarray(t) for t in own(images[:40])], [np.asarray(t) for t in own(images[40:])]
  d = diagnostics.target_diagnostics(model, variables, ds,
                                     _store(tmp_path / 'a', kept[0], logits),
                                     _store(tmp_path / 'b', kept[1], logits[:20]),
                                     batch_size=16, probe_epochs=50)
  # Targets that are the images' own activations: cosine 1, and the same probe.
  np.testing.assert_allclose(d['cos_to_activation'], 1.0, atol=1e-5)
  assert d['target_probe'] == d['activation_probe'] and d['images'] == [40, 20]

  # A class template far larger than the activation: every hold-out target is classified.
  templates = [10 * rng.normal(size=(3, *t.shape[1:])).astype(np.float32) for t in kept[0]]
  added = [[t + tpl[ds_labels] for t, tpl in zip(part, templates)]
           for part, ds_labels in zip(kept, (labels[:40], labels[40:]))]
  d = diagnostics.target_diagnostics(model, variables, ds,
                                     _store(tmp_path / 'c', added[0], logits),
                                     _store(tmp_path / 'd', added[1], logits[:20]),
                                     batch_size=16, probe_epochs=50)
  assert d['target_probe'] == [1.0, 1.0, 1.0]
  assert max(d['cos_to_activation']) < 0.5
  # What was added is the class template alone: all of its variance is between classes.
  np.testing.assert_allclose(d['class_fraction']['added'], 1.0, rtol=1e-5)
  assert min(d['class_fraction']['target']) > 0.9


def test_class_fraction_is_the_share_of_variance_between_class_means():
  labels = np.array([0, 0, 1, 1])
  # Class means +-1 along one axis, within-class spread +-1 along another: half and half.
  x = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
  assert diagnostics.class_fraction(x, labels, 2) == pytest.approx(0.5)
  assert diagnostics.class_fraction(x[:, :1], labels, 2) == pytest.approx(1.0)
  assert diagnostics.class_fraction(x[:, 1:], labels, 2) == pytest.approx(0.0)
