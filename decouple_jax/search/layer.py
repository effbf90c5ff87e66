"""One search layer's generations: the loop every search method shares.

A method (:class:`Method`: evolution, :func:`decouple_jax.search.evolve.evolution`, or the
gradient control, :func:`decouple_jax.search.gradient.descent`) says how one generation
improves its state; :func:`run` scans it over the layer's G generations, gives generation g the
key ``fold_in(key, g)`` and alpha at g (:func:`alpha_schedule`), and records the best loss after
every generation.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from decouple_jax.config import LayerSchedule


class Method(NamedTuple):
  """A search method, one generation at a time, on a state of its own.

  Attributes:
    init: the layer's starting population -> state.
    step: (state, generation key, alpha) -> state after one generation.
    best_loss: state -> () the best loss found so far.
    finish: (state, starting population) -> the layer's final population (same shapes).
  """
  init: Callable[[Any], Any]
  step: Callable[[Any, jax.Array, Any], Any]
  best_loss: Callable[[Any], jax.Array]
  finish: Callable[[Any, Any], Any]


def alpha_schedule(schedule: LayerSchedule) -> optax.Schedule:
  """The layer's alpha as an optax schedule of the generation counter g = 0 .. G - 1.

  'constant' gives the Python float ``alpha`` (the paper's search, unchanged); 'linear' and
  'cosine' go from ``alpha`` at g = 0 to ``alpha_schedule.end`` x ``alpha`` at g = G - 1.
  """
  alpha, shape = schedule.alpha, schedule.alpha_schedule
  steps = max(schedule.generations - 1, 1)
  if shape.name == 'linear':
    return optax.linear_schedule(alpha, alpha * shape.end, steps)
  if shape.name == 'cosine':
    return optax.cosine_decay_schedule(alpha, steps, alpha=shape.end)
  return optax.constant_schedule(alpha)


def run(pop, key: jax.Array, *, schedule: LayerSchedule, method: Method):
  """``schedule.generations`` generations of ``method`` under ``lax.scan``.

  Args:
    pop: the layer's starting :class:`~decouple_jax.search.evolve.Population`.
    key: the layer's key; generation g draws from ``fold_in(key, g)``.
    schedule: the layer's generations and alpha schedule.
    method: the search method.

  Returns:
    The final population and the best loss after each generation, (G,) (the last entry is the
    final population's best).
  """
  if schedule.generations == 0:
    return pop, jnp.zeros((0,), pop.loss.dtype)
  alpha = alpha_schedule(schedule)

  def body(state, g):
    state = method.step(state, jax.random.fold_in(key, g), alpha(g))
    return state, method.best_loss(state)
  state, curve = lax.scan(body, method.init(pop), jnp.arange(schedule.generations))
  pop = method.finish(state, pop)
  return pop, curve.at[-1].set(jnp.min(pop.loss))
