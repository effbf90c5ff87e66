"""A control for the evolutionary search: the same targets' problem solved by gradient descent.

``search.method='gradient'`` replaces each layer's evolution by descent on that layer's
activation of one image, through the same fixed network and the same fitness (cross-entropy of
the final logits). It answers what evolution buys over the obvious alternative, at equal cost:
a layer of G generations with C children each evaluates G * C candidates, so the descent takes
G * C steps (one forward and backward per step), C per generation of the shared layer loop
(:mod:`decouple_jax.search.layer`).

Each step is a mutation along the normalised gradient instead of noise
(:mod:`decouple_jax.search.mutation`): the candidate moves by the generation's alpha times its
own spread, the size of one refinement mutation, with the direction smoothed as the noise is
under ``blur_target='noise'``, then the layer's constraints apply as in evolution. The best
candidate seen is kept (elitism), so the layer's loss never rises.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from decouple_jax.config import LayerSchedule, SearchConfig
from decouple_jax.search import layer
from decouple_jax.search import mutation
from decouple_jax.search import operators as ops_lib
from decouple_jax.search import registry


def descent(schedule: LayerSchedule, cfg: SearchConfig,
            score: Callable[[jax.Array], jax.Array]) -> layer.Method:
  """Gradient descent from the population's best candidate, as a
  :class:`~decouple_jax.search.layer.Method`.

  Args:
    schedule: the layer's blur passes (boost is evolution's only; alpha comes per generation).
    cfg: children per generation C = n_explore + n_refine, blur and normalisation settings,
      the smoothing operator.
    score: candidates (N, *S) -> LOSS (N,), differentiable.

  Returns:
    The method: its state is (candidate, best candidate, best loss); a generation is C steps
    (the key is unused: the descent is deterministic); it finishes with the last candidate
    scored and the population replaced by P copies of the best, its loss repeated.
  """
  ops = registry.resolve(cfg.operators)
  children = cfg.n_explore + cfg.n_refine
  value_and_grad = jax.value_and_grad(lambda h: score(h[None])[0])

  def keep_best(h, loss, best_h, best_loss):
    better = loss < best_loss
    return jnp.where(better, h, best_h), jnp.where(better, loss, best_loss)

  def one_step(carry, alpha):
    h, best_h, best_loss = carry
    loss, grad = value_and_grad(h)
    best_h, best_loss = keep_best(h, loss, best_h, best_loss)
    direction = grad * lax.rsqrt(jnp.mean(jnp.square(grad)) + 1e-30)
    direction = mutation.smoothed(direction[None], schedule, cfg, ops)
    moved = mutation.perturb(h[None], ops_lib.spread(h[None]), -alpha, direction)
    return mutation.constraints(moved, schedule, cfg, ops)(moved)[0], best_h, best_loss

  def init(pop):
    start = jnp.argmin(pop.loss)
    return pop.h[start], pop.h[start], pop.loss[start]

  def step(state, key, alpha):
    del key
    return lax.scan(lambda c, _: (one_step(c, alpha), None), state, None, length=children)[0]

  def finish(state, pop):
    h, best_h, best_loss = state
    # The last step's candidate has not been scored inside the scan.
    best_h, best_loss = keep_best(h, score(h[None])[0], best_h, best_loss)
    return pop.replace(h=jnp.broadcast_to(best_h, pop.h.shape),
                       loss=jnp.full_like(pop.loss, best_loss))

  return layer.Method(init=init, step=step, best_loss=lambda state: state[2], finish=finish)

