"""The search engine's speed tricks, each equal to the plain computation it replaces.

1. Blur as matrices. A pass of 3x3 average pooling (stride 1, padding 1) is linear and
   separable: per channel it is ``M_H X M_W^T`` with ``M`` tridiagonal (ones / 3 for zero
   padding counted; rows divided by their in-image count for 'valid'). n passes are
   ``M_H^n X (M_W^n)^T``: two small matmuls however many passes, instead of n
   ``lax.reduce_window`` sweeps, which XLA's CPU backend runs slowly.
2. Normal draws with the threefry hash fused into the mutation (:func:`normal`).

Both are the engine's default operators ('gaussian' mutation, 'box' smoothing;
:mod:`decouple_jax.search.registry`).

The third, skipping the untrained network's identity convolutions, is an option of the model
itself (:attr:`decouple_jax.models.AirbenchNet.identity_convs`), so the search runs the model's
own forward.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from decouple_jax.search import registry


def _rotate_left(x: jax.Array, r: int) -> jax.Array:
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _threefry2x32(k1, k2, x0, x1):
  """The Threefry-2x32 hash (20 rounds) of counter pairs (x0, x1) under key (k1, k2), as JAX
  computes it, written out flat so XLA fuses it with its consumers."""
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in rotations[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, r)
    x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


@registry.register('mutation', 'gaussian')
def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The draws of ``jax.random.normal(key, shape)`` (float32) under
  ``jax.threefry_partitionable(False)``, computed faster on CPU: the same bits, turned into
  floats by the same ops, which XLA may contract (FMA) otherwise in another fusion.

  Two changes, neither to the values' distribution: threefry's original counter layout uses
  both words of every hash (JAX's default 'partitionable' layout hashes once per output), and
  the hash is written out flat: JAX lowers it on CPU as a rolled loop that materialises every
  round, while here it fuses with the uniform-to-normal transform and the mutation (about 18%
  off a layer-0 generation). Philox, as fast, does not lower under multi-device sharding in
  jax 0.10.2.

  Args:
    key: a threefry2x32 key (JAX's default).
    shape: output shape.
  """
  if str(jax.random.key_impl(key)) != 'threefry2x32':
    raise ValueError(f'fast.normal needs a threefry2x32 key, got {jax.random.key_impl(key)}')
  n = math.prod(shape)
  half = (n + 1) // 2
  k1, k2 = jnp.moveaxis(jax.random.key_data(key), -1, 0)
  count = lax.iota(jnp.uint32, half)
  # Counters 0..n-1 split in two halves, the odd one out paired with a 0, as in JAX.
  upper = count + np.uint32(half)
  if n % 2:
    upper = jnp.where(count == half - 1, np.uint32(0), upper)
  bits = jnp.concatenate(_threefry2x32(k1, k2, count, upper))[:n].reshape(shape)
  # jax.random.uniform on [nextafter(-1, 0), 1), then sqrt(2) * erfinv, as jax.random.normal.
  unit = lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000),
                                  jnp.float32) - np.float32(1)
  lo = np.nextafter(np.float32(-1), np.float32(0))
  u = jnp.maximum(lo, unit * (np.float32(1) - lo) + lo)
  return np.float32(np.sqrt(2)) * lax.erf_inv(u)


@functools.lru_cache(maxsize=None)
def blur_matrix(n: int, passes: int, padding: str = 'zeros') -> np.ndarray:
  """(n, n) float32 matrix of ``passes`` 1-D 3-tap averages along an axis of length n.

  'zeros': each pass is tridiagonal ones / 3 (zero padding counted). 'valid': each row is
  divided by its number of in-range neighbours (2 at the ends, 3 inside). A 2-D 3x3 pass is
  the product of one such pass along H and one along W, in both cases.
  """
  ones = np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
  step = ones / (3.0 if padding == 'zeros' else ones.sum(axis=1, keepdims=True))
  return np.linalg.matrix_power(step, passes).astype(np.float32)


@registry.register('smoothing', 'box')
def blur(h: jax.Array, passes: int, padding: str = 'zeros') -> jax.Array:
  """Same as :func:`decouple_jax.search.operators.blur` on (P, H, W, C), as two matmuls."""
  if passes == 0:
    return h
  p, hh, ww, c = h.shape
  m_h = jnp.asarray(blur_matrix(hh, passes, padding))
  m_w = jnp.asarray(blur_matrix(ww, passes, padding))
  highest = lax.Precision.HIGHEST
  # Along H: one wide (H, H) @ (H, P*W*C) product; XLA writes the H-major view straight from
  # the producer, where contracting H in place would transpose whole arrays (measured ~12%
  # slower per generation).
  x = jnp.einsum('ih,hpx->ipx', m_h, jnp.swapaxes(h.reshape(p, hh, ww * c), 0, 1),
                 precision=highest)
  x = jnp.swapaxes(x, 0, 1).reshape(p * hh, ww, c)
  # Along W: a batch of (W, W) @ (W, C) products, one per (candidate, row).
  x = lax.dot_general(jnp.broadcast_to(m_w, (p * hh, ww, ww)), x,
                      (((2,), (1,)), ((0,), (0,))), precision=highest)
  return x.reshape(p, hh, ww, c)
