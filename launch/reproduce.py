"""Reproduces the paper's table for one config: search, students, SGD baselines, every seed.

  python launch/reproduce.py --config=configs/mnist.py:cpu --workdir=runs/mnist_reproduce

Resumable: run the same command again and only what is missing runs. Writes
WORKDIR/results.json (every number) and WORKDIR/table.md (printed at the end); what runs is
set by --config.seeds and --config.reproduce.* (e.g. --config.reproduce.sgd_convs='(2,)').
"""

from absl import flags
from ml_collections import config_flags

from decouple_jax import config as cfglib
from decouple_jax import report
from decouple_jax import reproduce
from decouple_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file:variant.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (resumed if it exists).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  exp = cfglib.from_dict(cfglib.ExperimentConfig, _CONFIG.value)
  results = reproduce.reproduce(exp, _WORKDIR.value)
  print(report.format_table(results))


if __name__ == '__main__':
  cli.run(main)
