"""The airbench-derived network family (paper appendix A.1; docs/method.md section 2), with taps
at every block.

Layout (NHWC):  whitening conv 2x2 (VALID) -> GELU -> block 0 -> block 1 -> block 2 -> head.
A block is ``convs_per_block // 2`` ConvGroups; a ConvGroup is
conv3x3 -> [maxpool 2x2, first group of a block only] -> BN -> GELU -> conv3x3 -> BN -> GELU.

The forward pass returns the *taps*: the three block outputs (or, with ``tap='pre_gelu'``,
their last BatchNorm outputs before the GELU) and the logits. Search restarts the network from
any tap (:meth:`AirbenchNet.forward_from`, the one forward every caller uses); learning regresses
the taps onto searched targets. Convs whose kernels were checked to be exact identities can be
skipped (``identity_convs``), which is what makes the untrained search network's forward cheap.

Shapes: a CIFAR input (B, 32, 32, 3) gives taps (B, 15, 15, w0), (B, 7, 7, w1), (B, 3, 3, w2),
(B, K); an MNIST input (B, 28, 28, 1) gives (B, 13, 13, w0), (B, 6, 6, w1), (B, 3, 3, w2), (B, K).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from decouple_jax.config import CONVS_PER_BLOCK, HEADS, TAPS
from decouple_jax.models import conv as convs
from decouple_jax.models import init as inits

LOGITS = 3
ConvPath = tuple[str, str, str]  # ('block1', 'group0', 'conv1')


class BatchNorm(nn.Module):
  """BatchNorm with scale fixed to 1 and a learnable bias (airbench).

  ``use_running_average=False`` normalises with the batch's statistics (and updates the
  'batch_stats' collection when it is mutable); True uses the stored statistics, which for an
  untrained network are their initial values (mean 0, variance 1).
  """
  momentum: float = 0.6
  epsilon: float = 1e-12

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    return nn.BatchNorm(
        use_running_average=use_running_average, momentum=self.momentum,
        epsilon=self.epsilon, use_scale=False, use_bias=True, use_fast_variance=False,
        name='bn')(x)


class Whiten(nn.Module):
  """2x2 VALID conv with frozen (stop_gradient) filters and a learnable bias, then GELU.

  The filters are zeros until :func:`decouple_jax.models.init_whitening` sets them from data.
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.zeros, (2, 2, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    y = jax.lax.conv_general_dilated(
        x, jax.lax.stop_gradient(kernel).astype(x.dtype), (1, 1), 'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return nn.gelu(y + bias, approximate=False)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, odd edges dropped: (B, H, W, C) -> (B, H//2, W//2, C).

  Same values as ``nn.max_pool(x, (2, 2), (2, 2))``; written as a reshape + max because
  XLA:CPU's gradient of reduce_window (select-and-scatter) is ~3x slower. Ties share the
  gradient equally instead of going to one input.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Conv3x3(nn.Module):
  """Bias-free 3x3 SAME conv, Dirac-Kaiming initialised: (B, H, W, C_in) -> (B, H, W, features).

  The parameter is 'kernel' (3, 3, C_in, features), as in ``nn.Conv``, so checkpoints and
  the initialisers see the same tree whichever ``impl`` (see :mod:`decouple_jax.models.conv`)
  computes the conv.
  """
  features: int
  impl: str = 'auto'
  identity: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', inits.dirac_kaiming_uniform,
                        (3, 3, x.shape[-1], self.features))
    if self.identity:
      # Only set for kernels checked to be exact identities (identity_convs): same values.
      return x
    x, kernel = nn.dtypes.promote_dtype(x, kernel)
    return convs.conv3x3(x, kernel, self.impl)


class ConvGroup(nn.Module):
  """conv -> [pool] -> BN -> GELU -> conv -> BN -> GELU, in NHWC.

  Returns the group output and the last BatchNorm's output (before its GELU), so a caller can
  tap either. ``identity`` names the convs ('conv1', 'conv2') to compute as identities.
  """
  width: int
  pool: bool
  bn_momentum: float = 0.6
  bn_eps: float = 1e-12
  conv_impl: str = 'auto'
  identity: frozenset = frozenset()

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool):
    conv = lambda name: Conv3x3(self.width, self.conv_impl, name in self.identity, name=name)
    bn = lambda name: BatchNorm(self.bn_momentum, self.bn_eps, name=name)
    x = conv('conv1')(x)
    if self.pool:
      x = max_pool_2x2(x)
    x = nn.gelu(bn('norm1')(x, use_running_average), approximate=False)
    x = conv('conv2')(x)
    pre = bn('norm2')(x, use_running_average)
    return nn.gelu(pre, approximate=False), pre


class Block(nn.Module):
  """``n_groups`` ConvGroups; only the first pools. Returns (output, last pre-GELU BN output).

  ``identity`` holds the (group, conv) names to compute as identities.
  """
  width: int
  n_groups: int
  bn_momentum: float = 0.6
  bn_eps: float = 1e-12
  conv_impl: str = 'auto'
  identity: frozenset = frozenset()

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool):
    pre = x
    for g in range(self.n_groups):
      group = f'group{g}'
      x, pre = ConvGroup(self.width, pool=g == 0, bn_momentum=self.bn_momentum,
                         bn_eps=self.bn_eps, conv_impl=self.conv_impl,
                         identity=frozenset(c for g2, c in self.identity if g2 == group),
                         name=group)(x, use_running_average)
    return x, pre


class AirbenchNet(nn.Module):
  """The airbench family with taps; see the module docstring.

  Attributes:
    num_classes: K.
    in_channels: input channels C (1 MNIST, 3 CIFAR); the whitening stem has 8C outputs.
    widths: block widths.
    convs_per_block: 2, 4 or 6.
    head: 'flatten' or 'maxpool'.
    logit_scale: multiplies the logits.
    head_bias: bias in the final Linear.
    bn_momentum, bn_eps: BatchNorm settings.
    tap: 'post_gelu' (block outputs) or 'pre_gelu' (last BN output of a block, before GELU).
    tap_scale: a learnable per-channel scale (init 1) on the tapped block outputs.
    detach_head: apply ``stop_gradient`` to the head's input, so a loss on the logits trains
      the head only (the student's body cutoff).
    conv_impl: how the 3x3 convs are computed, one of :data:`decouple_jax.models.conv.IMPLS`
      (same values and parameters; 'auto' is the fast one for the backend).
    identity_convs: convs computed as identities, as (block, group, conv) names; set it only
      from :func:`identity_convs` on the weights the model is applied with (the search's
      speed-up: every square conv of an untrained network is an exact Dirac identity).
  """
  num_classes: int
  in_channels: int = 3
  widths: Sequence[int] = (256, 256, 256)
  convs_per_block: int = 2
  head: str = 'flatten'
  logit_scale: float = 1.0
  head_bias: bool = False
  bn_momentum: float = 0.6
  bn_eps: float = 1e-12
  tap: str = 'post_gelu'
  tap_scale: bool = False
  detach_head: bool = False
  conv_impl: str = 'auto'
  identity_convs: frozenset = frozenset()

  def setup(self):
    if self.convs_per_block not in CONVS_PER_BLOCK:
      raise ValueError(f'convs_per_block must be one of {CONVS_PER_BLOCK}, got '
                       f'{self.convs_per_block}')
    if self.head not in HEADS:
      raise ValueError(f'head must be one of {HEADS}, got {self.head!r}')
    if self.tap not in TAPS:
      raise ValueError(f'tap must be one of {TAPS}, got {self.tap!r}')
    if self.conv_impl not in convs.IMPLS:
      raise ValueError(f'conv_impl must be one of {convs.IMPLS}, got {self.conv_impl!r}')
    self.whiten = Whiten(8 * self.in_channels, name='whiten')
    self.blocks = [
        Block(w, self.convs_per_block // 2, self.bn_momentum, self.bn_eps, self.conv_impl,
              frozenset((g, c) for b, g, c in self.identity_convs if b == f'block{i}'),
              name=f'block{i}') for i, w in enumerate(self.widths)]
    if self.tap_scale:
      self.tap_scales = [self.param(f'tap_scale{i}', nn.initializers.ones, (w,))
                         for i, w in enumerate(self.widths)]
    self.linear = nn.Dense(self.num_classes, use_bias=self.head_bias,
                           kernel_init=inits.kaiming_uniform, name='head')

  def stem(self, x: jax.Array) -> jax.Array:
    """Normalised image (B, H, W, C) -> whitened features (B, H-1, W-1, 8C)."""
    return self.whiten(x)

  def block(self, i: int, h: jax.Array, use_running_average: bool = False):
    """Block i: its input (B, H, W, C_in) -> (output, tap), each (B, H', W', w_i)."""
    out, pre = self.blocks[i](h, use_running_average)
    tap = out if self.tap == 'post_gelu' else pre
    if self.tap_scale:
      tap = tap * self.tap_scales[i]
    return out, tap

  def tap_output(self, i: int, tap: jax.Array) -> jax.Array:
    """Block i's output (what block i + 1 consumes) from its tap value, (B, H', W', w_i).

    The inverse of the tap in :meth:`block`: the output itself for 'post_gelu' taps, the GELU
    of the (unscaled) BatchNorm output for 'pre_gelu' ones.
    """
    if self.tap_scale:
      tap = tap / self.tap_scales[i]
    return tap if self.tap == 'post_gelu' else nn.gelu(tap, approximate=False)

  def head_logits(self, h: jax.Array) -> jax.Array:
    """Last block output (B, h, w, C) -> logits (B, K)."""
    if self.detach_head:
      h = jax.lax.stop_gradient(h)
    if self.head == 'maxpool':
      h = jnp.max(h, axis=(1, 2))
    else:
      h = h.reshape(h.shape[0], -1)
    return self.linear(h) * self.logit_scale

  def __call__(self, x: jax.Array, use_running_average: bool = False):
    """Normalised images (B, H, W, C) -> taps (block0, block1, block2, logits)."""
    return self.forward_from(-1, x, use_running_average)

  def forward_from(self, layer: int, h: jax.Array, use_running_average: bool = True):
    """Restarts the network at tap ``layer`` with value h; returns the later taps.

    Args:
      layer: -1 (h is the normalised input image: the whole network), 0, 1 or 2 (h is that
        block's tap value) or 3 (the logits).
      h: (B, H, W, C) images, (B, H_l, W_l, w_l) for a block's tap, (B, K) for the logits.
      use_running_average: BatchNorm form (search uses the inference form).

    Returns:
      The taps after ``layer``: a tuple of length 3 - layer ending with the logits
      (empty for layer 3).
    """
    if layer >= LOGITS:
      return ()
    h = self.stem(h) if layer < 0 else self.tap_output(layer, h)
    taps = []
    for i in range(layer + 1, len(self.widths)):
      h, tap = self.block(i, h, use_running_average)
      taps.append(tap)
    taps.append(self.head_logits(h))
    return tuple(taps)


def identity_convs(variables) -> frozenset[ConvPath]:
  """The convs of ``variables`` whose kernels are exact identities (concrete arrays only), as
  :attr:`AirbenchNet.identity_convs` takes them."""
  found = set()
  for block, groups in variables['params'].items():
    if not block.startswith('block'):
      continue
    for group, layers in groups.items():
      for name, leaf in layers.items():
        if name.startswith('conv') and inits.is_identity_kernel(leaf['kernel']):
          found.add((block, group, name))
  return frozenset(found)


def build(model_cfg, num_classes: int, in_channels: int, **overrides) -> AirbenchNet:
  """An :class:`AirbenchNet` from a :class:`decouple_jax.config.ModelConfig`.

  ``overrides`` set attributes that are not part of the config (e.g. ``detach_head``).
  """
  return AirbenchNet(
      num_classes=num_classes, in_channels=in_channels, widths=tuple(model_cfg.widths),
      convs_per_block=model_cfg.convs_per_block, head=model_cfg.head,
      logit_scale=model_cfg.logit_scale, head_bias=model_cfg.head_bias,
      bn_momentum=model_cfg.bn_momentum, bn_eps=model_cfg.bn_eps, tap=model_cfg.tap,
      tap_scale=model_cfg.tap_scale, conv_impl=model_cfg.conv_impl, **overrides)


def tap_shapes(model: AirbenchNet, image_shape: tuple[int, int, int]):
  """Per-tap shapes without the batch axis, e.g. ((15,15,256), (7,7,256), (3,3,256), (10,))."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  taps = jax.eval_shape(lambda v, x: model.apply(v, x, use_running_average=True), variables, x)
  return tuple(t.shape[1:] for t in taps)
