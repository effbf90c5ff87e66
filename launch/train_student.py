"""Trains the student on searched targets (MSE body + KL head); resumes from --workdir.

  python launch/search.py --config=configs/mnist.py:cpu --workdir=runs/mnist
  python launch/train_student.py --config=configs/mnist.py:cpu --workdir=runs/mnist_student \
      --targets=runs/mnist/targets

--targets defaults to WORKDIR/targets. If a hold-out target store sits beside the targets
(TARGETS_holdout, e.g. runs/mnist/targets_holdout, as launch/reproduce.py writes it), the
diagnostics in WORKDIR/results.json include R^2 on hold-out images; --holdout_targets names
another one.
"""

from absl import flags

from decouple_jax import learn
from decouple_jax import cli
from decouple_jax.search import store_ids

_EXPERIMENT, _WORKDIR = cli.experiment_flags()
_TARGETS = flags.DEFINE_string('targets', None, 'Target store (default: WORKDIR/targets).')
_HOLDOUT_TARGETS = flags.DEFINE_string(
    'holdout_targets', None, "Hold-out split's target store (default: TARGETS_holdout if it "
    'exists, else none).')


def main(argv):
  del argv
  exp = _EXPERIMENT()
  targets = _TARGETS.value or store_ids.store_dir(_WORKDIR.value)
  holdout = _HOLDOUT_TARGETS.value
  if holdout is None and store_ids.holdout_beside(targets).exists():
    holdout = store_ids.holdout_beside(targets)
  results = learn.train_student(exp.data, exp.search, exp.student, _WORKDIR.value, targets,
                                holdout_targets=holdout)
  d = results['diagnostics']
  r2 = ' / '.join(f'{v:.3f}' for v in d['r2_train'])
  print(f"[{exp.name}, {exp.scale}] student ({exp.student.variant}) "
        f"{learn.accuracy_line(results)}; R^2 per block {r2}, p_hat accuracy {100 * d['phat_accuracy']:.1f}%, linear probe "
        f"{100 * d['linear_probe_test_accuracy']:.1f}% vs head "
        f"{100 * d['head_test_accuracy']:.1f}%; results in {_WORKDIR.value}/results.json")


if __name__ == '__main__':
  cli.run(main)
