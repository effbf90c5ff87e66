"""Run identities: speed-only settings are in none, every other setting is."""

import dataclasses

import pytest

from decouple_jax import config as cfglib
from decouple_jax import identity
from decouple_jax import runlog
from decouple_jax.search import store_ids

# Changing how work is batched, placed, decomposed or saved, never what is computed.
SPEED_ONLY = {('SearchConfig', 'batch_images'), ('ModelConfig', 'conv_impl'),
              ('TrainConfig', 'checkpoint_every'), ('StudentConfig', 'device_targets_gb')}


def _marked(cls, seen=None) -> set:
  seen = set() if seen is None else seen
  for field in dataclasses.fields(cls):
    if field.metadata.get(cfglib.SPEED_ONLY):
      seen.add((cls.__name__, field.name))
    default = cfglib.field_default(cls, field.name)
    if dataclasses.is_dataclass(default):
      _marked(type(default), seen)
  return seen


def test_the_speed_only_fields_are_exactly_these():
  assert _marked(cfglib.ExperimentConfig) == SPEED_ONLY


def test_speed_only_fields_leave_every_identity_unchanged():
  exp = cfglib.ExperimentConfig()
  faster = dataclasses.replace(
      exp,
      search=dataclasses.replace(exp.search, batch_images=7, model=dataclasses.replace(
          exp.search.model, conv_impl='matmul')),
      student=dataclasses.replace(exp.student, device_targets_gb=0.0, train=dataclasses.replace(
          exp.student.train, checkpoint_every=5)))
  assert identity.of(faster) == identity.of(exp)
  assert identity.feedback_round(faster, _FakeDataset(), 2) == identity.feedback_round(
      exp, _FakeDataset(), 2)


@pytest.mark.parametrize('change', [
    lambda e: dataclasses.replace(e, search=dataclasses.replace(e.search, chunk_size=7)),
    lambda e: dataclasses.replace(e, student=dataclasses.replace(e.student, train=(
        dataclasses.replace(e.student.train, compute_dtype='bfloat16')))),
    lambda e: dataclasses.replace(e, student=dataclasses.replace(e.student, train=(
        dataclasses.replace(e.student.train, eval_batch=100)))),
])
def test_a_setting_that_changes_results_changes_the_identity(change):
  exp = cfglib.ExperimentConfig()
  ds = _FakeDataset()
  assert identity.feedback_round(change(exp), ds, 2) != identity.feedback_round(exp, ds, 2)


# identity.hash_of(identity.of(SearchConfig())), computed before SearchConfig had a
# network_seed: the field must leave the stores and runs of the searches before it their ids.
DEFAULT_SEARCH_HASH = '9f59a6434bc46191'


def test_a_search_network_seed_is_in_the_identity_only_when_it_picks_another_network():
  assert identity.hash_of(identity.of(cfglib.SearchConfig())) == DEFAULT_SEARCH_HASH
  exp = cfglib.ExperimentConfig(search=cfglib.SearchConfig(seed=3))
  with_network = lambda n: dataclasses.replace(exp, search=dataclasses.replace(
      exp.search, network_seed=n))
  ds = _FakeDataset()
  # network_seed = seed is the network None gives: one computation, one store, one student.
  store_id = lambda e: store_ids.StoreId(e.data, e.search, ds).hash()
  assert store_id(with_network(3)) == store_id(exp)
  assert identity.feedback_round(with_network(3), ds, 1) == identity.feedback_round(exp, ds, 1)
  assert store_id(with_network(4)) != store_id(exp)
  assert identity.feedback_round(with_network(4), ds, 1)['search']['network_seed'] == 4


def test_averaging_searches_is_in_the_identity_only_when_it_averages():
  ds = _FakeDataset()
  store_id = lambda search_cfg: store_ids.StoreId(cfglib.DataConfig(), search_cfg, ds).hash()
  one = cfglib.SearchConfig()
  assert identity.hash_of(identity.of(cfglib.SearchConfig(average_of=1))) == DEFAULT_SEARCH_HASH
  assert store_id(cfglib.SearchConfig(average_of=1)) == store_id(one)
  assert store_id(cfglib.SearchConfig(average_of=2)) != store_id(one)
  assert identity.of(cfglib.SearchConfig(average_of=2))['average_of'] == 2


def test_finished_reads_a_record_refuses_another_and_waits_for_required(tmp_path):
  config = {'a': 1}
  assert identity.finished(tmp_path / 'none.json', config) is None
  runlog.write_json(tmp_path / 'r.json', identity.record(config, accuracy=0.5))
  assert identity.finished(tmp_path / 'r.json', config)['accuracy'] == 0.5
  assert identity.finished(tmp_path / 'r.json', config, required='diagnostics') is None
  with pytest.raises(cfglib.ConfigError, match='a: expected 2, found 1'):
    identity.finished(tmp_path / 'r.json', {'a': 2})


@dataclasses.dataclass
class _FakeDataset:
  fingerprint: str = 'f'
