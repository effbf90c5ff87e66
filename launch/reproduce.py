"""Reproduces the paper's table for one config: search, students, SGD baselines, every seed.

  python launch/reproduce.py --config=configs/mnist.py:cpu --workdir=runs/mnist_reproduce

Resumable: run the same command again and only what is missing runs. Writes
WORKDIR/results.json (every number) and WORKDIR/table.md (printed at the end); what runs is
set by --config.seeds and --config.reproduce.* (e.g. --config.reproduce.sgd_convs='(2,)').
"""


from decouple_jax import report
from decouple_jax import reproduce
from decouple_jax import cli

_EXPERIMENT, _WORKDIR = cli.experiment_flags()


def main(argv):
  del argv
  exp = _EXPERIMENT()
  results = reproduce.reproduce(exp, _WORKDIR.value)
  print(report.format_table(results))


if __name__ == '__main__':
  cli.run(main)
