"""Searches the training split and writes the target store to --workdir/targets; resumable.

  python launch/search.py --config=configs/mnist.py:cpu --workdir=runs/mnist
"""

from absl import flags
from ml_collections import config_flags

from decouple_jax import config as cfglib
from decouple_jax import runlog
from decouple_jax import search
from decouple_jax import cli
from decouple_jax.search import store_ids

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file:variant.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory; targets go to WORKDIR/targets.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  exp = cfglib.from_dict(cfglib.ExperimentConfig, _CONFIG.value)
  directory = store_ids.store_dir(_WORKDIR.value)
  search.run_search(exp.data, exp.search, directory)
  summary = runlog.read_json(directory / 'summary.json')
  best = ' / '.join(f'{v:.3f}' for v in summary['mean_best_loss'].values())
  print(f"[{exp.name}, {exp.scale}] searched {summary['images']} images into {directory}; "
        f"mean loss: initial {summary['mean_init_loss']:.3f}, best per layer {best}")


if __name__ == '__main__':
  cli.run(main)
