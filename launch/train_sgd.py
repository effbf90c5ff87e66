"""Trains the SGD baseline (end-to-end cross-entropy); resumes from --workdir.

  python launch/train_sgd.py --config=configs/mnist.py:cpu --workdir=runs/mnist_sgd
"""


from decouple_jax import learn
from decouple_jax import cli

_EXPERIMENT, _WORKDIR = cli.experiment_flags()


def main(argv):
  del argv
  exp = _EXPERIMENT()
  results = learn.train_sgd(exp.data, exp.sgd, _WORKDIR.value)
  print(f"[{exp.name}, {exp.scale}] SGD {learn.accuracy_line(results)}; "
        f"{results['train_seconds']:.0f} s training; results in {_WORKDIR.value}/results.json")


if __name__ == '__main__':
  cli.run(main)
