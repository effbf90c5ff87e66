"""The small benchmark scripts run and print their tables (their figures are BENCHMARKS.md's;
no timing is asserted here)."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from decouple_jax import config
from decouple_jax.search import operators as ops

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST = REPO / 'data' / 'mnist'


def _script(name):
  spec = importlib.util.spec_from_file_location(name, REPO / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_io_costs_times_a_store_check(capsys):
  _script('io_costs').main(['--store_mb=4'])
  out = capsys.readouterr().out
  assert out.startswith('store: ') and 'GB/s) on opening for writing' in out


@pytest.mark.skipif(not (MNIST / 'train-images-idx3-ubyte.gz').exists(),
                    reason='MNIST is not in data/mnist (make data fetches it)')
def test_init_noise_correlation_keeps_a_digit_and_skips_absent_data(capsys, tmp_path):
  _script('init_noise_correlation').main([f'--mnist_dir={MNIST}', f'--cifar10_dir={tmp_path}',
                                          '--width=4', '--images=4'])
  rows = [line.split('|') for line in capsys.readouterr().out.splitlines()[2:]]
  mnist = {float(r[2]): [float(c) for c in r[3].split('/')]
           for r in rows if r[1].strip() == 'mnist'}
  assert sorted(mnist) == [0.01, 0.03, 0.1]
  # Less noise keeps more of the image; a digit keeps almost all of it at 0.01.
  assert min(mnist[0.01]) > 0.99 and min(mnist[0.01]) >= min(mnist[0.1])
  assert any(r[1].strip() == 'cifar10' and 'skipped' in r[2] for r in rows)



def test_search_throughput_straightforward_step_blurs_what_the_engine_blurs(monkeypatch):
  """search_throughput's straightforward step follows ``blur_target`` as the engine does: the
  two readings give other children (and the shapes of the engine's step)."""
  monkeypatch.syspath_prepend(str(REPO / 'benchmarks'))
  throughput, measure = _script('search_throughput'), _script('measure')
  steps = {}
  for blur_target in config.BLUR_TARGETS:
    cfg = config.SearchConfig(model=config.ModelConfig(widths=(8, 8, 8)), population=12,
                              top_k=2, n_explore=4, n_refine=6, blur_target=blur_target)
    model, variables, _, labels, taps = measure.search_setup(2, cfg)
    loss = jax.vmap(ops.fitness)(taps[-1], labels)
    keys = jax.random.split(jax.random.key(2), 2)
    args = (taps[0], loss, keys, labels)
    steps[blur_target] = throughput.straightforward_step_fn(model, variables, cfg)(*args)
    engine = measure.engine_step_fn(model, variables, cfg, 0)(*args)
    assert [x.shape for x in steps[blur_target]] == [engine.h.shape, engine.loss.shape]
  children = [h[:, 2:] for h, _ in steps.values()]  # the first top_k are the parents
  assert not np.allclose(*children)
