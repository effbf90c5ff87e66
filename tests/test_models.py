"""The airbench family: parameter count, tap shapes, initialisers."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from decouple_jax import config
from decouple_jax import data
from decouple_jax import models
from decouple_jax.mesh import mesh_1d
from decouple_jax.models import conv
from flax.linen import max_pool as flax_max_pool
from numerics import assert_close


def _params(model, shape):
  return model.init(jax.random.key(0), jnp.zeros((2, *shape)))['params']


def test_airbench94_parameter_count():
  model = models.AirbenchNet(num_classes=10, in_channels=3, widths=(64, 256, 256),
                             head='maxpool', logit_scale=1 / 9)
  params = _params(model, (32, 32, 3))
  assert sum(x.size for x in jax.tree.leaves(params)) == 1_971_640


@pytest.mark.parametrize('image_shape, expected', [
    ((32, 32, 3), ((15, 15, 256), (7, 7, 256), (3, 3, 256), (10,))),
    ((28, 28, 1), ((13, 13, 256), (6, 6, 256), (3, 3, 256), (10,))),
])
@pytest.mark.parametrize('convs', [2, 4, 6])
def test_tap_shapes(image_shape, expected, convs):
  model = models.AirbenchNet(num_classes=10, in_channels=image_shape[-1], convs_per_block=convs)
  assert models.tap_shapes(model, image_shape) == expected


def test_learning_net_has_three_groups_per_block_and_pools_once():
  model = models.AirbenchNet(num_classes=10, in_channels=3, widths=(8, 8, 8), convs_per_block=6)
  params = _params(model, (32, 32, 3))
  assert sorted(params['block0']) == ['group0', 'group1', 'group2']


def test_square_dirac_conv_is_exact_identity():
  kernel = models.dirac_kaiming_uniform(jax.random.key(3), (3, 3, 16, 16))
  assert models.is_identity_kernel(kernel)
  x = jax.random.normal(jax.random.key(4), (2, 7, 7, 16))
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_dirac_widening_conv_keeps_random_filters_beyond_c_in():
  kernel = np.asarray(models.dirac_kaiming_uniform(jax.random.key(3), (3, 3, 4, 10)))
  assert not models.is_identity_kernel(kernel)
  np.testing.assert_array_equal(kernel[1, 1, :, :4], np.eye(4))
  np.testing.assert_array_equal(kernel[0, 0, :, :4], 0)
  bound = 1 / np.sqrt(3 * 3 * 4)
  assert np.abs(kernel[..., 4:]).max() <= bound
  assert np.abs(kernel[..., 4:]).max() > 0.5 * bound


def test_whitening_kernel_whitens_patches():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(64, 9, 9, 3)).cumsum(axis=1)  # correlated neighbours
  kernel = models.whitening_kernel(images, eps=0.0)
  assert kernel.shape == (2, 2, 3, 24)
  patches = models.init.patches_2x2(images)
  filters = kernel.reshape(12, 24)
  out = patches @ filters[:, :12]
  np.testing.assert_allclose(out.T @ out / len(out), np.eye(12), atol=1e-4)
  np.testing.assert_array_equal(filters[:, 12:], -filters[:, :12])


def test_stem_filters_get_no_gradient_but_bias_does():
  model = models.AirbenchNet(num_classes=10, in_channels=1, widths=(8, 8, 8))
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  variables = models.init_model(model, jax.random.key(1), np.asarray(x))

  def loss(params):
    taps, _ = model.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
    return jnp.sum(taps[-1] ** 2)

  grads = jax.grad(loss)(variables['params'])
  assert not np.any(np.asarray(grads['whiten']['kernel']))
  assert np.any(np.asarray(grads['whiten']['bias']))


# Every option the search forward must honour (each row one test case).
FORWARD_OPTIONS = [
    dict(),
    dict(head='maxpool', logit_scale=1 / 9),
    dict(head_bias=True, logit_scale=0.5),
    dict(convs_per_block=4),
    dict(convs_per_block=6, tap='pre_gelu'),
    dict(convs_per_block=4, tap='pre_gelu', tap_scale=True, detach_head=True),
    dict(tap='post_gelu', tap_scale=True),
]


def _trained_looking(model, variables, key):
  """``variables`` with random tap scales, head bias and BatchNorm statistics, so that every
  term of the forward matters (an untrained net has scale 1 and statistics 0 / 1)."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(key, len(leaves))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
  out = []
  for path, leaf, k in zip(paths, leaves, keys):
    if 'tap_scale' in path or "'var'" in path:
      leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
    elif "'mean'" in path or ("'bias'" in path and 'whiten' not in path):
      leaf = 0.3 * jax.random.normal(k, leaf.shape)
    out.append(leaf)
  return jax.tree.unflatten(tree, out)


@pytest.mark.parametrize('use_running_average', [True, False])
@pytest.mark.parametrize('options', FORWARD_OPTIONS, ids=lambda o: ','.join(
    f'{k}={v}' for k, v in o.items()) or 'default')
def test_forward_from_with_identity_skips_equals_model_apply(options, use_running_average):
  """The search's forward is the model's own: restarting at any tap, with identity convs
  skipped, gives the taps of ``model.apply`` on the whole image."""
  model = models.AirbenchNet(num_classes=10, in_channels=3, widths=(12, 16, 16), **options)
  x = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
  variables = models.init_model(model, jax.random.key(1), np.asarray(x))
  skipped = model.clone(identity_convs=models.identity_convs(variables))
  assert skipped.identity_convs  # the square Dirac convs of an untrained net
  variables = _trained_looking(model, variables, jax.random.key(2))

  def apply(m, *args, **kw):
    if use_running_average:
      return m.apply(variables, *args, use_running_average=True, **kw)
    return m.apply(variables, *args, use_running_average=False, mutable=['batch_stats'],
                   **kw)[0]

  taps = apply(model, x)
  for got, want in zip(apply(skipped, x), taps):
    # Bitwise on any CPU: a Dirac conv's every output is x * 1 plus exact zeros.
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for layer in range(3):
    later = apply(skipped, layer, taps[layer], method=model.forward_from)
    assert len(later) == 3 - layer
    for got, want in zip(later, taps[layer + 1:]):
      # Another program (and tap / tap_scale * tap_scale rounds): at most the 12 convs of
      # two blocks, 9 x 16 terms each, round differently.
      assert_close(got, want, terms=12 * 9 * 16)
  assert apply(skipped, 3, taps[3], method=model.forward_from) == ()


def test_identity_convs_found_on_the_weights():
  model = models.AirbenchNet(num_classes=10, in_channels=3, widths=(12, 16, 16))
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  assert models.identity_convs(variables) == {
      ('block0', 'group0', 'conv2'), ('block1', 'group0', 'conv2'),
      ('block2', 'group0', 'conv1'), ('block2', 'group0', 'conv2')}
  params = jax.tree.map(lambda x: x, variables['params'])
  params['block2']['group0']['conv1']['kernel'] = (
      params['block2']['group0']['conv1']['kernel'].at[0, 0, 0, 1].set(1e-3))
  assert ('block2', 'group0', 'conv1') not in models.identity_convs(
      {**variables, 'params': params})


def test_build_from_config_sets_every_field():
  # Every field off its default, so a field that build() dropped would show.
  cfg = config.ModelConfig(widths=(8, 12, 16), convs_per_block=4, head='maxpool',
                           logit_scale=0.5, head_bias=True, bn_momentum=0.9, bn_eps=1e-5,
                           whiten_eps=1e-3, whiten_images=7, tap_scale=True, tap='pre_gelu',
                           conv_impl='xla')
  default = config.ModelConfig()
  model = models.build(cfg, 7, 3, detach_head=True)
  # The whitening settings are data, not architecture: init_for_dataset reads them.
  stem_only = {'whiten_eps', 'whiten_images'}
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    assert value != getattr(default, field.name), field.name
    if field.name not in stem_only:
      assert getattr(model, field.name) == value, field.name
  assert not hasattr(model, 'whiten_eps') and not hasattr(model, 'whiten_images')
  assert (model.num_classes, model.in_channels, model.detach_head) == (7, 3, True)
  assert not models.build(cfg, 7, 3).detach_head


def _twelve_images() -> data.Dataset:
  """12 random 28x28x1 training images (no test split)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
  empty = np.zeros((0, 28, 28, 1), np.uint8)
  mean, std = np.array([0.4], np.float32), np.array([0.3], np.float32)
  return data.Dataset('mnist', 10, images, np.zeros(12, np.int32), np.arange(12), empty,
                      np.zeros(0, np.int32), np.arange(0), empty, np.zeros(0, np.int32), mean,
                      std, fingerprint='test')


def test_init_for_dataset_whitens_on_the_first_whiten_images():
  ds = _twelve_images()
  images, mean, std = ds.train_images, ds.mean, ds.std
  cfg = config.ModelConfig(widths=(8, 8, 8), whiten_images=5, whiten_eps=1e-2)
  model, variables = models.init_for_dataset(cfg, ds, seed=3, detach_head=True)
  assert model.detach_head and model.num_classes == 10 and model.in_channels == 1
  want = models.whitening_kernel(np.asarray(data.normalize(images[:5], mean, std)), eps=1e-2)
  np.testing.assert_array_equal(np.asarray(variables['params']['whiten']['kernel']), want)
  # Deterministic in the seed: the same seed gives the same weights, another seed others.
  _, again = models.init_for_dataset(cfg, ds, seed=3)
  _, other = models.init_for_dataset(cfg, ds, seed=4)
  head = lambda v: np.asarray(v['params']['head']['kernel'])
  np.testing.assert_array_equal(head(again), head(variables))
  assert not np.array_equal(head(other), head(variables))


def test_search_seeds_share_the_network_of_one_network_seed():
  ds = _twelve_images()
  model_cfg = config.ModelConfig(widths=(8, 8, 8), whiten_images=5)
  network = lambda **seeds: models.init_for_dataset(
      model_cfg, ds, config.SearchConfig(model=model_cfg, **seeds).untrained_network_seed)[1]
  first = jax.tree.leaves(network(seed=0))
  for a, b in zip(first, jax.tree.leaves(network(seed=1, network_seed=0)), strict=True):
    np.testing.assert_array_equal(a, b)
  # Without a network seed, a search seed picks its own network.
  assert any(not np.array_equal(a, b)
             for a, b in zip(first, jax.tree.leaves(network(seed=1)), strict=True))


def test_max_pool_matches_flax_max_pool_on_odd_sizes():
  x = jax.random.normal(jax.random.key(0), (2, 31, 15, 3))
  want = flax_max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  np.testing.assert_array_equal(np.asarray(models.airbench.max_pool_2x2(x)), np.asarray(want))


@pytest.mark.parametrize('c_in, c_out, side', [(256, 256, 15), (24, 256, 31), (8, 16, 5)])
def test_matmul_conv_matches_xla_conv_values_and_gradients(c_in, c_out, side):
  # (24, 256) takes the col2im input gradient, the others XLA's transposed conv.
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (2, side, side, c_in))
  kernel = jax.random.normal(k2, (3, 3, c_in, c_out)) / np.sqrt(9 * c_in)
  cotangent = jax.random.normal(k3, (2, side, side, c_out))

  def value_and_grads(impl):
    y, vjp = jax.vjp(lambda x, k: conv.conv3x3(x, k, impl), x, kernel)
    return (y, *vjp(cotangent))

  # Sums of 9 * c_in (value, kernel gradient: 2 * side^2 terms) or 9 * c_out (input gradient)
  # products, in other orders.
  terms = (9 * c_in, 9 * c_out, 2 * side * side)
  for got, want, n in zip(value_and_grads('matmul'), value_and_grads('xla'), terms):
    assert_close(got, want, n)


def _conv_and_grads(x, kernel, g, chunk_images):
  """(forward, input grad, kernel grad) of the 'matmul' pieces, each chunked by its operand."""
  cb = lambda a: chunk_images * a[0].size * a.dtype.itemsize
  return (conv.chunked_conv(x, kernel, cb(x)), conv.input_grad(g, kernel, cb(g)),
          conv.kernel_grad(x, g, cb(x)))


# (128, 128) is wide (chunked XLA conv), (8, 128) takes the col2im input gradient, (8, 16) is
# narrow (unchunked XLA conv). 6 images in chunks of 2 are 3 chunks; a prime batch and a chunk
# smaller than one image fall back to single images.
@pytest.mark.parametrize('c_in, c_out', [(128, 128), (8, 128), (8, 16)])
@pytest.mark.parametrize('batch, chunk_images', [(6, 2), (5, 2), (4, 0)])
def test_batch_chunked_conv_and_gradients_match_xla(c_in, c_out, batch, chunk_images):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (batch, 3, 3, c_in))
  kernel = jax.random.normal(k2, (3, 3, c_in, c_out)) / np.sqrt(9 * c_in)
  g = jax.random.normal(k3, (batch, 3, 3, c_out))
  want, vjp = jax.vjp(lambda x, k: conv.conv3x3(x, k, 'xla'), x, kernel)
  # Not bitwise: XLA:CPU may block a conv of fewer images otherwise (on an AMD EPYC the
  # (128, 128) values differed by 3.1e-6, i.e. 2.7e-3 relative on a near-zero output).
  for got, want, n in zip(_conv_and_grads(x, kernel, g, chunk_images), (want, *vjp(g)),
                          (9 * c_in, 9 * c_out, batch * 9)):
    assert_close(got, want, n)


def test_batch_chunks_keep_a_sharded_batch_on_its_devices():
  # 16 images over 8 devices in chunks of 8 (two chunks): every device reads and writes one
  # image of each chunk, so nothing is gathered; only the kernel gradient's partial sums are
  # reduced across devices.
  sharded = NamedSharding(mesh_1d('batch'), P('batch'))
  x, g = (jax.device_put(jax.random.normal(jax.random.key(i), (16, 3, 3, 128)), sharded)
          for i in range(2))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 128, 128)) / 34
  chunked = jax.jit(lambda x, g: _conv_and_grads(x, kernel, g, 8))
  assert 'all-gather' not in chunked.lower(x, g).compile().as_text()
  for got, want, n in zip(chunked(x, g), _conv_and_grads(x, kernel, g, 16),
                          (9 * 128, 9 * 128, 16 * 9)):
    assert_close(got, want, n)


def test_conv_impl_auto_is_matmul_on_cpu_and_unknown_impls_are_refused():
  assert conv.resolve_impl('auto') == 'matmul'
  with pytest.raises(ValueError, match='conv impl'):
    conv.conv3x3(jnp.zeros((1, 3, 3, 1)), jnp.zeros((3, 3, 1, 1)), 'fft')
  with pytest.raises(config.ConfigError, match='conv_impl'):
    config.ModelConfig(conv_impl='fft')


def test_model_gives_same_parameters_outputs_and_gradients_with_either_conv_impl():
  x = np.asarray(jax.random.normal(jax.random.key(0), (4, 32, 32, 3)))
  build = lambda impl: models.build(
      config.ModelConfig(widths=(16, 32, 32), convs_per_block=4, conv_impl=impl), 10, 3)
  variables = models.init_model(build('xla'), jax.random.key(1), x)
  other = models.init_model(build('matmul'), jax.random.key(1), x)
  assert jax.tree.structure(other) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  def taps_and_grads(impl):
    model = build(impl)

    def loss(params):
      taps, _ = model.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
      return sum(jnp.mean(t ** 2) for t in taps), taps
    (_, taps), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
    return taps, grads

  (taps_m, grads_m), (taps_x, grads_x) = taps_and_grads('matmul'), taps_and_grads('xla')
  # Two programs: each of the 12 convs (sums of up to 9 x 32 terms) may round otherwise, and
  # BatchNorm carries relative errors on (here the gradients differed by 5 eps x their scale).
  for got, want in zip(taps_m, taps_x):
    assert_close(got, want, terms=12 * 9 * 32)
  for got, want in zip(jax.tree.leaves(grads_m), jax.tree.leaves(grads_x)):
    assert_close(got, want, terms=12 * 9 * 32)
