"""Searches the training split and writes the target store to --workdir/targets; resumable.

  python launch/search.py --config=configs/mnist.py:cpu --workdir=runs/mnist
"""


from decouple_jax import runlog
from decouple_jax import search
from decouple_jax import cli
from decouple_jax.search import store_ids

_EXPERIMENT, _WORKDIR = cli.experiment_flags('Run directory; targets go to WORKDIR/targets.')


def main(argv):
  del argv
  exp = _EXPERIMENT()
  directory = store_ids.store_dir(_WORKDIR.value)
  search.run_search(exp.data, exp.search, directory)
  summary = runlog.read_json(directory / 'summary.json')
  best = ' / '.join(f'{v:.3f}' for v in summary['mean_best_loss'].values())
  print(f"[{exp.name}, {exp.scale}] searched {summary['images']} images into {directory}; "
        f"mean loss: initial {summary['mean_init_loss']:.3f}, best per layer {best}")


if __name__ == '__main__':
  cli.run(main)
