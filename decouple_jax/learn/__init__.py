"""Learning: the shared trainer, the SGD baseline, the student and its diagnostics."""

from decouple_jax.learn.diagnostics import (linear_probe, phat_accuracy, r_squared,
                                            student_diagnostics)
from decouple_jax.learn.optim import kilostep, optimizer, plain_lr
from decouple_jax.learn.sgd import cross_entropy_loss_fn, train_sgd
from decouple_jax.learn.student import fit_student, student_loss_fn, train_student
from decouple_jax.learn.trainer import (Batch, TrainData, TrainError, TrainState, accuracy_line,
                                        evaluate, fit)

__all__ = [
    'Batch',
    'TrainData',
    'TrainError',
    'TrainState',
    'accuracy_line',
    'cross_entropy_loss_fn',
    'evaluate',
    'fit',
    'fit_student',
    'kilostep',
    'linear_probe',
    'optimizer',
    'phat_accuracy',
    'plain_lr',
    'r_squared',
    'student_diagnostics',
    'student_loss_fn',
    'train_sgd',
    'train_student',
]
