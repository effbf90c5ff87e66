"""How a generation's children are made: mutation in one place (paper section 3.1, appendix
A.4; docs/method.md section 3).

A child of parents i and j of a pool is

  finish(crossover(pool[i], pool[j]) + alpha_c * sigma_ij * smooth(u))

- u: the registered mutation operator's draws (default 'gaussian': standard normal), one call
  for all C children of a generation, (C, *S) (fewer PRNG call sites compile faster);
- smooth: under ``blur_target='noise'`` the smoothing operator's ``blur`` passes over block
  noise; nothing for logits or under 'candidate';
- sigma_ij: the mean of the two parents' spreads (:func:`~decouple_jax.search.operators.spread`:
  each channel's spatial std, or the std across classes);
- alpha_c: the layer's alpha at this generation
  (:func:`decouple_jax.search.layer.alpha_schedule`), times ``boost`` for exploratory children;
- finish: the layer's constraints (:func:`constraints`).

Blurring the noise or the whole child adds the same smoothed noise; they differ only in whether
the parents' mean is smoothed too, which compounds along a lineage. The gradient control
(:mod:`decouple_jax.search.gradient`) steps through the same smoothing, formula and constraints.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from decouple_jax.config import LayerSchedule, SearchConfig
from decouple_jax.search import operators as ops_lib
from decouple_jax.search import registry


class Draws(NamedTuple):
  """All random draws of one generation: C = C_exp + C_ref children, explorers first.

  Attributes:
    parents: (C, 2) int32 parent indices: explorers' into the top-k parents, refiners' into
      the refinement pool.
    noise: (C, *S) the mutation operator's unit draws, before smoothing.
  """
  parents: jax.Array
  noise: jax.Array


def refine_pool_size(cfg: SearchConfig) -> int:
  """Size of the pool refinement parents are drawn from."""
  if cfg.refine_pool == 'parents_and_explorers':
    return cfg.top_k + cfg.n_explore
  return cfg.top_k


def draw_generation(key: jax.Array, cfg: SearchConfig, shape: tuple[int, ...]) -> Draws:
  """The draws of one generation for candidates of ``shape`` (without the population axis),
  with ``cfg.operators.mutation``. One draw call each for parents and noise."""
  k_parents, k_noise = jax.random.split(key)
  pool_sizes = np.repeat([cfg.top_k, refine_pool_size(cfg)], [cfg.n_explore, cfg.n_refine])
  mutation = registry.resolve(cfg.operators).mutation
  return Draws(parents=ops_lib.draw_parents(k_parents, pool_sizes),
               noise=mutation(k_noise, (cfg.n_explore + cfg.n_refine, *shape)))


def smoothed(noise: jax.Array, schedule: LayerSchedule, cfg: SearchConfig,
             ops: registry.Operators) -> jax.Array:
  """The draws as the mutation adds them, (C, *S): smoothed first under
  ``blur_target='noise'`` (block activations only)."""
  if cfg.blur_target == 'noise' and not ops_lib.is_logits(noise):
    return ops.smoothing(noise, schedule.blur, cfg.blur_padding)
  return noise


def perturb(h: jax.Array, sigma: jax.Array, alpha, noise: jax.Array) -> jax.Array:
  """The mutation's formula, h + alpha * sigma * noise.

  Args:
    h: (C, *S) candidates.
    sigma: per-candidate scale broadcasting against h, e.g. (C, 1, 1, Ch) or (C, 1).
    alpha: mutation strength, a scalar.
    noise: (C, *S) (smoothed) draws.
  """
  return h + alpha * sigma * noise


def constraints(h: jax.Array, schedule: LayerSchedule, cfg: SearchConfig,
                ops: registry.Operators) -> Callable[[jax.Array], jax.Array]:
  """What follows a mutation of candidates shaped as ``h``: [blur +] per-sample normalisation
  for block activations (the blur under ``blur_target='candidate'``), centring for logits."""
  if ops_lib.is_logits(h):
    return ops_lib.center
  if cfg.blur_target == 'noise':
    return lambda x: ops_lib.normalise(x, cfg.norm_eps)
  return lambda x: ops_lib.normalise(ops.smoothing(x, schedule.blur, cfg.blur_padding),
                                     cfg.norm_eps)


def make_children(pool: jax.Array, parents: jax.Array, noise: jax.Array, alpha,
                  finish: Callable[[jax.Array], jax.Array] = lambda h: h,
                  crossover: Callable = ops_lib.crossover) -> jax.Array:
  """Children of parent pairs: crossover, mutation scaled by the parents' mean spread, finish.

  Args:
    pool: (N, *S) candidates the parents come from.
    parents: (C, 2) int indices into ``pool``.
    noise: (C, *S) smoothed draws (:func:`smoothed`).
    alpha: mutation strength.
    finish: applied last (:func:`constraints`).
    crossover: (h1, h2) -> child.

  Returns:
    (C, *S) children.
  """
  i, j = parents[:, 0], parents[:, 1]
  scale = ops_lib.spread(pool)
  sigma = (scale[i] + scale[j]) / 2
  return finish(perturb(crossover(pool[i], pool[j]), sigma, alpha, noise))


def offspring(parents: jax.Array, draws: Draws, alpha, *, schedule: LayerSchedule,
              cfg: SearchConfig, ops: registry.Operators) -> jax.Array:
  """The next population's candidates: the parents, then explorers (children of the parents
  mutated with alpha * boost), then refiners (children of the refinement pool, alpha).

  Args:
    parents: (top_k, *S) the selected parents, best first.
    draws: this generation's :class:`Draws`.
    alpha: this generation's alpha.
    schedule: the layer's boost and blur passes.
    cfg: population split, refinement pool, blur settings, normalisation eps.
    ops: the operators.

  Returns:
    (P, *S).
  """
  finish = constraints(parents, schedule, cfg, ops)
  noise = smoothed(draws.noise, schedule, cfg, ops)
  e = cfg.n_explore
  explorers = make_children(parents, draws.parents[:e], noise[:e], alpha * schedule.boost,
                            finish, ops.crossover)
  kept = jnp.concatenate([parents, explorers])
  pool = kept if cfg.refine_pool == 'parents_and_explorers' else parents
  refiners = make_children(pool, draws.parents[e:], noise[e:], alpha, finish, ops.crossover)
  return jnp.concatenate([kept, refiners])
