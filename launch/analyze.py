"""The paper's analyses (docs/method.md section 7) as figures: PNG + JSON in --workdir.

  python launch/analyze.py --config=configs/mnist.py:cpu --workdir=runs/mnist_analysis \
      --analysis=all

scaling: mean best loss per search layer vs population size and generations (paper Fig. 2).
diversity: effective number of distinct targets vs independent search runs (paper Fig. 3).
accuracy: student test accuracy vs search population and generations (paper Fig. 4).
trajectories: cosine distance of block outputs to the searched targets, and within/between-
  class collision entropy, per epoch of SGD and of the student (paper Figs. 5-7).
all: every one of them.

How much each searches and trains is the config's ``analysis`` section, e.g.
--config.analysis.n_images=256 --config.analysis.train_images=5000. Resumable from --workdir.
"""

from absl import flags

from decouple_jax import analysis
from decouple_jax import cli

_EXPERIMENT, _WORKDIR = cli.experiment_flags('Where the PNG and JSON files go.')
_ANALYSIS = flags.DEFINE_enum('analysis', 'all', analysis.ANALYSES + ('all',),
                              'What to run (all: every analysis).')


def main(argv):
  del argv
  exp = _EXPERIMENT()
  results = analysis.run_analysis(exp, _WORKDIR.value, _ANALYSIS.value)
  files = {'trajectories': ('target_distance', 'class_entropy')}
  for name in results:
    for stem in files.get(name, (name,)):
      print(f'[{exp.name}, {exp.scale}] {name}: {_WORKDIR.value}/{stem}.png and .json')


if __name__ == '__main__':
  cli.run(main)
