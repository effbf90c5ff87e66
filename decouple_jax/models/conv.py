"""The network's 3x3 convolution (NHWC input, HWIO kernel, SAME padding, stride 1), two ways.

``conv3x3(x, kernel, impl)`` maps x (B, H, W, C_in) and kernel (3, 3, C_in, C_out) to
(B, H, W, C_out). Both implementations compute each output pixel with XLA's conv
(``lax.conv_general_dilated``), so forward values agree to float32 rounding (XLA:CPU may
block a chunk of the batch otherwise than the whole: not always bitwise); they differ in how
they feed the CPU's caches and in the gradient:

* 'xla': XLA's conv and its transpose rules. The right choice on GPU/TPU, whose conv kernels
  are tuned in both directions.
* 'matmul': tuned for XLA:CPU, whose kernels lose speed once a (B, H, W, C) operand outgrows
  the cache. Every wide conv (forward and input gradient) runs over chunks of the batch that
  fit a core's L2 (:func:`chunked_conv`), and a ``jax.custom_vjp`` computes the kernel gradient
  as nine shifted matmuls per chunk (:func:`kernel_grad`): XLA's own kernel gradient, a conv
  contracting over the batch, runs far below the dense matmul rate on CPU, the chunked matmuls
  close to it. A matmul forward (im2col or 9 shifted matmuls) was slower than XLA's, so the
  forward stays XLA's. Reverse mode only (a ``custom_vjp`` has no ``jvp``).
* 'auto': 'matmul' on the CPU backend, 'xla' elsewhere.

Both are plain ``lax``/``jnp`` ops, so either runs on any backend. Chunks are strided over the
batch, so a batch sharded over devices stays on its devices. The measurements behind each
choice here are in BENCHMARKS.md (training throughput).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from decouple_jax.config import CONV_IMPLS

IMPLS = CONV_IMPLS

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def resolve_impl(impl: str) -> str:
  """'xla' or 'matmul' for ``impl``; 'auto' picks by ``jax.default_backend()``."""
  if impl not in IMPLS:
    raise ValueError(f'conv impl must be one of {IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def conv3x3(x: jax.Array, kernel: jax.Array, impl: str = 'xla') -> jax.Array:
  """SAME, stride-1 3x3 conv: x (B, H, W, C_in), kernel (3, 3, C_in, C_out) -> (B, H, W, C_out).

  ``impl`` is one of :data:`IMPLS` (see the module docstring); values and gradients agree to
  float32 rounding.
  """
  if resolve_impl(impl) == 'xla':
    return _xla_conv(x, kernel)
  return _matmul_grad_conv(x, kernel)


def _xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=_DIMS)


def shifted_rows(x: jax.Array) -> list[jax.Array]:
  """The 9 zero-padded shifts of x (B, H, W, C) that a 3x3 tap reads, each as (B*H*W, C).

  Element k = 3 * dy + dx holds x[b, i + dy - 1, j + dx - 1] (0 outside the image) in row
  (b, i, j): the rows kernel[dy, dx] multiplies.
  """
  b, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [xp[:, dy:dy + h, dx:dx + w].reshape(b * h * w, c) for dy in range(3) for dx in range(3)]


# Bytes of one chunk of the batch (B', H, W, C) that the 'matmul' implementation works on: the
# chunk, and for the kernel gradient each of its nine shifted copies, then stay in a core's L2
# (2 MiB on the machine we measured: 1-2 MiB were the fastest for every conv and direction).
CHUNK_BYTES = 2 ** 21
# Channels in and out from which a conv is compute-bound enough for chunking to pay.
WIDE = 128


def chunk_images(x: jax.Array, chunk_bytes: int = CHUNK_BYTES) -> int:
  """Images per chunk of x (B, ...): the largest divisor of B whose slab fits ``chunk_bytes``
  (at least one image)."""
  b = x.shape[0]
  fits = max(1, chunk_bytes // (x[0].size * x.dtype.itemsize))
  return max(d for d in range(1, min(b, fits) + 1) if b % d == 0)


# Chunk j of n images holds images j, j + B/n, j + 2B/n, ...: a batch sharded over devices that
# divide n splits every chunk evenly, so each device reads and writes only its own images
# (contiguous chunks make XLA gather the batch onto every device).
def _strided(a: jax.Array, n: int) -> jax.Array:
  return a.reshape(n, a.shape[0] // n, *a.shape[1:])


def _chunk(a: jax.Array, j: jax.Array) -> jax.Array:
  return jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)


def map_chunks(fn, n: int, *arrays: jax.Array) -> jax.Array:
  """``fn(*arrays)`` for a per-image ``fn``, run on chunks of ``n`` images in a ``lax.scan``
  and written in place into the (B, ...) output."""
  b = arrays[0].shape[0]
  if n == b:
    return fn(*arrays)
  total = _fold_chunks(
      fn, n, arrays, lambda out: jnp.zeros((n, b // n, *out.shape[1:]), out.dtype),
      lambda total, y, j: jax.lax.dynamic_update_index_in_dim(total, y, j, 1))
  return total.reshape(b, *total.shape[2:])


def sum_chunks(fn, n: int, *arrays: jax.Array) -> jax.Array:
  """``fn(*arrays)`` for an ``fn`` that sums over images, as the sum of ``fn`` over chunks of
  ``n`` images in a ``lax.scan``."""
  if n == arrays[0].shape[0]:
    return fn(*arrays)
  return _fold_chunks(fn, n, arrays, lambda out: jnp.zeros(out.shape, out.dtype),
                      lambda total, y, j: total + y)


def _fold_chunks(fn, n, arrays, init, fold):
  # Scans chunk j = 0 .. B/n - 1, folding fn's output on it into the total: fold(total, y, j).
  views = [_strided(a, n) for a in arrays]
  out = jax.eval_shape(fn, *(_chunk(v, 0) for v in views))

  def step(total, j):
    return fold(total, fn(*(_chunk(v, j) for v in views)), j), None
  return jax.lax.scan(step, init(out), jnp.arange(arrays[0].shape[0] // n))[0]


def kernel_grad(x: jax.Array, g: jax.Array, chunk_bytes: int = CHUNK_BYTES) -> jax.Array:
  """dL/dkernel (3, 3, C_in, C_out) from the input x (B, H, W, C_in) and dL/dy (B, H, W, C_out).

  Nine (C_in, rows) @ (rows, C_out) matmuls, one per tap, summed over chunks of x of at most
  ``chunk_bytes`` (see ``CHUNK_BYTES``). Unchunked, the nine shifted copies of x stream through
  memory; in cache-sized chunks they stay in L2. On XLA:CPU one im2col matmul (9 C_in rows) was
  slower, chunked or not, and the transposed-operand form ``s.T @ g`` is kept over ``g.T @ s``,
  which is as fast at 256 channels and slower at 24.
  """
  return sum_chunks(_kernel_grad_rows, chunk_images(x, chunk_bytes), x, g)


def _kernel_grad_rows(x: jax.Array, g: jax.Array) -> jax.Array:
  g_rows = g.reshape(-1, g.shape[-1])
  taps = [s.T @ g_rows for s in shifted_rows(x)]
  return jnp.stack(taps).reshape(3, 3, x.shape[-1], g.shape[-1])


def input_grad(g: jax.Array, kernel: jax.Array, chunk_bytes: int = CHUNK_BYTES) -> jax.Array:
  """dL/dx (B, H, W, C_in) from dL/dy (B, H, W, C_out) and the kernel (3, 3, C_in, C_out),
  over chunks of g of at most ``chunk_bytes``.

  A narrow input (9 C_in <= C_out, e.g. the 24-channel first conv) takes one matmul
  (B*H*W, C_out) @ (C_out, 9 C_in), then the adjoint of the im2col shift (col2im, a sum of 9
  shifted slices that XLA fuses into one loop), whose intermediate is no larger than g; it is
  faster than XLA's transposed conv there, and in chunks its 9 C_in-wide intermediate stays in
  cache. A wide input uses XLA's transposed conv (the forward conv of the flipped, transposed
  kernel) through :func:`chunked_conv`.
  """
  c_out, c_in = kernel.shape[3], kernel.shape[2]
  if 9 * c_in > c_out:
    return chunked_conv(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), chunk_bytes)

  def col2im(g):
    b, h, w, _ = g.shape
    cols = g.reshape(-1, c_out) @ kernel.reshape(9 * c_in, c_out).T
    cols = jnp.pad(cols.reshape(b, h, w, 3, 3, c_in),
                   ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
    # Tap (dy, dx) of output (i, j) read input (i + dy - 1, j + dx - 1): shift it back there.
    return sum(cols[:, 2 - dy:2 - dy + h, 2 - dx:2 - dx + w, dy, dx]
               for dy in range(3) for dx in range(3))
  return map_chunks(col2im, chunk_images(g, chunk_bytes), g)


def chunked_conv(x: jax.Array, kernel: jax.Array, chunk_bytes: int = CHUNK_BYTES) -> jax.Array:
  """XLA's conv of x (B, H, W, C_in); a wide one (C_in and C_out >= 128) runs over chunks of x
  of at most ``chunk_bytes``. Values are the same bit for bit either way (each output pixel's
  sum is the same).

  Chunked, XLA:CPU's wide 15x15 convs and the transposed convs of :func:`input_grad` run
  faster; 7x7 ones neither gain nor lose. Narrow convs are memory-bound, and the chunk's copy
  in and out costs more than the cache saves: the MNIST cpu student step (16 channels) ran
  slower with every conv chunked.
  """
  if min(kernel.shape[2:]) < WIDE:
    return _xla_conv(x, kernel)
  return map_chunks(lambda x: _xla_conv(x, kernel), chunk_images(x, chunk_bytes), x)


@jax.custom_vjp
def _matmul_grad_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return chunked_conv(x, kernel)


def _matmul_grad_conv_fwd(x, kernel):
  # Saves the same residuals as XLA's rule (the input and the kernel), no patch matrix.
  return chunked_conv(x, kernel), (x, kernel)


def _matmul_grad_conv_bwd(residuals, g):
  x, kernel = residuals
  return input_grad(g, kernel).astype(x.dtype), kernel_grad(x, g).astype(kernel.dtype)


_matmul_grad_conv.defvjp(_matmul_grad_conv_fwd, _matmul_grad_conv_bwd)
