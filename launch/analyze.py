"""The paper's analyses of the search (PAPER.md section 6) as figures: PNG + JSON in --workdir.

  python launch/analyze.py --config=configs/mnist.py:cpu --workdir=runs/mnist_analysis \
      --analysis=all

scaling: mean best loss per search layer vs population size and generations (paper Fig. 2).
diversity: effective number of distinct targets vs independent search runs (paper Fig. 3).
all: both of the above.
accuracy: student test accuracy vs search population and generations (paper Fig. 4); searches
  the whole training split and trains a student per setting, so scale the data down, e.g.
  --config.data.train_limit=5000. Resumable from --workdir/accuracy.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from decouple_jax import analysis
from decouple_jax import config as cfglib
from decouple_jax.cli import run_cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file:variant.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the PNG and JSON files go.')
_ANALYSIS = flags.DEFINE_enum('analysis', 'all', analysis.ANALYSES + ('all',),
                              'What to run (all: scaling and diversity).')
_POPULATIONS = flags.DEFINE_list('populations', [], 'Population sizes of the scaling and '
                                 "accuracy sweeps (default: 0.5, 1 and 2 x the config's).")
_GENERATIONS = flags.DEFINE_list('generations', ['0.5', '1', '2'], "Multipliers of the "
                                 "config's generations (scaling and accuracy sweeps).")
_N_IMAGES = flags.DEFINE_integer('n_images', 64, 'First training images searched (scaling, '
                                 'diversity).')
_N_RUNS = flags.DEFINE_integer('n_runs', 4, 'Independent search runs (diversity).')
_THRESHOLD = flags.DEFINE_float('threshold', 0.5, 'True-class probability a candidate must '
                                'exceed to count (diversity).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  exp = cfglib.from_dict(cfglib.ExperimentConfig, _CONFIG.value)
  results = analysis.run_analysis(
      exp, _WORKDIR.value, _ANALYSIS.value, populations=[int(p) for p in _POPULATIONS.value],
      generations=[float(g) for g in _GENERATIONS.value], n_images=_N_IMAGES.value,
      n_runs=_N_RUNS.value, threshold=_THRESHOLD.value)
  for name in results:
    print(f'[{exp.name}, {exp.scale}] {name}: {_WORKDIR.value}/{name}.png and .json')


if __name__ == '__main__':
  app.run(run_cli(main))
