"""The layer-wise evolutionary search (paper section 3.1; docs/method.md section 3), built from
the operators.

Three levels, each a pure function of explicit state (evosax style):

* :func:`generation_step`: one generation of one image's population at one layer;
* :func:`evolve_layer`: ``lax.scan`` of generation steps over a layer's G_l generations;
* :func:`search_image` / :func:`search_batch`: initial population, then the four layers in
  turn, each seeded from the previous one; ``search_batch`` is ``vmap`` over images.

Fitness is a LOSS everywhere (cross-entropy against the label; lower is better; NaN -> +inf).

Randomness: an image's key is ``fold_in(key(seed), dataset_index)``; the initial population
uses ``fold_in(image_key, 0)``, layer l ``fold_in(image_key, l + 1)`` and its generation g
``fold_in(layer_key, g)``. An image's draws therefore do not depend on the batch it is
searched in or on the number of devices (its values do only by float rounding; see
:mod:`decouple_jax.search.sharding`).

The pieces of a generation are swappable through :class:`Operators` (e.g. the plain
``reduce_window`` blur instead of the matrix one).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from decouple_jax.config import LayerSchedule, SearchConfig
from decouple_jax.models import airbench
from decouple_jax.search import fast
from decouple_jax.search import gradient
from decouple_jax.search import operators as ops_lib


class Operators(NamedTuple):
  """The swappable pieces of a generation; the defaults are the engine's.

  Attributes:
    normal: (key, shape) -> float32 standard normal draws.
    crossover: (h1, h2) -> child.
    mutate: (h, sigma, alpha, noise) -> mutated h.
    blur: (h (P, H, W, C), passes, padding) -> h.
    normalise: (h (P, H, W, C), eps) -> h.
    center: logits (P, K) -> logits.
    fitness: (logits (P, K), label) -> LOSS (P,), lower is better, NaN -> +inf.
    select: (loss (P,), k) -> indices (k,) of the k lowest losses, best first.
  """
  normal: Callable = fast.normal
  crossover: Callable = ops_lib.crossover
  mutate: Callable = ops_lib.mutate
  blur: Callable = fast.blur
  normalise: Callable = ops_lib.normalise
  center: Callable = ops_lib.center
  fitness: Callable = ops_lib.fitness
  select: Callable = ops_lib.select


@struct.dataclass
class Population:
  """One image's candidates at one layer and their LOSSES (lower is better).

  Attributes:
    h: (P, *S) candidates: (P, H, W, C) block activations or (P, K) logits.
    loss: (P,) cross-entropy of each candidate's final logits; +inf for NaN.
  """
  h: jax.Array
  loss: jax.Array


class Draws(NamedTuple):
  """All random draws of one generation: C = C_exp + C_ref children, explorers first.

  Attributes:
    parents: (C, 2) int32 parent indices: explorers' into the top-k parents, refiners' into
      the refinement pool.
    noise: (C, *S) standard normal mutation noise.
  """
  parents: jax.Array
  noise: jax.Array


@struct.dataclass
class SearchResult:
  """The searched targets of a batch of B images, and how well they score (as LOSSES).

  Attributes:
    targets: 4 arrays, the best candidate of each search layer: (B, H_0, W_0, w_0),
      (B, H_1, W_1, w_1), (B, H_2, W_2, w_2), (B, K).
    best_loss: (B, 4) loss of each layer's best candidate at the end of that layer.
    init_loss: (B,) best loss of the initial (noisy-input) population.
    curves: 4 arrays (B, G_l): the best loss after each generation of layer l.
  """
  targets: tuple[jax.Array, ...]
  best_loss: jax.Array
  init_loss: jax.Array
  curves: tuple[jax.Array, ...]


def refine_pool_size(cfg: SearchConfig) -> int:
  """Size of the pool refinement parents are drawn from."""
  if cfg.refine_pool == 'parents_and_explorers':
    return cfg.top_k + cfg.n_explore
  return cfg.top_k


def draw_generation(key: jax.Array, cfg: SearchConfig, shape: tuple[int, ...],
                    normal: Callable = fast.normal) -> Draws:
  """The draws of one generation for candidates of ``shape`` (without the population axis).

  One draw call each for parents and noise: fewer PRNG call sites compile faster.
  """
  k_parents, k_noise = jax.random.split(key)
  pool_sizes = np.repeat([cfg.top_k, refine_pool_size(cfg)], [cfg.n_explore, cfg.n_refine])
  return Draws(parents=ops_lib.draw_parents(k_parents, pool_sizes),
               noise=normal(k_noise, (cfg.n_explore + cfg.n_refine, *shape)))


def _finish(h: jax.Array, schedule: LayerSchedule, cfg: SearchConfig, ops: Operators):
  """What follows mutation: [blur +] normalisation for activations, centring for logits."""
  if ops_lib.is_logits(h):
    return ops.center
  if cfg.blur_target == 'noise':
    return lambda x: ops.normalise(x, cfg.norm_eps)
  return lambda x: ops.normalise(ops.blur(x, schedule.blur, cfg.blur_padding), cfg.norm_eps)


def _mutation_noise(noise: jax.Array, schedule: LayerSchedule, cfg: SearchConfig,
                    ops: Operators) -> jax.Array:
  """The draws as the mutation adds them: smoothed first under ``blur_target='noise'``.

  Blurring the noise or the whole child adds the same smoothed noise; they differ only in
  whether the parents' mean is smoothed too, which compounds along a lineage.
  """
  if cfg.blur_target == 'noise' and not ops_lib.is_logits(noise):
    return ops.blur(noise, schedule.blur, cfg.blur_padding)
  return noise


def generation_step_with_draws(pop: Population, draws: Draws, *, schedule: LayerSchedule,
                               cfg: SearchConfig, score: Callable[[jax.Array], jax.Array],
                               ops: Operators = Operators()) -> Population:
  """One generation: elitist top-k, explorers, refiners, then score.

  Args:
    pop: the population, P = cfg.population candidates with known losses.
    draws: this generation's :class:`Draws`.
    schedule: the layer's alpha, boost and blur passes.
    cfg: population split, refinement pool, blur padding, normalisation eps, BN mode.
    score: candidates (N, *S) -> LOSS (N,). With inference BatchNorm only the children are
      scored (the parents' losses are known); with bn_mode 'batch' a candidate's loss depends
      on its population, so the whole new population is scored together.
    ops: the operators.

  Returns:
    The next population: parents (best first), then explorers, then refiners.
  """
  finish = _finish(pop.h, schedule, cfg, ops)
  children = functools.partial(ops_lib.make_children, finish=finish,
                               crossover=ops.crossover, mutate=ops.mutate)
  noise = _mutation_noise(draws.noise, schedule, cfg, ops)
  top = ops.select(pop.loss, cfg.top_k)
  parents = pop.h[top]
  e = cfg.n_explore
  explorers = children(parents, draws.parents[:e], noise[:e], schedule.alpha * schedule.boost)
  kept = jnp.concatenate([parents, explorers])
  pool = kept if cfg.refine_pool == 'parents_and_explorers' else parents
  refiners = children(pool, draws.parents[e:], noise[e:], schedule.alpha)
  h = jnp.concatenate([kept, refiners])
  if cfg.bn_mode == 'batch':
    return Population(h, score(h))
  return Population(h, jnp.concatenate([pop.loss[top], score(h[cfg.top_k:])]))


def generation_step(pop: Population, key: jax.Array, *, schedule: LayerSchedule,
                    cfg: SearchConfig, score: Callable[[jax.Array], jax.Array],
                    ops: Operators = Operators()) -> Population:
  """:func:`generation_step_with_draws` with the draws taken from ``key``."""
  draws = draw_generation(key, cfg, pop.h.shape[1:], ops.normal)
  return generation_step_with_draws(pop, draws, schedule=schedule, cfg=cfg, score=score,
                                    ops=ops)


def evolve_layer(pop: Population, key: jax.Array, *, schedule: LayerSchedule,
                 cfg: SearchConfig, score: Callable[[jax.Array], jax.Array],
                 ops: Operators = Operators()) -> tuple[Population, jax.Array]:
  """``schedule.generations`` generation steps under ``lax.scan``.

  Generation g draws from ``fold_in(key, g)``; the other arguments are those of
  :func:`generation_step_with_draws`.

  Returns:
    The final population and the best loss after each generation, (G,).
  """
  step = functools.partial(generation_step, schedule=schedule, cfg=cfg, score=score, ops=ops)

  def body(pop, g):
    pop = step(pop, jax.random.fold_in(key, g))
    return pop, jnp.min(pop.loss)
  return lax.scan(body, pop, jnp.arange(schedule.generations))


def base_key(cfg: SearchConfig) -> jax.Array:
  """The search's root key; image i's key is ``fold_in(base_key(cfg), i)``."""
  return jax.random.key(cfg.seed)


def network_forward(model: airbench.AirbenchNet, variables, bn_mode: str
                    ) -> Callable[[int, jax.Array], tuple[jax.Array, ...]]:
  """``forward(layer, h) -> later taps``: the search network's own
  :meth:`~decouple_jax.models.AirbenchNet.forward_from`, BatchNorm per ``bn_mode``.

  'inference' uses the stored statistics (candidates independent); 'batch' normalises with
  the statistics of the candidates passed together and leaves the stored ones untouched.
  """
  if bn_mode == 'inference':
    return lambda layer, h: model.apply(variables, layer, h, use_running_average=True,
                                        method=model.forward_from)

  def forward(layer, h):
    taps, _ = model.apply(variables, layer, h, use_running_average=False,
                          mutable=['batch_stats'], method=model.forward_from)
    return taps
  return forward


def search_image(model: airbench.AirbenchNet, variables, cfg: SearchConfig, image: jax.Array,
                 label: jax.Array, index: jax.Array, *,
                 ops: Operators = Operators()) -> SearchResult:
  """The full layer-wise search for one image (docs/method.md section 3).

  Args:
    model: the search network (untrained, or any network of the family); set its
      ``identity_convs`` from these ``variables`` to skip identity convs.
    variables: its {'params', 'batch_stats'}.
    cfg: the search configuration.
    image: (H, W, C) normalised image.
    label: () int32 class.
    index: () int32 dataset index (selects the image's random stream).
    ops: the operators.

  Returns:
    A :class:`SearchResult` without the batch axis: targets (*S_l), best_loss (4,),
    init_loss (), curves (G_l,). Block targets are values of the network's taps.
  """
  forward = network_forward(model, variables, cfg.bn_mode)
  image_key = jax.random.fold_in(base_key(cfg), index)
  noisy = ops_lib.init_population(
      image, ops.normal(jax.random.fold_in(image_key, 0), (cfg.population, *image.shape)),
      cfg.init_noise)
  taps = forward(-1, noisy)
  pop = Population(taps[0], ops.fitness(taps[-1], label))
  init_loss = jnp.min(pop.loss)
  # The image's own taps in this network: what an anchored fitness measures distance from.
  clean = forward(-1, image[None]) if cfg.anchor_weight else None
  targets, best_loss, curves = [], [], []
  layer_fn = evolve_layer if cfg.method == 'evolution' else gradient.descend_layer
  for layer, schedule in enumerate(cfg.layers):
    def score(h, layer=layer):
      logits = h if layer == airbench.LOGITS else forward(layer, h)[-1]
      loss = ops.fitness(logits, label)
      if clean is None or layer == airbench.LOGITS:
        return loss
      return loss + cfg.anchor_weight * ops_lib.anchor_distance(h, clean[layer][0],
                                                                cfg.norm_eps)
    if clean is not None:
      # The carried losses were scored at the previous layer, without this layer's anchor.
      pop = pop.replace(loss=score(pop.h))
    pop, curve = layer_fn(pop, jax.random.fold_in(image_key, layer + 1),
                          schedule=schedule, cfg=cfg, score=score, ops=ops)
    best = jnp.argmin(pop.loss)
    targets.append(pop.h[best])
    best_loss.append(pop.loss[best])
    curves.append(curve)
    if layer < airbench.LOGITS:
      # Downstream of the whole population, so batch statistics (bn_mode 'batch') see it.
      down = forward(layer, pop.h)[0]
      if cfg.seed_next == 'best':
        pop = Population(jnp.broadcast_to(down[best], down.shape),
                         jnp.full_like(pop.loss, pop.loss[best]))
      else:
        pop = Population(down, pop.loss)
  return SearchResult(targets=tuple(targets), best_loss=jnp.stack(best_loss),
                      init_loss=init_loss, curves=tuple(curves))


def search_batch(model: airbench.AirbenchNet, variables, cfg: SearchConfig, images: jax.Array,
                 labels: jax.Array, indices: jax.Array, *,
                 ops: Operators = Operators()) -> SearchResult:
  """:func:`search_image` for a batch: images (B, H, W, C), labels (B,), indices (B,).

  Returns a :class:`SearchResult` with a leading batch axis B on every array.
  """
  one = functools.partial(search_image, model, variables, cfg, ops=ops)
  return jax.vmap(one)(images, labels, indices)
