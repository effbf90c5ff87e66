"""Search operators and the engine's fast paths against plain NumPy, fed the same draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decouple_jax import models
from decouple_jax.search import fast
from decouple_jax.search import mutation
from decouple_jax.search import operators as ops
from numerics import assert_close

RNG = np.random.default_rng(0)


def _f32(*shape, scale=1.0, shift=0.0):
  return (RNG.normal(size=shape) * scale + shift).astype(np.float32)


# --- NumPy references -------------------------------------------------------------------------

def np_spread(h):
  return h.std(axis=(1,) if h.ndim == 2 else (1, 2), keepdims=True)


def np_blur(h, passes, padding):
  """Literal 3x3 average pooling, stride 1, padding 1, one window at a time."""
  p, hh, ww, c = h.shape
  for _ in range(passes):
    pad = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros_like(h)
    for i in range(hh):
      for j in range(ww):
        window = pad[:, i:i + 3, j:j + 3]
        count = 9 if padding == 'zeros' else (min(i + 1, hh - 1) - max(i - 1, 0) + 1) * (
            min(j + 1, ww - 1) - max(j - 1, 0) + 1)
        out[:, i, j] = window.sum(axis=(1, 2)) / count
    h = out
  return h


def np_normalise(h, eps):
  mean = h.mean(axis=(1, 2, 3), keepdims=True)
  return (h - mean) / np.sqrt(h.var(axis=(1, 2, 3), keepdims=True) + eps)


def np_fitness(logits, label):
  logits = logits.astype(np.float64)
  m = logits.max(axis=1, keepdims=True)
  ce = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0] - logits[:, label]
  return np.where(np.isnan(ce), np.inf, ce)


def np_children(pool, parents, noise, alpha, finish):
  i, j = parents[:, 0], parents[:, 1]
  s = np_spread(pool)
  return finish((pool[i] + pool[j]) / 2 + alpha * (s[i] + s[j]) / 2 * noise)


# --- elementwise operators --------------------------------------------------------------------

def test_crossover_and_mutate_exact_values():
  a, b = np.array([[1.0, 3.0]], np.float32), np.array([[3.0, 7.0]], np.float32)
  np.testing.assert_array_equal(ops.crossover(a, b), [[2.0, 5.0]])
  out = mutation.perturb(a, np.array([[2.0]], np.float32), 0.5,
                         np.array([[1.0, -2.0]], np.float32))
  np.testing.assert_array_equal(out, [[2.0, 1.0]])


@pytest.mark.parametrize('shape', [(5, 4, 3, 6), (5, 10)])
def test_spread_is_per_channel_spatial_std_or_class_std(shape):
  h = _f32(*shape, scale=2.0)
  got = ops.spread(jnp.asarray(h))
  assert got.shape == ((5, 1, 1, 6) if len(shape) == 4 else (5, 1))
  np.testing.assert_allclose(got, np_spread(h), rtol=1e-5)


def test_init_population_scales_noise_by_channel_std():
  image = np.stack([np.zeros((4, 4)), np.arange(16.0).reshape(4, 4)], -1).astype(np.float32)
  noise = _f32(3, 4, 4, 2)
  got = ops.init_population(jnp.asarray(image), jnp.asarray(noise), 0.1)
  np.testing.assert_array_equal(got[..., 0], noise[..., 0] * 0.0)  # constant channel: no noise
  np.testing.assert_allclose(got[..., 1], image[..., 1] + 0.1 * image[..., 1].std() * noise[..., 1],
                             rtol=1e-6)


def test_center_removes_the_class_mean():
  got = ops.center(jnp.array([[1.0, 2.0, 6.0]]))
  np.testing.assert_array_equal(got, [[-2.0, -1.0, 3.0]])


def test_normalise_exact_and_reference():
  h = np.array([1.0, 3.0, 1.0, 3.0], np.float32).reshape(1, 2, 2, 1)  # mean 2, var 1
  np.testing.assert_allclose(ops.normalise(jnp.asarray(h), 0.0).ravel(), [-1, 1, -1, 1])
  h = _f32(3, 5, 4, 6, scale=3.0, shift=1.0)
  np.testing.assert_allclose(ops.normalise(jnp.asarray(h), 1e-5), np_normalise(h, 1e-5),
                             rtol=1e-5, atol=1e-6)


def test_fitness_is_cross_entropy_loss_and_nan_is_inf():
  logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [np.nan, 0.0]], np.float32)
  got = ops.fitness(jnp.asarray(logits), 0)
  np.testing.assert_allclose(got, [np.log(2.0), np.log(4 / 3), np.inf], rtol=1e-6)
  logits = _f32(6, 10, scale=4.0)
  np.testing.assert_allclose(ops.fitness(jnp.asarray(logits), 7), np_fitness(logits, 7),
                             rtol=1e-5)


def test_anchor_distance_is_two_minus_twice_the_correlation():
  ref = _f32(5, 4, 3, shift=2.0)
  z = (ref - ref.mean()) / ref.std()
  other = _f32(5, 4, 3)
  other = other - other.mean() - (other * z).mean() * z  # exactly uncorrelated with ref
  h = np.stack([3 * ref + 1, -ref, other, 0.6 * z + 0.8 * other / other.std()])
  # Scale and shift do not count; the sign flips the correlation; rho = 0.6 gives 0.8.
  np.testing.assert_allclose(ops.anchor_distance(jnp.asarray(h), jnp.asarray(ref), 0.0),
                             [0.0, 4.0, 2.0, 0.8], atol=1e-5)


def test_select_returns_lowest_losses_best_first():
  loss = jnp.array([3.0, jnp.inf, 0.5, 2.0, 0.5, 1.0])
  np.testing.assert_array_equal(ops.select(loss, 4), [2, 4, 5, 3])  # tie: lower index first


def test_draw_parents_uniform_over_each_pool():
  pools = np.repeat([3, 7], [2000, 2000])
  parents = np.asarray(ops.draw_parents(jax.random.key(0), pools))
  assert parents.shape == (4000, 2) and parents.dtype == np.int32
  for rows, n in ((parents[:2000], 3), (parents[2000:], 7)):
    counts = np.bincount(rows.ravel(), minlength=n)
    assert len(counts) == n
    np.testing.assert_allclose(counts / counts.sum(), 1 / n, atol=0.03)


# --- blur -------------------------------------------------------------------------------------

def test_blur_exact_values():
  delta = np.zeros((1, 5, 5, 1), np.float32)
  delta[0, 2, 2, 0] = 9.0
  got = np.asarray(ops.blur(jnp.asarray(delta), 1))[0, ..., 0]
  expected = np.zeros((5, 5))
  expected[1:4, 1:4] = 1.0
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  ones = jnp.ones((1, 4, 4, 1))
  np.testing.assert_allclose(ops.blur(ones, 1)[0, 0, 0, 0], 4 / 9, rtol=1e-6)  # zeros count
  np.testing.assert_allclose(ops.blur(ones, 3, 'valid'), ones, rtol=1e-6)


@pytest.mark.parametrize('padding', ['zeros', 'valid'])
@pytest.mark.parametrize('passes', [0, 1, 3])
def test_blur_plain_and_matrix_forms_equal_numpy(passes, padding):
  h = _f32(3, 6, 5, 4)
  expected = np_blur(h.astype(np.float64), passes, padding)
  np.testing.assert_allclose(ops.blur(jnp.asarray(h), passes, padding), expected,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fast.blur(jnp.asarray(h), passes, padding), expected,
                             rtol=1e-5, atol=1e-6)


def test_matrix_blur_equals_reduce_window_at_paper_shape():
  h = jnp.asarray(_f32(4, 15, 15, 32))
  # 5 passes of 9-term window sums against two 15-term matmuls.
  assert_close(fast.blur(h, 5), ops.blur(h, 5), terms=5 * 9)


# --- children ---------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['conv', 'logits'])
def test_make_children_equals_numpy_with_same_draws(kind):
  shape = (4, 5, 3) if kind == 'conv' else (10,)
  pool = _f32(6, *shape, scale=2.0, shift=0.5)
  parents = np.asarray(ops.draw_parents(jax.random.key(3), np.full(9, 6)))
  noise = _f32(9, *shape)
  if kind == 'conv':
    finish = lambda x: ops.normalise(fast.blur(x, 2), 1e-5)
    np_finish = lambda x: np_normalise(np_blur(x, 2, 'zeros'), 1e-5)
  else:
    finish, np_finish = ops.center, lambda x: x - x.mean(axis=1, keepdims=True)
  run = lambda *a: mutation.make_children(*a, 0.7, finish)
  got = run(jnp.asarray(pool), jnp.asarray(parents), jnp.asarray(noise))
  jitted = jax.jit(run)(jnp.asarray(pool), jnp.asarray(parents), jnp.asarray(noise))
  expected = np_children(pool.astype(np.float64), parents, noise, 0.7, np_finish)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  # jit fuses otherwise: the blur's sums (2 passes of 9 terms) and the std's (4 x 5 x 3).
  assert_close(jitted, got, terms=2 * 9 + 4 * 5 * 3)


# --- fast paths -------------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(7, 3, 5), (4, 6)])  # odd and even sizes
def test_fast_normal_is_jax_normal_with_threefrys_original_layout(shape):
  key = jax.random.key(5)
  normal = jax.jit(fast.normal, static_argnums=1)
  # The hash's bits are integers (exact); erfinv's polynomial, fused into another program,
  # may contract (FMA) otherwise: a few roundings of the largest draw.
  with jax.threefry_partitionable(False):
    assert_close(normal(key, shape), jax.random.normal(key, shape), terms=8)
  keys = jax.random.split(key, 3)
  assert_close(jax.jit(jax.vmap(lambda k: fast.normal(k, shape)))(keys)[1],
               normal(keys[1], shape), terms=8)


def test_fast_normal_is_standard_normal():
  draws = np.asarray(jax.jit(fast.normal, static_argnums=1)(jax.random.key(6), (200_000,)))
  assert abs(draws.mean()) < 0.01 and abs(draws.std() - 1) < 0.01
  with pytest.raises(ValueError, match='threefry'):
    fast.normal(jax.random.key(0, impl='rbg'), (3,))
