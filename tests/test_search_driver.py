"""The search driver: a killed search resumes to the same store; another config is refused."""

import dataclasses

import jax
import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax import data
from decouple_jax import memory
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.search import driver, sharding, store_ids
from decouple_jax.search.target_store import StoreError, TargetStore

SEARCH = cfglib.SearchConfig(
    model=cfglib.ModelConfig(widths=(8, 8, 8), whiten_images=64),
    layers={name: dataclasses.replace(l, generations=g)
            for (name, l), g in zip(cfglib.PAPER_SCHEDULE.items(), (2, 1, 1, 1))},
    population=12, top_k=2, n_explore=4, n_refine=6, batch_images=8, chunk_size=32)


@pytest.fixture(scope='module')
def setup(mnist_dir):
  data_cfg = cfglib.DataConfig(dir=str(mnist_dir), train_limit=96, holdout=64, test_limit=64)
  return data_cfg, data.load_dataset(data_cfg), sharding.make_mesh(jax.devices()[:1])


class _Killed(Exception):
  pass


@pytest.mark.parametrize('average_of', [1, 2])
def test_killed_search_resumes_to_the_same_store(setup, tmp_path, monkeypatch, average_of):
  data_cfg, ds, mesh = setup
  search_cfg = dataclasses.replace(SEARCH, average_of=average_of)
  full = driver.run_search(data_cfg, search_cfg, tmp_path / 'full', ds=ds, mesh=mesh)

  write = TargetStore.write_chunk
  calls = []

  def dies_on_second_chunk(self, c, *args, **kwargs):
    calls.append(c)
    if len(calls) == 2:
      raise _Killed  # the search of chunk 1 is lost, chunk 0 is on disk
    return write(self, c, *args, **kwargs)
  monkeypatch.setattr(TargetStore, 'write_chunk', dies_on_second_chunk)
  with pytest.raises(_Killed):
    driver.run_search(data_cfg, search_cfg, tmp_path / 'killed', ds=ds, mesh=mesh)
  monkeypatch.setattr(TargetStore, 'write_chunk', write)
  assert TargetStore.open(tmp_path / 'killed').missing_chunks() == [1, 2]

  resumed = driver.run_search(data_cfg, search_cfg, tmp_path / 'killed', ds=ds, mesh=mesh)
  summary = runlog.read_json(tmp_path / 'killed' / 'summary.json')
  assert summary['images_this_run'] == 64  # only the two missing chunks were searched
  for a, b in zip(full.read(), resumed.read()):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(full.best_loss, resumed.best_loss)
  # The mean targets' own loss, from every chunk's log record, the killed run's too.
  assert ('mean_target_loss' in summary) == (average_of > 1)
  if average_of > 1:
    assert summary['mean_target_loss'] == pytest.approx(
        runlog.read_json(tmp_path / 'full' / 'summary.json')['mean_target_loss'], rel=1e-6)


def test_store_of_another_search_config_is_refused(setup, tmp_path):
  data_cfg, ds, mesh = setup
  small = dataclasses.replace(SEARCH, chunk_size=96)
  driver.run_search(data_cfg, small, tmp_path, ds=ds, mesh=mesh)
  with pytest.raises(StoreError) as e:
    driver.run_search(data_cfg, dataclasses.replace(small, seed=1), tmp_path, ds=ds, mesh=mesh)
  # The store keeps its config, so the refusal names the setting that changed.
  assert 'config.search.seed: expected 1, found 0' in str(e.value)


def test_batch_size_does_not_change_the_store_hash(setup):
  data_cfg, ds, _ = setup
  h = lambda search_cfg, data_cfg=data_cfg: store_ids.StoreId(data_cfg, search_cfg, ds).hash()
  assert h(SEARCH) == h(dataclasses.replace(SEARCH, batch_images=3))
  assert h(SEARCH) == h(dataclasses.replace(SEARCH, batch_images='auto'))
  # The search runs forward only: how the conv's gradient is formed cannot change a target.
  for impl in ('xla', 'matmul'):
    assert h(SEARCH) == h(dataclasses.replace(SEARCH, model=dataclasses.replace(
        SEARCH.model, conv_impl=impl)))
  # Nor do where the files are and whether they were checked (the data's content counts).
  assert h(SEARCH) == h(SEARCH, dataclasses.replace(data_cfg, dir='/moved', verify=False))
  assert h(SEARCH) != h(dataclasses.replace(SEARCH, init_noise=0.2))


def test_store_of_another_engine_version_is_refused(setup, tmp_path, monkeypatch):
  data_cfg, ds, mesh = setup
  small = dataclasses.replace(SEARCH, chunk_size=96)
  driver.run_search(data_cfg, small, tmp_path, ds=ds, mesh=mesh)
  monkeypatch.setattr(store_ids, 'ENGINE_VERSION', store_ids.ENGINE_VERSION + 1)
  with pytest.raises(StoreError, match='config_hash'):
    driver.run_search(data_cfg, small, tmp_path, ds=ds, mesh=mesh)


def test_auto_batch_fills_a_pretend_memory_and_a_setting_that_cannot_fit_is_refused(setup,
                                                                                    tmp_path):
  data_cfg, ds, mesh = setup
  model, variables = models.init_for_dataset(SEARCH.model, ds, SEARCH.untrained_network_seed)
  fn = sharding.make_search_fn(model, variables, SEARCH, mesh)
  need = lambda b: memory.program_bytes(fn.compile(b, ds.image_shape))
  auto = dataclasses.replace(SEARCH, batch_images='auto')
  budget = need(3)
  chosen = sharding.images_per_call(fn, auto, ds.image_shape, 32, memory_bytes=budget)
  assert need(chosen) <= budget < need(chosen + 1)
  # A chunk of 2 images never needs more than 2 at once, however large the memory.
  assert sharding.images_per_call(fn, auto, ds.image_shape, 2, memory_bytes=2**40) == 2
  with pytest.raises(memory.DoesNotFit, match=r'search.batch_images=8 needs [\d.]+ [kMG]B per '
                     r'device, the device has [\d.]+ [kMG]B usable: lower it'):
    sharding.images_per_call(fn, SEARCH, ds.image_shape, 32, memory_bytes=budget)
  with pytest.raises(memory.DoesNotFit, match=r'one image per device needs [\d.]+ [kMG]B, the '
                     r'device has [\d.]+ [kMG]B usable'):
    driver.run_search(data_cfg, auto, tmp_path, ds=ds, mesh=mesh, memory_bytes=need(1) - 1)


@pytest.mark.parametrize('average_of', [1, 2])
def test_in_memory_search_equals_the_stored_targets_bitwise(setup, tmp_path, average_of):
  data_cfg, ds, mesh = setup
  search_cfg = dataclasses.replace(SEARCH, average_of=average_of)
  store = driver.run_search(data_cfg, search_cfg, tmp_path, ds=ds, mesh=mesh)
  network = models.init_for_dataset(SEARCH.model, ds, SEARCH.untrained_network_seed)
  result = sharding.search_images(
      np.asarray(data.normalize(ds.train_images, ds.mean, ds.std)), ds.train_labels,
      ds.train_index, search_cfg, network, mesh=mesh)
  for stored, searched in zip(store.read(), result.targets):
    np.testing.assert_array_equal(stored, searched)
  np.testing.assert_array_equal(store.best_loss, result.best_loss)
  summary = runlog.read_json(tmp_path / 'summary.json')
  if average_of > 1:
    # The summary adds the mean targets' own loss, which is not the searches' best.
    assert list(summary['mean_target_loss'].values()) == pytest.approx(
        result.target_loss.mean(0), rel=1e-5)
    assert summary['mean_target_loss']['block1'] != pytest.approx(
        summary['mean_best_loss']['block1'], rel=1e-3)
  else:
    assert 'mean_target_loss' not in summary
