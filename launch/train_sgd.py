"""Trains the SGD baseline (end-to-end cross-entropy); resumes from --workdir.

  python launch/train_sgd.py --config=configs/mnist.py:cpu --workdir=runs/mnist_sgd
"""

from absl import flags
from ml_collections import config_flags

from decouple_jax import config as cfglib
from decouple_jax import learn
from decouple_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file:variant.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (resumed if it exists).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  exp = cfglib.from_dict(cfglib.ExperimentConfig, _CONFIG.value)
  results = learn.train_sgd(exp.data, exp.sgd, _WORKDIR.value)
  print(f"[{exp.name}, {exp.scale}] SGD {learn.accuracy_line(results)}; "
        f"{results['train_seconds']:.0f} s training; results in {_WORKDIR.value}/results.json")


if __name__ == '__main__':
  cli.run(main)
