"""A control for the evolutionary search: the same targets' problem solved by gradient descent.

``search.method='gradient'`` replaces each layer's evolution by descent on that layer's
activation of one image, through the same fixed network and the same fitness (cross-entropy of
the final logits). It answers what evolution buys over the obvious alternative, at equal cost:
a layer of G generations with C children each evaluates G * C candidates, so the descent takes
G * C steps (one forward and backward per step).

Each step moves the candidate by ``alpha`` times its own spread along the normalised gradient,
the size of one refinement mutation, then applies the layer's constraints as evolution does
(per-sample normalisation for blocks, centring for logits); with ``blur_target='noise'`` the
step itself is smoothed, with 'candidate' the moved candidate is. The best candidate seen is
kept (elitism), so the layer's loss never rises.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from decouple_jax.config import LayerSchedule, SearchConfig
from decouple_jax.search import operators as ops_lib


def descend_layer(pop, key: jax.Array, *, schedule: LayerSchedule, cfg: SearchConfig,
                  score: Callable[[jax.Array], jax.Array], ops):
  """Gradient descent from ``pop``'s best candidate; the drop-in twin of ``evolve_layer``.

  Args:
    pop: a :class:`decouple_jax.search.evolve.Population`, (P, *S) candidates and losses.
    key: unused (the descent is deterministic); kept so both layer functions are called alike.
    schedule: the layer's generations G and alpha (boost is evolution's only).
    cfg: children per generation C = n_explore + n_refine, blur and normalisation settings.
    score: candidates (N, *S) -> LOSS (N,), differentiable.
    ops: the :class:`decouple_jax.search.evolve.Operators` (blur, normalise, center).

  Returns:
    (population of P copies of the best candidate found, its loss repeated), and the best
    loss after every C steps, (G,): the same shapes ``evolve_layer`` returns.
  """
  del key
  if schedule.generations == 0:
    return pop, jnp.zeros((0,), pop.loss.dtype)
  children = cfg.n_explore + cfg.n_refine
  value_and_grad = jax.value_and_grad(lambda h: score(h[None])[0])
  logits = ops_lib.is_logits(pop.h)

  def constrain(h):
    if logits:
      return ops.center(h[None])[0]
    if cfg.blur_target == 'candidate':
      h = ops.blur(h[None], schedule.blur, cfg.blur_padding)[0]
    return ops.normalise(h[None], cfg.norm_eps)[0]

  def keep_best(h, loss, best_h, best_loss):
    better = loss < best_loss
    return jnp.where(better, h, best_h), jnp.where(better, loss, best_loss)

  def step(carry, _):
    h, best_h, best_loss = carry
    loss, grad = value_and_grad(h)
    best_h, best_loss = keep_best(h, loss, best_h, best_loss)
    direction = grad * lax.rsqrt(jnp.mean(jnp.square(grad)) + 1e-30)
    if not logits and cfg.blur_target == 'noise':
      direction = ops.blur(direction[None], schedule.blur, cfg.blur_padding)[0]
    h = constrain(h - schedule.alpha * ops_lib.spread(h[None])[0] * direction)
    return (h, best_h, best_loss), best_loss

  start = jnp.argmin(pop.loss)
  h0 = pop.h[start]
  (h, best_h, best_loss), curve = lax.scan(
      step, (h0, h0, pop.loss[start]), None, length=schedule.generations * children)
  # The last step's candidate has not been scored inside the scan.
  best_h, best_loss = keep_best(h, score(h[None])[0], best_h, best_loss)
  curve = curve.reshape(schedule.generations, children)[:, -1].at[-1].set(best_loss)
  return (pop.replace(h=jnp.broadcast_to(best_h, pop.h.shape),
                      loss=jnp.full_like(pop.loss, best_loss)), curve)
