"""Learning: the shared trainer, the SGD baseline and (later) the student."""

from decouple_jax.learn.optim import kilostep, optimizer, plain_lr
from decouple_jax.learn.sgd import cross_entropy_loss_fn, train_sgd
from decouple_jax.learn.trainer import (Batch, TrainData, TrainError, TrainState, evaluate,
                                        fit)
