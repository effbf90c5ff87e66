"""The layer-wise evolutionary search (paper section 3.1; docs/method.md section 3), built from
the operators.

Three levels, each a pure function of explicit state (evosax style):

* :func:`generation_step`: one generation of one image's population at one layer;
* :func:`search_layer`: a layer's G_l generations (of evolution, or of the gradient control)
  under ``lax.scan``;
* :func:`search_with_key`: initial population, then the layers (one per tap of the network:
  blocks, then logits) in turn, each seeded from the previous one;
* :func:`search_image` / :func:`search_batch`: an image's search, or with
  ``cfg.average_of`` R > 1 the mean of R searches of it (beyond the paper);
  ``search_batch`` is ``vmap`` over images.

Fitness is a LOSS everywhere (cross-entropy against the label; lower is better; NaN -> +inf).

Randomness: an image's key is ``fold_in(key(seed), dataset_index)``; the initial population
uses ``fold_in(image_key, 0)``, layer l ``fold_in(image_key, l + 1)`` and its generation g
``fold_in(layer_key, g)``. An image's draws therefore do not depend on the batch it is
searched in or on the number of devices (its values do only by float rounding; see
:mod:`decouple_jax.search.sharding`). Search r of an average (:func:`repeat_key`) puts
``fold_in(image_key, 2**32 - r)`` in the image key's place for r >= 1.

The operators are chosen by name in ``cfg.operators`` (:mod:`decouple_jax.search.registry`);
how a child is made is :mod:`decouple_jax.search.mutation`'s, and the loop over a layer's
generations, shared with the gradient control, :mod:`decouple_jax.search.layer`'s.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from decouple_jax.config import LayerSchedule, SearchConfig
from decouple_jax.models import airbench
from decouple_jax.search import fast
from decouple_jax.search import gradient
from decouple_jax.search import layer
from decouple_jax.search import mutation
from decouple_jax.search import operators as ops_lib
from decouple_jax.search import registry


@struct.dataclass
class Population:
  """One image's candidates at one layer and their LOSSES (lower is better).

  Attributes:
    h: (P, *S) candidates: (P, H, W, C) block activations or (P, K) logits.
    loss: (P,) cross-entropy of each candidate's final logits; +inf for NaN.
  """
  h: jax.Array
  loss: jax.Array


@struct.dataclass
class SearchResult:
  """The searched targets of a batch of B images, and how well they score (as LOSSES).

  With ``average_of`` R > 1 (:func:`search_image`) every field but ``target_loss`` is the mean
  over the image's R searches.

  Attributes:
    targets: the best candidate of each search layer (L of them, the network's taps):
      (B, H_0, W_0, w_0), (B, H_1, W_1, w_1), (B, H_2, W_2, w_2), (B, K).
    best_loss: (B, L) loss of each layer's best candidate at the end of that layer.
    target_loss: (B, L) loss of each layer's target as returned, by that layer's fitness: for
      one search its ``best_loss``; for a mean of searches the mean target's own loss (under
      ``bn_mode='batch'`` scored as a population of one).
    init_loss: (B,) best loss of the initial (noisy-input) population.
    curves: L arrays (B, G_l): the best loss after each generation of layer l.
  """
  targets: tuple[jax.Array, ...]
  best_loss: jax.Array
  target_loss: jax.Array
  init_loss: jax.Array
  curves: tuple[jax.Array, ...]


def generation_step_with_draws(pop: Population, draws: mutation.Draws, *, alpha,
                               schedule: LayerSchedule, cfg: SearchConfig,
                               score: Callable[[jax.Array], jax.Array]) -> Population:
  """One generation: elitist top-k, explorers, refiners (:func:`~decouple_jax.search.mutation.
  offspring`), then score.

  Args:
    pop: the population, P = cfg.population candidates with known losses.
    draws: this generation's :class:`~decouple_jax.search.mutation.Draws`.
    alpha: this generation's alpha (:func:`decouple_jax.search.layer.alpha_schedule`).
    schedule: the layer's boost and blur passes.
    cfg: population split, refinement pool, blur padding, normalisation eps, BN mode, and the
      operators (``cfg.operators``).
    score: candidates (N, *S) -> LOSS (N,). With inference BatchNorm only the children are
      scored (the parents' losses are known); with bn_mode 'batch' a candidate's loss depends
      on its population, so the whole new population is scored together.

  Returns:
    The next population: parents (best first), then explorers, then refiners.
  """
  ops = registry.resolve(cfg.operators)
  top = ops.selection(pop.loss, cfg.top_k)
  h = mutation.offspring(pop.h[top], draws, alpha, schedule=schedule, cfg=cfg, ops=ops)
  if cfg.bn_mode == 'batch':
    return Population(h, score(h))
  return Population(h, jnp.concatenate([pop.loss[top], score(h[cfg.top_k:])]))


def generation_step(pop: Population, key: jax.Array, *, alpha, schedule: LayerSchedule,
                    cfg: SearchConfig, score: Callable[[jax.Array], jax.Array]) -> Population:
  """:func:`generation_step_with_draws` with the draws taken from ``key``."""
  draws = mutation.draw_generation(key, cfg, pop.h.shape[1:])
  return generation_step_with_draws(pop, draws, alpha=alpha, schedule=schedule, cfg=cfg,
                                    score=score)


def evolution(schedule: LayerSchedule, cfg: SearchConfig,
              score: Callable[[jax.Array], jax.Array]) -> layer.Method:
  """The paper's search as a :class:`~decouple_jax.search.layer.Method`: the state is the
  population, a step is :func:`generation_step`."""
  step = functools.partial(generation_step, schedule=schedule, cfg=cfg, score=score)
  return layer.Method(init=lambda pop: pop,
                      step=lambda pop, key, alpha: step(pop, key, alpha=alpha),
                      best_loss=lambda pop: jnp.min(pop.loss), finish=lambda pop, _: pop)


# How each search method improves a layer (config.SEARCH_METHODS): a layer.Method from the
# layer's schedule, the search config and the layer's score.
METHODS = {'evolution': evolution, 'gradient': gradient.descent}


def search_layer(pop: Population, key: jax.Array, *, schedule: LayerSchedule,
                 cfg: SearchConfig, score: Callable[[jax.Array], jax.Array]
                 ) -> tuple[Population, jax.Array]:
  """One layer's search by ``cfg.method``: its generations under the shared loop
  (:func:`decouple_jax.search.layer.run`), generation g drawing from ``fold_in(key, g)``.

  Args:
    pop: the layer's starting population.
    key: the layer's key.
    schedule: the layer's generations, alpha (and its schedule), boost and blur passes.
    cfg: the search configuration.
    score: candidates (N, *S) -> LOSS (N,).

  Returns:
    The final population and the best loss after each generation, (G,).
  """
  method = METHODS[cfg.method](schedule, cfg, score)
  return layer.run(pop, key, schedule=schedule, method=method)


def base_key(cfg: SearchConfig) -> jax.Array:
  """The search's root key; image i's key is ``fold_in(base_key(cfg), i)``."""
  return jax.random.key(cfg.seed)


def repeat_key(image_key: jax.Array, repeat: int) -> jax.Array:
  """The key of search ``repeat`` (0 .. ``average_of`` - 1) of the image whose key is
  ``image_key``.

  Search 0 is the single search's own, so ``average_of=1`` is the search unchanged. Search
  r >= 1 folds in 2**32 - r, a number no child of an image key takes (they are 0 .. L), so
  its draws are no other search's, of this seed or another.
  """
  return image_key if repeat == 0 else jax.random.fold_in(image_key, 2**32 - repeat)


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


def image_fitness(model: airbench.AirbenchNet, variables, cfg: SearchConfig, image: jax.Array,
                  label: jax.Array) -> Callable[..., jax.Array]:
  """``fitness(l, h, logits=None) -> (N,)``: the LOSS of candidates h (N, *S_l) at search
  layer l of this image (``logits``: h's final logits, if already at hand)."""
  ops = registry.resolve(cfg.operators)
  forward = network_forward(model, variables, cfg.bn_mode)
  logits_layer = len(cfg.layers) - 1
  # The image's own taps in this network, for a fitness that reads the candidates.
  clean = forward(-1, image[None]) if ops.reads_candidates else None

  def fitness(l, h, logits=None):
    if logits is None:
      logits = h if l == logits_layer else forward(l, h)[-1]
    return ops.fitness(logits, label, h, None if clean is None else clean[l][0])
  return fitness


def search_with_key(model: airbench.AirbenchNet, variables, cfg: SearchConfig,
                    image: jax.Array, label: jax.Array, key: jax.Array) -> SearchResult:
  """One layer-wise search of one image (docs/method.md section 3), whatever
  ``cfg.average_of``.

  Args:
    model: the search network (untrained, or any network of the family); set its
      ``identity_convs`` from these ``variables`` to skip identity convs.
    variables: its {'params', 'batch_stats'}.
    cfg: the search configuration (its operators too, ``cfg.operators``).
    image: (H, W, C) normalised image.
    label: () int32 class.
    key: the search's key: the image's (``fold_in(base_key(cfg), index)``), or a
      :func:`repeat_key` of it.

  Returns:
    A :class:`SearchResult` without the batch axis: targets (*S_l), best_loss (L,),
    target_loss (L,) (= best_loss), init_loss (), curves (G_l,), one per layer of
    ``cfg.layers`` (the network's taps, in order). Block targets are values of the network's
    taps.
  """
  ops = registry.resolve(cfg.operators)
  forward = network_forward(model, variables, cfg.bn_mode)
  fitness = image_fitness(model, variables, cfg, image, label)
  # The initial population's noise is Gaussian whatever the mutation (the paper's noisy copies).
  noisy = ops_lib.init_population(
      image, fast.normal(jax.random.fold_in(key, 0), (cfg.population, *image.shape)),
      cfg.init_noise)
  taps = forward(-1, noisy)
  pop = Population(taps[0], fitness(0, taps[0], taps[-1]))
  init_loss = jnp.min(pop.loss)
  logits_layer = len(cfg.layers) - 1
  targets, best_loss, curves = [], [], []
  for l, schedule in enumerate(cfg.layers.values()):
    score = functools.partial(fitness, l)
    if ops.reads_candidates:
      # The carried losses were scored as the previous layer's candidates.
      pop = pop.replace(loss=score(pop.h))
    pop, curve = search_layer(pop, jax.random.fold_in(key, l + 1), schedule=schedule,
                              cfg=cfg, score=score)
    best = jnp.argmin(pop.loss)
    targets.append(pop.h[best])
    best_loss.append(pop.loss[best])
    curves.append(curve)
    if l < logits_layer:
      # Downstream of the whole population, so batch statistics (bn_mode 'batch') see it.
      down = forward(l, pop.h)[0]
      if cfg.seed_next == 'best':
        pop = Population(jnp.broadcast_to(down[best], down.shape),
                         jnp.full_like(pop.loss, pop.loss[best]))
      else:
        pop = Population(down, pop.loss)
  best_loss = jnp.stack(best_loss)
  return SearchResult(targets=tuple(targets), best_loss=best_loss, target_loss=best_loss,
                      init_loss=init_loss, curves=tuple(curves))


def search_image(model: airbench.AirbenchNet, variables, cfg: SearchConfig, image: jax.Array,
                 label: jax.Array, index: jax.Array) -> SearchResult:
  """The search of one image: :func:`search_with_key` with the image's key, or with
  ``cfg.average_of`` R > 1 (beyond the paper) the mean of R of them, search r with
  :func:`repeat_key` ``(image_key, r)``, all in this one network.

  Args:
    model, variables, cfg, image, label: as for :func:`search_with_key`.
    index: () int32 dataset index (selects the image's random stream).

  Returns:
    A :class:`SearchResult` without the batch axis. For R > 1 its targets are the searches'
    elementwise mean, best_loss, init_loss and curves their mean, and target_loss the loss of
    each mean target by its layer's fitness.
  """
  image_key = jax.random.fold_in(base_key(cfg), index)
  search = functools.partial(search_with_key, model, variables, cfg, image, label)
  if cfg.average_of == 1:
    return search(image_key)
  keys = jnp.stack([repeat_key(image_key, r) for r in range(cfg.average_of)])
  # One search after another (lax.map, not vmap): memory holds one search's working set and
  # R results (one image's targets each, a small part of it).
  mean = jax.tree.map(lambda t: jnp.mean(t, 0), lax.map(search, keys))
  fitness = image_fitness(model, variables, cfg, image, label)
  return mean.replace(target_loss=jnp.stack(
      [fitness(l, t[None])[0] for l, t in enumerate(mean.targets)]))


def search_batch(model: airbench.AirbenchNet, variables, cfg: SearchConfig, images: jax.Array,
                 labels: jax.Array, indices: jax.Array) -> SearchResult:
  """:func:`search_image` for a batch: images (B, H, W, C), labels (B,), indices (B,).

  Returns a :class:`SearchResult` with a leading batch axis B on every array.
  """
  one = functools.partial(search_image, model, variables, cfg)
  return jax.vmap(one)(images, labels, indices)
