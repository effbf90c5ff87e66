"""Operators by name: the registry's errors, an operator's code identity, and a registered
operator end to end (config -> run_search -> store identity -> train_student)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax import data
from decouple_jax import models
from decouple_jax.learn import student, trainer
from decouple_jax.search import driver, fast, registry, sharding, store_ids
from decouple_jax.search.target_store import StoreError

import test_search_driver

# The driver tests' search, in one chunk of the 64 images searched here.
SEARCH = dataclasses.replace(test_search_driver.SEARCH, chunk_size=64)
STUDENT = cfglib.StudentConfig(
    model=dataclasses.replace(SEARCH.model, tap='pre_gelu', tap_scale=True),
    train=cfglib.TrainConfig(optim=cfglib.OptimConfig(batch_size=64, epochs=1, clip_norm=2.0),
                             eval_batch=64, flip=False))


@registry.register('mutation')
def heavy_tailed(key, shape, *, std=1.0):
  """Laplace draws of standard deviation ``std``: heavier tails than the default Gaussian."""
  return jax.random.laplace(key, shape) * (std / jnp.sqrt(2.0))


def with_operator(cfg, kind, name, **params):
  return dataclasses.replace(cfg, operators=dataclasses.replace(
      cfg.operators, **{kind: cfglib.OperatorConfig(name, params)}))


@pytest.fixture(scope='module')
def setup(mnist_dir):
  data_cfg = cfglib.DataConfig(dir=str(mnist_dir), train_limit=64, holdout=64, test_limit=64)
  return data_cfg, data.load_dataset(data_cfg), sharding.make_mesh(jax.devices()[:1])


def test_unknown_names_and_parameters_are_config_errors_naming_the_choices():
  with pytest.raises(cfglib.ConfigError, match=r"^search.operators.mutation.name='nope' is not "
                     r"registered; registered: \[.*'gaussian'.*'heavy_tailed'.*\]"):
    registry.resolve(with_operator(SEARCH, 'mutation', 'nope').operators)
  with pytest.raises(cfglib.ConfigError, match=r"^search.operators.mutation.params: \['scale'\] "
                     r"are not parameters of 'heavy_tailed'; its parameters: \['key', 'shape', "
                     r"'std'\]$"):
    registry.resolve(with_operator(SEARCH, 'mutation', 'heavy_tailed', scale=3.0).operators)
  with pytest.raises(cfglib.ConfigError, match=r"'anchored' needs \['weight'\]$"):
    registry.resolve(with_operator(SEARCH, 'fitness', 'anchored').operators)


def _function(source: str, scale: float = 2.0):
  """A function named ``noise`` made from ``source``, as a notebook cell makes one."""
  namespace = {'jax': jax, 'SCALE': scale, '__name__': '__main__'}
  exec(source, namespace)  # pylint: disable=exec-used
  return namespace['noise']


def test_code_id_tells_apart_lambdas_edited_bodies_and_captured_values():
  first = lambda key, shape: jax.random.normal(key, shape)
  second = lambda key, shape: jax.random.normal(key, shape) * 2.0
  assert first.__qualname__ == second.__qualname__  # a name alone cannot tell them apart
  assert registry.code_id(first) != registry.code_id(second)
  source = 'def noise(key, shape):\n  return jax.random.normal(key, shape) * SCALE\n'
  same = _function(source)
  assert registry.code_id(same) == registry.code_id(_function(source))
  edited = _function(source.replace('* SCALE', '* SCALE + 1.0'))
  assert registry.code_id(edited) != registry.code_id(same)
  assert registry.code_id(_function(source, 3.0)) != registry.code_id(same)  # a global value
  closing = lambda scale: lambda key, shape: jax.random.normal(key, shape) * scale
  assert registry.code_id(closing(1.0)) != registry.code_id(closing(2.0))


def test_editing_a_registered_operator_gives_its_stores_a_new_identity(setup):
  data_cfg, ds, _ = setup
  cfg = with_operator(SEARCH, 'mutation', 'notebook_noise')
  source = 'def noise(key, shape):\n  return jax.random.normal(key, shape)\n'
  ids = []
  for body in (source, source.replace('shape)\n', 'shape) * 1.5\n')):
    registry.register('mutation', 'notebook_noise')(_function(body))
    ids.append(store_ids.StoreId(data_cfg, cfg, ds).hash())
  registry.register('mutation', 'notebook_noise')(_function(source))
  assert ids[0] != ids[1] and store_ids.StoreId(data_cfg, cfg, ds).hash() == ids[0]


def test_operator_names_and_parameters_enter_the_store_identity(setup):
  data_cfg, ds, _ = setup
  h = lambda cfg: store_ids.StoreId(data_cfg, cfg, ds).hash()
  variants = [SEARCH, with_operator(SEARCH, 'mutation', 'heavy_tailed'),
              with_operator(SEARCH, 'mutation', 'heavy_tailed', std=0.5),
              with_operator(SEARCH, 'fitness', 'anchored', weight=1.0),
              with_operator(SEARCH, 'fitness', 'anchored', weight=2.0)]
  assert len({h(cfg) for cfg in variants}) == len(variants)
  assert store_ids.StoreId(data_cfg, SEARCH, ds).config()['operators'] == 'library'


def test_a_registered_operator_computing_the_default_gives_the_default_targets(setup):
  """The registry only chooses: an operator doing what the default does searches bitwise alike
  (and the paper's constant alpha, written out, is the default)."""
  _, ds, mesh = setup
  registry.register('mutation', 'gaussian_again')(lambda key, shape: fast.normal(key, shape))
  explicit = dataclasses.replace(
      with_operator(SEARCH, 'mutation', 'gaussian_again'),
      layers={k: dataclasses.replace(l, alpha_schedule=cfglib.AlphaSchedule('constant'))
              for k, l in SEARCH.layers.items()})
  images = np.asarray(data.normalize(ds.train_images[:8], ds.mean, ds.std))
  model, variables = models.init_for_dataset(SEARCH.model, ds, SEARCH.untrained_network_seed)
  run = lambda cfg: sharding.make_search_fn(model, variables, cfg, mesh)(
      images, ds.train_labels[:8], ds.train_index[:8])
  for a, b in zip(jax.tree.leaves(run(SEARCH)), jax.tree.leaves(run(explicit))):
    np.testing.assert_array_equal(a, b)


def test_a_registered_operator_travels_from_the_config_to_the_student(setup, tmp_path):
  data_cfg, ds, mesh = setup
  custom = with_operator(SEARCH, 'mutation', 'heavy_tailed', std=1.0)
  store = driver.run_search(data_cfg, custom, tmp_path / 'targets', ds=ds, mesh=mesh)
  default = driver.run_search(data_cfg, SEARCH, tmp_path / 'default', ds=ds, mesh=mesh)
  assert store.spec.config['search']['operators']['mutation'] == {
      'name': 'heavy_tailed', 'params': {'std': 1.0}}
  assert not np.array_equal(store.read()[1], default.read()[1])
  results = student.train_student(data_cfg, custom, STUDENT, tmp_path / 'student',
                                  tmp_path / 'targets', ds=ds,
                                  mesh=trainer.mesh_1d('batch', jax.devices()[:1]))
  assert 0.0 <= results['test_accuracy'] <= 1.0
  with pytest.raises(StoreError, match="config.search.operators.mutation.name: expected "
                                       "'gaussian', found 'heavy_tailed'"):
    student.train_student(data_cfg, SEARCH, STUDENT, tmp_path / 'student_default',
                          tmp_path / 'targets', ds=ds)
