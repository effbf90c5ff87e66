"""Nesterov SGD in airbench's decoupled units, as an Optax transformation.

airbench states its learning rate per 1024 examples with the momentum's gain divided out, on a
loss *summed* over the batch: the PyTorch step is ``lr / kilostep`` with
``kilostep = 1024 * (1 + 1 / (1 - momentum))``. We compute batch-*mean* losses, whose gradient is
1/B of the summed one, so the equivalent Optax learning rate is ``lr * B / kilostep``
(:func:`plain_lr`). Weight decay follows airbench too: PyTorch's ``weight_decay = wd * B /
kilostep`` on the summed loss is ``wd / kilostep`` added to the mean-loss gradient.

Gradients arrive scaled by :data:`GRAD_SCALE` (the trainer differentiates ``loss * GRAD_SCALE``)
and :func:`unscale_and_clip` divides it out: see there for why.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
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


# 2^-64: exact (a power of two), and it moves float32's range from [1e-38, 3e38] to
# [2e-19, 6e57] for gradients: those of sizes below 2e-19 carry nothing a step could use.
GRAD_SCALE = 2.0 ** -64


def unscale_and_clip(clip_norm: float) -> optax.GradientTransformation:
  """Gradients of ``loss * GRAD_SCALE`` -> the gradients of ``loss``, clipped to global norm
  ``clip_norm`` if it is > 0.

  Why scaled: a channel constant over a batch (MNIST's blank background) passes the gradient
  through each BatchNorm with gain 1/sqrt(bn_eps) = 1e6 at the paper's eps, and block 2 of a
  6-conv network has 6 of them in a row: the first step's gradient of an 8-wide MNIST network
  has norm 1.5e43, past float32's 3.4e38, and came out inf/NaN at any lr. Clipping to
  ``clip_norm`` only needs the gradient's direction, which the scaled gradient holds exactly.
  The norm is taken relative to the largest entry, as squaring entries above 1.8e19 overflows
  float32 (a 6-conv MNIST network at width 32 has norm 1e26: plain
  ``optax.clip_by_global_norm`` turned its every step into zero).
  """
  def update(grads, state, params=None):
    del params
    largest = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads)]))
    unit = jnp.where(largest > 0, largest, 1.0)
    norm = largest * jnp.sqrt(sum(jnp.sum(jnp.square(g / unit)) for g in jax.tree.leaves(grads)))
    factor = jnp.float32(1.0 / GRAD_SCALE)
    if clip_norm > 0:
      factor = jnp.minimum(factor, clip_norm / norm)
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _decay_mask(params):
  # Weight decay on kernels only: not on BatchNorm biases, tap scales or the frozen whitening.
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: k[-1] == 'kernel' and 'whiten' not in k for k in flat})


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  """Nesterov SGD with decoupled-unit lr and weight decay, for batch-mean losses whose
  gradients arrive scaled by :data:`GRAD_SCALE`."""
  parts = [unscale_and_clip(cfg.clip_norm)]
  if cfg.weight_decay:
    parts.append(optax.masked(optax.add_decayed_weights(cfg.weight_decay / kilostep(cfg.momentum)),
                              _decay_mask))
  parts.append(optax.sgd(schedule(cfg, total_steps), momentum=cfg.momentum,
                         nesterov=cfg.nesterov))
  return optax.chain(*parts)


def freeze(tx: optax.GradientTransformation,
           modules: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """Wraps ``tx`` so the whitening filters (whose gradient is already zero) and every parameter
  of the top-level ``modules`` (e.g. ``'block0'``) never change."""
  def label(params):
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
        {k: 'frozen' if k[0] in modules or (k[0] == 'whiten' and k[-1] == 'kernel') else 'train'
         for k in flat})
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, label)


def optimizer(cfg: OptimConfig, total_steps: int,
              frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """The optimiser every trainer uses: :func:`make_optimizer`, with the whitening filters and
  the top-level modules ``frozen`` kept at their initial values (:func:`freeze`)."""
  return freeze(make_optimizer(cfg, total_steps), frozen)

