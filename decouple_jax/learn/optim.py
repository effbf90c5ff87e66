"""Nesterov SGD in airbench's decoupled units, as an Optax transformation.

airbench states its learning rate per 1024 examples with the momentum's gain divided out, on a
loss *summed* over the batch: the PyTorch step is ``lr / kilostep`` with
``kilostep = 1024 * (1 + 1 / (1 - momentum))``. We compute batch-*mean* losses, whose gradient is
1/B of the summed one, so the equivalent Optax learning rate is ``lr * B / kilostep``
(:func:`plain_lr`). Weight decay follows airbench too: PyTorch's ``weight_decay = wd * B /
kilostep`` on the summed loss is ``wd / kilostep`` added to the mean-loss gradient.
"""

from __future__ import annotations

import flax
import optax

from decouple_jax.config import OptimConfig


def kilostep(momentum: float) -> float:
  """airbench's unit conversion factor, 1024 * (1 + 1 / (1 - momentum))."""
  return 1024.0 * (1.0 + 1.0 / (1.0 - momentum))


def plain_lr(cfg: OptimConfig) -> float:
  """Peak learning rate for batch-mean losses equivalent to ``cfg.lr`` in decoupled units."""
  return cfg.lr * cfg.batch_size / kilostep(cfg.momentum)


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule over ``total_steps`` optimiser steps (batch-mean units)."""
  peak = plain_lr(cfg)
  if cfg.schedule == 'constant':
    return optax.constant_schedule(peak)
  # 'triangle', the only other one of config.SCHEDULES (OptimConfig refuses the rest).
  warm = max(1, int(round(cfg.warmup * total_steps)))
  return optax.join_schedules([
      optax.linear_schedule(cfg.lr_start * peak, peak, warm),
      optax.linear_schedule(peak, cfg.lr_end * peak, max(1, total_steps - warm)),
  ], [warm])


def _decay_mask(params):
  # Weight decay on kernels only: not on BatchNorm biases, tap scales or the frozen whitening.
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: k[-1] == 'kernel' and 'whiten' not in k for k in flat})


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  """Nesterov SGD with decoupled-unit lr and weight decay, for batch-mean losses."""
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if cfg.weight_decay:
    parts.append(optax.masked(optax.add_decayed_weights(cfg.weight_decay / kilostep(cfg.momentum)),
                              _decay_mask))
  parts.append(optax.sgd(schedule(cfg, total_steps), momentum=cfg.momentum,
                         nesterov=cfg.nesterov))
  return optax.chain(*parts)


def frozen_whitening(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """Wraps ``tx`` so the whitening filters never change (their gradient is already zero)."""
  def label(params):
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
        {k: 'frozen' if k[0] == 'whiten' and k[-1] == 'kernel' else 'train' for k in flat})
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, label)


def optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  """The optimiser every trainer uses: :func:`make_optimizer` with frozen whitening filters."""
  return frozen_whitening(make_optimizer(cfg, total_steps))

