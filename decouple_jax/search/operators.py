"""Pure per-image search operators (paper section 3.1, appendix A.4; docs/method.md section 3).

Every operator acts on ONE image's population of candidates: ``(P, H, W, C)`` NHWC block
activations or ``(P, K)`` logits. Batching over images is ``jax.vmap``.

Operators that need randomness take their draws as arguments, so a test can feed the same draws
to a NumPy reference (:func:`draw_parents` makes the index draws). The engine's defaults and the
anchored fitness are registered by name (:mod:`decouple_jax.search.registry`); how a child is
made from them is :mod:`decouple_jax.search.mutation`'s.

Fitness is a LOSS everywhere: the cross-entropy of a candidate's logits against the image's
label. Lower is better; NaN counts as +inf, so a diverged candidate is never selected.

The blur here is the plain definition (passes of ``lax.reduce_window``); the search engine uses
the equal, faster matrix form of :mod:`decouple_jax.search.fast`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from decouple_jax.search import registry


def is_logits(h: jax.Array) -> bool:
  """True for a logits population (P, K), False for block activations (P, H, W, C)."""
  return h.ndim == 2


def spread(h: jax.Array) -> jax.Array:
  """Each candidate's mutation scale, shaped to broadcast against ``h``.

  Args:
    h: (P, H, W, C) activations or (P, K) logits.

  Returns:
    (P, 1, 1, C): the spatial std of every channel; or (P, 1): the std across classes.
    Population std (ddof 0).
  """
  return jnp.std(h, axis=(1,) if is_logits(h) else (1, 2), keepdims=True)


def init_population(image: jax.Array, noise: jax.Array, init_noise: float) -> jax.Array:
  """Noisy variants of the input image: the initial population before the network.

  Args:
    image: (H, W, C) normalised image.
    noise: (P, H, W, C) standard normal draws.
    init_noise: noise std as a fraction of each channel's spatial std in ``image``.

  Returns:
    (P, H, W, C): image + init_noise * std_c(image) * noise.
  """
  return image + init_noise * spread(image[None]) * noise


@registry.register('crossover', 'mean')
def crossover(h1: jax.Array, h2: jax.Array) -> jax.Array:
  """The mean of two parents (any matching shapes)."""
  return (h1 + h2) / 2


def center(h: jax.Array) -> jax.Array:
  """Logits (P, K) minus their mean across classes (softmax is unchanged by it)."""
  return h - jnp.mean(h, axis=-1, keepdims=True)


def blur(h: jax.Array, passes: int, padding: str = 'zeros') -> jax.Array:
  """``passes`` of 3x3 average pooling, stride 1, padding 1, on (P, H, W, C).

  Args:
    h: (P, H, W, C).
    passes: number of passes (0 returns h).
    padding: 'zeros' divides every window by 9, counting the zero padding (PyTorch's
      avg_pool2d default); 'valid' divides by the number of in-image neighbours.
  """
  window, strides, pad = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  box_sum = lambda x: lax.reduce_window(x, 0.0, lax.add, window, strides, pad)
  if padding == 'zeros':
    count = 9.0
  else:
    count = box_sum(jnp.ones((1, *h.shape[1:3], 1), h.dtype))
  for _ in range(passes):
    h = box_sum(h) / count
  return h


def normalise(h: jax.Array, eps: float) -> jax.Array:
  """Per-sample normalisation over (H, W, C): (h - mean) / sqrt(var + eps); h is (P, H, W, C)."""
  mean = jnp.mean(h, axis=(1, 2, 3), keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=(1, 2, 3), keepdims=True)
  return (h - mean) * lax.rsqrt(var + eps)


@registry.register('fitness', 'cross_entropy')
def fitness(logits: jax.Array, label: jax.Array) -> jax.Array:
  """Cross-entropy LOSS of each candidate (lower is better; NaN -> +inf).

  Args:
    logits: (P, K).
    label: () int, the image's class.

  Returns:
    (P,) float32, >= 0.

  Computed as logsumexp of the margins ``logits - logits[label]``, whose label term is 0, so
  no large logit is subtracted from a large log-sum-exp; then clamped at 0. At huge logits
  (the logits layer mutated with alpha 1e6 .. 1e30) XLA may compute the label's logit and the
  maximum in different fusions, an ulp apart, and an ulp there is 1e5 .. 1e23 nats: without
  the clamp such a candidate scored a negative loss.
  """
  margins = logits - logits[:, label, None]
  ce = jnp.maximum(jax.nn.logsumexp(margins, axis=-1), 0.0)
  return jnp.where(jnp.isnan(ce), jnp.inf, ce)


def anchor_distance(h: jax.Array, reference: jax.Array, eps: float) -> jax.Array:
  """How far each candidate has moved from a reference activation, scale-free.

  Args:
    h: (P, H, W, C) candidates.
    reference: (H, W, C), e.g. the image's own activation in the untrained network.
    eps: the normalisation's epsilon.

  Returns:
    (P,): the mean squared difference of the per-sample normalised maps, which is
    2 * (1 - correlation): 0 for the reference itself, 2 for an uncorrelated candidate.
  """
  diff = normalise(h, eps) - normalise(reference[None], eps)
  return jnp.mean(jnp.square(diff), axis=(1, 2, 3))


@registry.register('fitness', 'anchored')
def anchored_fitness(logits: jax.Array, label: jax.Array, candidates: jax.Array,
                     reference: jax.Array, *, weight: float, eps: float = 1e-5) -> jax.Array:
  """Beyond the paper: :func:`fitness` plus ``weight`` x :func:`anchor_distance` of block
  candidates from the image's own activation, so the search keeps what the image itself gives
  and adds only what lowers the loss. The logits layer is not anchored.

  Args:
    logits: (P, K) the candidates' final logits; label: () int.
    candidates: (P, H, W, C) block candidates, or (P, K) logits (then no anchor).
    reference: the image's own activation at that layer, (H, W, C) (or (K,)).
    weight: the anchor's weight (0 is the paper's fitness).
    eps: the normalisation's epsilon.

  Returns:
    (P,) LOSS; stores searched with it record the sum.
  """
  loss = fitness(logits, label)
  if is_logits(candidates):
    return loss
  return loss + weight * anchor_distance(candidates, reference, eps)


@registry.register('selection', 'top_k')
def select(loss: jax.Array, k: int) -> jax.Array:
  """Indices (k,) of the k lowest losses, best first (ties: lower index first)."""
  return lax.top_k(-loss, k)[1]


def draw_parents(key: jax.Array, pool_sizes) -> jax.Array:
  """Parent indices of C children, each uniform over child i's pool [0, pool_sizes[i]).

  Args:
    key: PRNG key.
    pool_sizes: (C,) int, the size of the pool each child's two parents come from.

  Returns:
    (C, 2) int32; the two parents are independent (they may coincide). Drawn as 32 random bits
    modulo the pool size: the bias, at most pool_size / 2**32, is negligible, and one draw
    instead of ``randint``'s three keeps compile time down.
  """
  pool_sizes = jnp.asarray(pool_sizes, jnp.uint32)
  bits = jax.random.bits(key, (pool_sizes.shape[0], 2), jnp.uint32)
  return (bits % pool_sizes[:, None]).astype(jnp.int32)
