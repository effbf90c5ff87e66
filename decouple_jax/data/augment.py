"""Device-side augmentation of NHWC image batches: pure, jit-able functions of explicit keys.

The random crop follows airbench (``CifarLoader`` and ``batch_crop`` in airbench94.py): pad each
side by ``pad`` pixels with *reflect* padding (the edge pixel is not repeated, as in
``torch.nn.functional.pad(..., 'reflect')`` and ``numpy.pad(..., mode='reflect')``), then cut a
window of the original size at a uniformly random offset, independently per image. airbench pads
after normalising; reflection copies pixels, so padding the uint8 images gives the same result.
Unlike airbench, which pre-flips at random once and then flips the whole set every other epoch,
:func:`random_flip` flips each image independently with probability 1/2; a training loop wanting
airbench's alternating scheme can build it from :func:`flip_with_mask`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from decouple_jax.data.errors import DataError


def normalize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """``(x / 255 - mean) / std``.

  Args:
    x: (B, H, W, C) uint8 (or any real dtype holding 0..255 pixel values).
    mean: (C,) per-channel mean of pixels / 255 (``Dataset.mean``).
    std: (C,) per-channel std of pixels / 255 (``Dataset.std``).

  Returns:
    (B, H, W, C) float32.
  """
  x = jnp.asarray(x).astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def flip_with_mask(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mirrors left-right the images of ``x`` (B, H, W, C) where ``mask`` (B,) bool is True."""
  return jnp.where(mask[:, None, None, None], x[:, :, ::-1, :], x)


def random_flips(key: jax.Array, batch: int) -> jax.Array:
  """The flip mask :func:`random_flip` draws from ``key``: (batch,) bool, each True with
  probability 1/2."""
  return jax.random.bernoulli(key, 0.5, (batch,))


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Mirrors each image of ``x`` (B, H, W, C) left-right independently with probability 1/2.

  Keeps shape and dtype; equals ``flip_with_mask(x, random_flips(key, B))``.
  """
  return flip_with_mask(x, random_flips(key, x.shape[0]))


def _check_pad(pad: int) -> None:
  if not isinstance(pad, int) or pad < 0:
    raise DataError(f'crop padding {pad!r}: need a non-negative Python int (a static value '
                    'under jit), e.g. TrainConfig.crop_pad=2.')


def random_offsets(key: jax.Array, batch: int, pad: int) -> jax.Array:
  """The crop offsets :func:`random_crop` draws from ``key``.

  Returns:
    (batch, 2) int32 (row, column) offsets, each uniform in ``0..2 * pad``; ``pad`` means no
    shift.
  """
  _check_pad(pad)
  return jax.random.randint(key, (batch, 2), 0, 2 * pad + 1, dtype=jnp.int32)


def crop_with_offsets(x: jax.Array, offsets: jax.Array, pad: int) -> jax.Array:
  """Reflect-pads ``x`` by ``pad`` pixels per side, then crops each image at its offset.

  Args:
    x: (B, H, W, C) images, any dtype.
    offsets: (B, 2) int (row, column) of each crop's top-left corner in the padded image, in
      ``0..2 * pad``; larger values are clamped to the border by ``lax.dynamic_slice``.
    pad: padding per side, a non-negative Python int.

  Returns:
    (B, H, W, C), dtype of ``x``: image b is ``padded[b, r:r + H, c:c + W]`` for
    ``(r, c) = offsets[b]``.
  """
  _check_pad(pad)
  if pad == 0:
    return x
  _, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, jnp.asarray(offsets, jnp.int32))


def random_crop(key: jax.Array, x: jax.Array, pad: int) -> jax.Array:
  """airbench's random translation: a per-image random crop of the reflect-padded images.

  Args:
    key: PRNG key.
    x: (B, H, W, C) images, any dtype.
    pad: padding per side (paper: 2); 0 returns ``x`` unchanged.

  Returns:
    (B, H, W, C), dtype of ``x``; equals
    ``crop_with_offsets(x, random_offsets(key, B, pad), pad)``.
  """
  return crop_with_offsets(x, random_offsets(key, x.shape[0], pad), pad)


class Views(NamedTuple):
  """How :func:`augment` made each view of a batch, so that per-image side data with a spatial
  layout (searched targets) can follow its image (:func:`follow_views`).

  shifts: (B, 2) int32 (row, column) crop displacement in pixels: before any flip, view pixel
    (i, j) is image pixel (i + row, j + column), reflected at the border; 0 is no shift.
  flipped: (B,) bool, the views mirrored left-right after the crop.
  """
  shifts: jax.Array
  flipped: jax.Array


def augment(key: jax.Array, x: jax.Array, *, pad: int, flip: bool) -> tuple[jax.Array, Views]:
  """Random crop (if ``pad > 0``), then random flip (if ``flip``), of a (B, H, W, C) batch.

  Works on uint8 and float images alike and keeps shape and dtype. ``pad`` and ``flip`` must be
  static under jit.

  Returns:
    (views (B, H, W, C), how each was made (:class:`Views`)).
  """
  crop_key, flip_key = jax.random.split(key)
  offsets = random_offsets(crop_key, x.shape[0], pad)
  x = crop_with_offsets(x, offsets, pad)
  flipped = jnp.zeros(x.shape[0], bool)
  if flip:
    flipped = random_flips(flip_key, x.shape[0])
    x = flip_with_mask(x, flipped)
  return x, Views(offsets - pad, flipped)


def _reflect(index: jax.Array, size: int) -> jax.Array:
  """Indices into 0..size-1, reflected at both ends without repeating the edge (as numpy's
  'reflect' padding); exact for indices in -(size-1)..2*(size-1)."""
  index = jnp.abs(index)
  return (size - 1) - jnp.abs((size - 1) - index)


def follow_views(maps: jax.Array, views: Views, image_size: tuple[int, int]) -> jax.Array:
  """Moves per-image maps the way :func:`augment` moved their images: each map is shifted by
  its view's crop, scaled to the map's resolution and rounded to whole cells, reflected at the
  border like the crop's padding, then mirrored if its view was.

  The rounding makes this approximate: a 32-pixel image's 2-pixel shift moves a 15-cell map by
  one cell, a 1-pixel shift not at all.

  Args:
    maps: (B, h, w, C) per-image maps over the image (e.g. a block's searched targets).
    views: how the batch's views were made.
    image_size: (H, W) of the images the views were cut from.

  Returns:
    (B, h, w, C), dtype of ``maps``.
  """
  h, w = maps.shape[1:3]
  scale = jnp.asarray([h / image_size[0], w / image_size[1]], jnp.float32)
  cells = jnp.round(views.shifts * scale).astype(jnp.int32)
  rows = _reflect(jnp.arange(h)[None] + cells[:, :1], h)
  cols = _reflect(jnp.arange(w)[None] + cells[:, 1:], w)
  moved = jax.vmap(lambda m, r, c: m[r][:, c])(maps, rows, cols)
  return flip_with_mask(moved, views.flipped)
