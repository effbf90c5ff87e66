"""Search and learning in a loop: round r searches again in round r-1's trained student.

  python launch/feedback.py --config=configs/mnist.py:cpu --workdir=runs/mnist_feedback

Round 1 is the paper's pipeline; --config.feedback.rounds, .warm_start, .bn_stats and .layers
set the loop. Resumable: finished rounds are read, not redone. Writes WORKDIR/results.json and
WORKDIR/feedback.png (accuracy per round against SGD with the same network).
"""


from decouple_jax import feedback
from decouple_jax import cli

_EXPERIMENT, _WORKDIR = cli.experiment_flags()


def main(argv):
  del argv
  exp = _EXPERIMENT()
  results = feedback.run_feedback(exp, _WORKDIR.value)
  sgd = 100 * results['sgd']['test_accuracy']
  for r in results['rounds']:
    print(f"[{exp.name}, {exp.scale}] round {r['round']} ({r['start']}): {results['student']} "
          f"test {100 * r['test_accuracy']:.2f}% (SGD, same network: {sgd:.2f}%); mean best CE "
          + ' / '.join(f'{v:.3f}' for v in r['mean_best_loss'].values()))
  print(f'results in {_WORKDIR.value}/results.json and feedback.png')


if __name__ == '__main__':
  cli.run(main)
