"""Learning: the shared trainer, the SGD baseline, the student and its diagnostics."""

from decouple_jax.learn.diagnostics import (linear_probe, phat_accuracy, r_squared,
                                            student_diagnostics)
from decouple_jax.learn.optim import kilostep, optimizer, plain_lr
from decouple_jax.learn.sgd import cross_entropy_loss_fn, train_sgd
from decouple_jax.learn.student import fit_student, train_student
from decouple_jax.learn.trainer import (Batch, TrainData, TrainError, TrainState, describe,
                                        evaluate, fit)
