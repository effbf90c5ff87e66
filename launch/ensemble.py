"""Ensembles of search-based students and of SGD models (the paper's open question 2).

  python launch/ensemble.py --config=configs/mnist.py:cpu --workdir=runs/mnist_ensemble

K = --config.ensemble.members (default 4) members per family of --config.ensemble.families:
students on K searches (one student seed; 'searches_one_network', all in one search network;
'searches_and_seeds', K student seeds), K student seeds on one search, and K SGD runs of the
student's network. Resumable member by member.
Writes WORKDIR/results.json, WORKDIR/table.md (printed at the end) and WORKDIR/ensemble.png.
"""


from decouple_jax import cli
from decouple_jax import ensemble

_EXPERIMENT, _WORKDIR = cli.experiment_flags()


def main(argv):
  del argv
  exp = _EXPERIMENT()
  print(ensemble.format_table(ensemble.run_ensemble(exp, _WORKDIR.value)))


if __name__ == '__main__':
  cli.run(main)
