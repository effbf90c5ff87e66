"""Configs: partial dicts keep their parent's defaults; every field is checked when built."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from decouple_jax import config as cfglib
from decouple_jax import config_files
from decouple_jax.models import airbench, conv
from decouple_jax.search import target_store

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def _build(d):
  return cfglib.from_dict(cfglib.ExperimentConfig, d)


@pytest.mark.parametrize('cls, default', [
    (cfglib.StudentConfig, cfglib.StudentConfig().model),
    (cfglib.SGDConfig, cfglib.SGDConfig().model),
])
def test_partial_model_keeps_the_parents_model_defaults(cls, default):
  built = cfglib.from_dict(cls, {'model': {'widths': (16, 16, 16)}})
  assert built.model == cfglib.ModelConfig(**{**cfglib.to_dict(default), 'widths': (16, 16, 16)})


def test_partial_dicts_keep_defaults_at_every_level():
  exp = _build({'student': {'model': {'widths': (16, 16, 16)}, 'train': {'optim': {'lr': 1.0}}},
                'search': {'layers': {'block0': {'generations': 7}}}})
  model = exp.student.model
  assert (model.tap, model.tap_scale, model.convs_per_block) == ('pre_gelu', True, 6)
  assert exp.student.train.optim.lr == 1.0
  assert exp.student.train.optim.epochs == cfglib.OptimConfig().epochs
  paper = cfglib.PAPER_SCHEDULE
  assert exp.search.layers == {**paper, 'block0': dataclasses.replace(paper['block0'],
                                                                     generations=7)}


def _variants():
  for path in sorted(CONFIGS.glob('*.py')):
    module = config_files.load_module(path)
    for variant in module.VARIANTS:
      yield path.name, variant, module


def test_every_shipped_variant_builds():
  built = [(name, variant, _build(module.get_config(variant)))
           for name, variant, module in _variants()]
  assert {(n, v) for n, v, _ in built} >= {('mnist.py', 'smoke'), ('cifar10.py', 'paper')}
  assert all(isinstance(exp, cfglib.ExperimentConfig) for _, _, exp in built)


def test_config_file_loads_in_the_config_flags_syntax():
  smoke = config_files.load(f'{CONFIGS / "mnist.py"}:smoke')
  assert smoke.name == 'mnist:smoke'
  assert config_files.load(CONFIGS / 'mnist.py').name == 'mnist:cpu'  # the file's default
  # cifar100.py loads cifar10.py by path: both are loaded, neither is imported.
  assert config_files.load(f'{CONFIGS / "cifar100.py"}:smoke').data.name == 'cifar100'
  for spec, message in [(f'{CONFIGS / "mnist.py"}:nope', "unknown variant 'nope'; .*mnist.py "
                                                          'has paper, cpu, demo, smoke'),
                        (f'{CONFIGS / "mnist.py"}:', 'no variant after the colon'),
                        (CONFIGS / 'nope.py', 'no such config file .*nope.py')]:
    with pytest.raises(cfglib.ConfigError, match=message):
      config_files.load(spec)


@pytest.mark.parametrize('where, field, value, choices', [
    ('data', 'cifar100_labels', 'medium', 'CIFAR100_LABELS'),
    ('sgd.model', 'head', 'flaten', 'HEADS'),
    ('student.model', 'tap', 'pre', 'TAPS'),
    ('search.model', 'conv_impl', 'fft', 'CONV_IMPLS'),
    ('sgd.model', 'convs_per_block', 3, 'CONVS_PER_BLOCK'),
    ('sgd.train.optim', 'schedule', 'cosine', 'SCHEDULES'),
    ('search', 'refine_pool', 'all', 'REFINE_POOLS'),
    ('search', 'seed_next', 'worst', 'SEED_NEXT'),
    ('search', 'blur_padding', 'reflect', 'BLUR_PADDINGS'),
    ('search', 'blur_target', 'parents', 'BLUR_TARGETS'),
    ('search', 'method', 'annealing', 'SEARCH_METHODS'),
    ('search', 'bn_mode', 'train', 'BN_MODES'),
    ('search', 'store_dtype', 'int8', 'STORE_DTYPES'),
    ('student', 'variant', 'no_layers', 'STUDENT_VARIANTS'),
    ('student', 'mse_reduction', 'max', 'MSE_REDUCTIONS'),
    ('student.train', 'compute_dtype', 'float16', 'COMPUTE_DTYPES'),
])
def test_enumerated_fields_refused_with_their_choices(where, field, value, choices):
  choices = getattr(cfglib, choices)  # the module constant the field is checked against
  d = {field: value}
  for key in reversed(where.split('.')):
    d = {key: d}
  with pytest.raises(cfglib.ConfigError) as e:
    _build(d)
  assert str(e.value) == f'config.{where}.{field}={value!r} is not one of {choices}'


def test_the_code_uses_the_configs_choices():
  # One constant per enumerated field: the model and the store check against the same tuples.
  assert conv.IMPLS is cfglib.CONV_IMPLS and target_store.DTYPES is cfglib.STORE_DTYPES
  net = airbench.AirbenchNet(num_classes=10, in_channels=1, head='flaten')
  with pytest.raises(ValueError, match=r"head must be one of \('flatten', 'maxpool'\)"):
    net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.parametrize('d, message', [
    ({'search': {'layers': {'block0': {'generations': -1}}}},
     'config.search.layers.block0.generations=-1: must be an integer >= 0'),
    ({'search': {'layers': {'block1': {'alpha': float('nan')}}}},
     'config.search.layers.block1.alpha=nan: must be a finite number >= 0'),
    ({'search': {'layers': {'logits': {'alpha': float('inf')}}}},
     'config.search.layers.logits.alpha=inf: must be a finite number >= 0'),
    ({'search': {'layers': {'block2': {'boost': -1.0}}}},
     'config.search.layers.block2.boost=-1.0: must be a finite number >= 0'),
    ({'search': {'layers': {'block1': {'alpha_schedule': {'name': 'step'}}}}},
     "config.search.layers.block1.alpha_schedule.name='step' is not one of"),
    ({'search': {'layers': {'block1': {'alpha_schedule': {'end': 0.5}}}}},
     "config.search.layers.block1.alpha_schedule.end=0.5: a 'constant' schedule has no end"),
    ({'search': {'operators': {'mutation': {'params': {'df': [3]}}}}},
     'config.search.operators.mutation.params='),
    ({'sgd': {'train': {'optim': {'epochs': -3}}}},
     'config.sgd.train.optim.epochs=-3: must be an integer >= 1'),
    ({'student': {'train': {'optim': {'batch_size': 0}}}},
     'config.student.train.optim.batch_size=0: must be an integer >= 1'),
    ({'sgd': {'train': {'eval_every': 0}}}, 'config.sgd.train.eval_every=0: must be'),
    ({'sgd': {'train': {'checkpoint_every': 0}}}, 'config.sgd.train.checkpoint_every=0: must'),
    ({'sgd': {'train': {'eval_batch': 0}}}, 'config.sgd.train.eval_batch=0: must be'),
    ({'search': {'batch_images': 0}}, "config.search.batch_images=0: must be 'auto' or an"),
    ({'search': {'batch_images': 'many'}}, "config.search.batch_images='many': must be 'auto'"),
    ({'search': {'chunk_size': 0}}, 'config.search.chunk_size=0: must be an integer >= 1'),
    ({'search': {'population': 20, 'n_explore': 0, 'n_refine': 0}},
     'config.search.n_explore=0 and n_refine=0: a generation needs at least one child'),
    ({'search': {'init_noise': float('nan')}},
     'config.search.init_noise=nan: must be a finite number >= 0'),
    ({'sgd': {'model': {'widths': (8, 8)}}}, 'config.sgd.model.widths=(8, 8): give one'),
    ({'data': {'holdout': -1}}, 'config.data.holdout=-1: must be an integer >= 0'),
    ({'data': {'train_limit': -1}}, 'config.data.train_limit=-1: must be an integer >= 0'),
    ({'sgd': {'train': {'optim': {'lr': float('inf')}}}}, 'config.sgd.train.optim.lr=inf'),
    ({'sgd': {'train': {'optim': {'momentum': 1.0}}}},
     'config.sgd.train.optim.momentum=1.0: must be in [0, 1)'),
    ({'student': {'kl_weight': -0.1}}, 'config.student.kl_weight=-0.1: must be a finite'),
    ({'analysis': {'threshold': 2.0}}, 'config.analysis.threshold=2.0: must be in [0, 1]'),
    ({'seeds': ()}, 'config.seeds=(): give at least one seed'),
    ({'search': {'network_seed': -1}}, 'config.search.network_seed=-1: must be None'),
    ({'search': {'average_of': 0}}, 'config.search.average_of=0: must be an integer >= 1'),
])
def test_numeric_ranges_refused_naming_the_field(d, message):
  with pytest.raises(cfglib.ConfigError) as e:
    _build(d)
  assert str(e.value).startswith(message)


def test_direct_construction_is_checked_too():
  with pytest.raises(cfglib.ConfigError, match=r'^generations=-1: must be an integer >= 0$'):
    cfglib.LayerSchedule(generations=-1, alpha=0.1, boost=1.0, blur=0)
  with pytest.raises(cfglib.ConfigError, match=r"^tap='x' is not one of"):
    cfglib.ModelConfig(tap='x')


def test_unknown_and_missing_fields_are_named():
  with pytest.raises(cfglib.ConfigError, match=r"config.sgd: unknown field\(s\) \['nope'\]"):
    _build({'sgd': {'nope': 1}})
  with pytest.raises(cfglib.ConfigError, match=r"^config.search.layers: unknown name\(s\) "
                     r"\['block3'\]; valid names: \['block0', 'block1', 'block2', 'logits'\]$"):
    _build({'search': {'layers': {'block3': {'generations': 1}}}})
  with pytest.raises(cfglib.ConfigError, match=r"^layers: needs one schedule per tap of the "
                     r"search network \['block0', 'block1', 'block2', 'logits'\], got \['block0'\]$"):
    cfglib.SearchConfig(layers={'block0': cfglib.PAPER_SCHEDULE['block0']})


# A launch script that prints the search config it was given: the real flag path (absl,
# config_flags, decouple_jax.cli's checks, from_dict).
_PRINT_LAYERS = '''
import json
from ml_collections import config_flags
from decouple_jax import cli, config as cfglib
_CONFIG = config_flags.DEFINE_config_file('config', None, 'config')

def main(argv):
  exp = cfglib.from_dict(cfglib.ExperimentConfig, _CONFIG.value)
  print(json.dumps(cfglib.to_dict(exp.search)))

cli.run(main)
'''


def _print_layers(tmp_path, *overrides):
  script = tmp_path / 'launch' / 'print_layers.py'
  script.parent.mkdir(exist_ok=True)
  script.write_text(_PRINT_LAYERS)
  return subprocess.run([sys.executable, str(script), '--config=configs/mnist.py:smoke',
                         *overrides], cwd=CONFIGS.parent, capture_output=True, text=True,
                        timeout=120)


def test_one_search_layer_is_overridden_by_its_tap_name_on_the_command_line(tmp_path):
  proc = _print_layers(tmp_path, '--config.search.layers.block1.generations=100',
                       '--config.search.layers.block1.alpha=0.2',
                       '--config.search.layers.block1.alpha_schedule.name=cosine',
                       '--config.search.layers.block1.alpha_schedule.end=0.1',
                       '--config.search.network_seed=3')
  assert proc.returncode == 0, proc.stderr
  search = json.loads(proc.stdout.strip().splitlines()[-1])
  # A field whose default is None is set from the command line too.
  assert search['network_seed'] == 3
  layers = search['layers']
  assert list(layers) == ['block0', 'block1', 'block2', 'logits']
  assert layers['block1'] == {'generations': 100, 'alpha': 0.2, 'boost': 3.0, 'blur': 1,
                              'alpha_schedule': {'name': 'cosine', 'end': 0.1}}
  assert layers['block2']['generations'] == 1  # the smoke variant's, untouched


def test_an_unknown_layer_name_on_the_command_line_is_one_line_naming_the_layers(tmp_path):
  proc = _print_layers(tmp_path, '--config.search.layers.block5.alpha=0.2')
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines() == [
      "error: --config.search.layers.block5.alpha=0.2: config.search.layers has no field "
      "'block5'; its fields: block0, block1, block2, logits"]


def test_cifar10_cpu_aug_is_cpu_with_table_2s_augmentation_and_the_same_search():
  module = dict((n, m) for n, _, m in _variants())['cifar10.py']
  cpu, aug = (_build(module.get_config(v)) for v in ('cpu', 'cpu_aug'))
  assert aug.search == cpu.search and aug.data == cpu.data
  assert aug.sgd.train.augment and aug.student.train.augment and not cpu.student.train.augment
  assert set(aug.reproduce.variants) == {'all_layers', 'skip_block0'}
