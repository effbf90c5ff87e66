"""The search engine's speed tricks, each equal to the plain computation it replaces.

1. Blur as matrices. A pass of 3x3 average pooling (stride 1, padding 1) is linear and
   separable: per channel it is ``M_H X M_W^T`` with ``M`` tridiagonal (ones / 3 for zero
   padding counted; rows divided by their in-image count for 'valid'). n passes are
   ``M_H^n X (M_W^n)^T``: two small matmuls however many passes, instead of n
   ``lax.reduce_window`` sweeps, which XLA's CPU backend runs slowly.
2. Identity convolutions skipped. Every square conv of the untrained search network is an exact
   Dirac identity, so the fitness forward is elementwise work plus the head. Which convs are
   identities is checked once on the actual weights (:func:`identity_convs`), never assumed.
3. Max-pooling as a reshape-max, which XLA fuses with its neighbours (same values as
   ``nn.max_pool`` with a 2x2 VALID window).
4. Normal draws at half the hashing cost (:func:`normal`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from decouple_jax.models import airbench, init as inits

ConvPath = tuple[str, str, str]  # ('block1', 'group0', 'conv1')


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """``jax.random.normal(key, shape)`` (float32) with threefry's original counter layout.

  JAX's default ('partitionable') threefry layout spends one 2x32 hash per output word; the
  original layout uses both words of every hash, so drawing costs half (the noise is the
  largest single cost of a generation on CPU). Same generator, same N(0, 1) transform, a
  different but equally valid stream; deterministic, and unchanged by ``vmap``. (Philox is
  as fast but its ``mulhi`` does not lower under multi-device sharding in jax 0.10.2.)
  """
  with jax.threefry_partitionable(False):
    return jax.random.normal(key, shape)


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


def blur(h: jax.Array, passes: int, padding: str = 'zeros') -> jax.Array:
  """Same as :func:`decouple_jax.search.operators.blur` on (P, H, W, C), as two matmuls."""
  if passes == 0:
    return h
  m_h = jnp.asarray(blur_matrix(h.shape[1], passes, padding))
  m_w = jnp.asarray(blur_matrix(h.shape[2], passes, padding))
  h = jnp.einsum('ih,phwc->piwc', m_h, h, precision=lax.Precision.HIGHEST)
  return jnp.einsum('jw,piwc->pijc', m_w, h, precision=lax.Precision.HIGHEST)


def identity_convs(variables) -> frozenset[ConvPath]:
  """The convs of ``variables`` whose kernels are exact identities (concrete arrays only)."""
  found = set()
  for block, groups in variables['params'].items():
    if not block.startswith('block'):
      continue
    for group, layers in groups.items():
      for name, leaf in layers.items():
        if name.startswith('conv') and inits.is_identity_kernel(leaf['kernel']):
          found.add((block, group, name))
  return frozenset(found)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 stride-2 VALID max-pool of (N, H, W, C) (odd trailing rows/columns dropped)."""
  n, hh, ww, c = x.shape
  x = x[:, :hh // 2 * 2, :ww // 2 * 2]
  return x.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))


def _batch_norm(x: jax.Array, bias: jax.Array, stats, eps: float) -> jax.Array:
  """Flax BatchNorm (scale 1, learnable bias) on (N, H, W, C), without a statistics update.

  ``stats`` holds the stored 'mean' and 'var' (inference form), or is None for statistics over
  the batch, computed with Flax's fast variance so the batch form matches nn.BatchNorm too.
  """
  if stats is None:
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axis=(0, 1, 2)) - jnp.square(mean))
  else:
    mean, var = stats['mean'], stats['var']
  return (x - mean) * lax.rsqrt(var + eps) + bias


def forward_from(model: airbench.AirbenchNet, variables, layer: int, h: jax.Array, *,
                 skip: frozenset[ConvPath] = frozenset(),
                 use_running_average: bool = True) -> tuple[jax.Array, ...]:
  """Same as ``model.apply(variables, layer, h, method=model.forward_from)``, faster.

  Args:
    model: the (search) network; tap 'post_gelu', no tap scale.
    variables: its {'params', 'batch_stats'}.
    layer: 0, 1, 2 (restart from that block's output) or 3 (logits: returns ()).
    h: the tap's value, (N, H_l, W_l, w_l).
    skip: convs to skip, from :func:`identity_convs` on these same variables.
    use_running_average: inference BatchNorm (stored statistics) or batch statistics over N.

  Returns:
    The taps after ``layer``: block outputs (N, H', W', w) and finally the logits (N, K).
  """
  if model.tap != 'post_gelu' or model.tap_scale:
    raise ValueError('forward_from restarts from block outputs; it needs tap=post_gelu '
                     'and no tap_scale')
  if layer >= airbench.LOGITS:
    return ()
  params = variables['params']
  taps = []
  for i in range(layer + 1, len(model.widths)):
    block = f'block{i}'
    for g in range(model.convs_per_block // 2):
      group = f'group{g}'
      for c, norm in (('conv1', 'norm1'), ('conv2', 'norm2')):
        if (block, group, c) not in skip:
          h = lax.conv_general_dilated(h, params[block][group][c]['kernel'], (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        if c == 'conv1' and g == 0:
          h = _max_pool_2x2(h)
        stats = (variables['batch_stats'][block][group][norm]['bn']
                 if use_running_average else None)
        h = _batch_norm(h, params[block][group][norm]['bn']['bias'], stats, model.bn_eps)
        h = jax.nn.gelu(h, approximate=False)
    taps.append(h)
  if model.head == 'maxpool':
    h = jnp.max(h, axis=(1, 2))
  else:
    h = h.reshape(h.shape[0], -1)
  logits = lax.dot_general(h, params['head']['kernel'], (((1,), (0,)), ((), ())))
  if model.head_bias:
    logits = logits + params['head']['bias']
  taps.append(logits * model.logit_scale)
  return tuple(taps)
