"""The network's 3x3 convolution (NHWC input, HWIO kernel, SAME padding, stride 1), two ways.

``conv3x3(x, kernel, impl)`` maps x (B, H, W, C_in) and kernel (3, 3, C_in, C_out) to
(B, H, W, C_out). The implementations compute the forward pass identically (both call
``lax.conv_general_dilated``, so values are bitwise equal); they differ in the gradient:

* 'xla': XLA's conv transpose rules. The right choice on GPU/TPU, whose conv kernels are tuned
  in both directions.
* 'matmul': a ``jax.custom_vjp`` whose backward is matmul-shaped. On XLA:CPU the forward conv
  and the input gradient of a wide conv already run near the dense matmul rate, but XLA's
  kernel gradient (a conv contracting over the batch) runs at 17-24% of it at batch 128;
  nine shifted matmuls per cache-sized chunk of the batch reach 57-62% (see
  :func:`kernel_grad`). Measured fwd + bwd of one conv before chunking, same process,
  interleaved, 2-core CPU under load: 256 -> 256 at 15x15 1.50x faster at batch 128 (1.13x at
  32); 24 -> 256 at 31x31 1.71x (1.66x); 7x7 and 3x3 convs 0.92-1.00x. A matmul forward
  (im2col or 9 shifted matmuls) measured 0.16-0.67x the speed of XLA's forward, so the
  forward stays XLA's. Reverse mode only (a ``custom_vjp`` has no ``jvp``).
* 'auto': 'matmul' on the CPU backend, 'xla' elsewhere.

Both are plain ``lax``/``jnp`` ops, so either runs on any backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ('xla', 'matmul', 'auto')

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

  ``impl`` is one of :data:`IMPLS` (see the module docstring); values are the same for all,
  gradients agree to float32 rounding.
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


# Bytes of one shifted copy of x per kernel-gradient chunk: the chunk's nine copies then stay
# in cache for the matmuls that read them (2048 pixels at 256 float32 channels).
CHUNK_BYTES = 2 ** 21


def kernel_grad(x: jax.Array, g: jax.Array, chunk_bytes: int = CHUNK_BYTES) -> jax.Array:
  """dL/dkernel (3, 3, C_in, C_out) from the input x (B, H, W, C_in) and dL/dy (B, H, W, C_out).

  Nine (C_in, rows) @ (rows, C_out) matmuls, one per tap, summed over chunks of the batch in a
  ``lax.scan``: ``n`` images per chunk, the largest divisor of B whose (n, H, W, C_in) slab
  fits ``chunk_bytes`` (at least one image). Unchunked, the nine shifted copies of x stream
  through memory: one 15x15 256 -> 256 kernel gradient at batch 128 ran at 46-49% of the
  matmul rate, the 31x31 24 -> 256 one at 40%; chunked, 57-62% and 57%. Whole SGD steps, same
  process, interleaved (2026-11-25, 2-core CPU): the paper's CIFAR network 1.10x faster, the
  MNIST cpu networks 1.19-1.20x; 1-4 MiB chunks within noise of each other. On XLA:CPU one
  im2col matmul (9 C_in rows) measured slower (batch 32: 142 vs 125 ms at 256 -> 256, 58 vs
  36 ms at 24 -> 256). The transposed-operand form ``s.T @ g`` is kept over ``g.T @ s``: equal
  at 256 channels, 4x faster at 24.
  """
  b, h, w, c_in = x.shape
  image_bytes = h * w * c_in * x.dtype.itemsize
  n = max(d for d in range(1, b + 1) if b % d == 0 and (d * image_bytes <= chunk_bytes or d == 1))
  if n == b:
    return _kernel_grad_rows(x, g)
  # Chunk j holds images j, j + B/n, j + 2B/n, ...: a batch sharded over devices that divide n
  # splits every chunk evenly, so each device reads only its own images (contiguous chunks
  # would make XLA gather the batch onto every device).
  strided = lambda a: a.reshape(n, b // n, *a.shape[1:])
  xs, gs = strided(x), strided(g)

  def add_chunk(total, j):
    chunk = lambda a: jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)
    return total + _kernel_grad_rows(chunk(xs), chunk(gs)), None
  zero = jnp.zeros((3, 3, c_in, g.shape[-1]), jnp.result_type(x, g))
  return jax.lax.scan(add_chunk, zero, jnp.arange(b // n))[0]


def _kernel_grad_rows(x: jax.Array, g: jax.Array) -> jax.Array:
  g_rows = g.reshape(-1, g.shape[-1])
  taps = [s.T @ g_rows for s in shifted_rows(x)]
  return jnp.stack(taps).reshape(3, 3, x.shape[-1], g.shape[-1])


def input_grad(g: jax.Array, kernel: jax.Array) -> jax.Array:
  """dL/dx (B, H, W, C_in) from dL/dy (B, H, W, C_out) and the kernel (3, 3, C_in, C_out).

  A narrow input (9 C_in <= C_out, e.g. the 24-channel first conv) takes one matmul
  (B*H*W, C_out) @ (C_out, 9 C_in), then the adjoint of the im2col shift (col2im, a sum of 9
  shifted slices that XLA fuses into one loop), whose intermediate is no larger than g: at
  24 -> 256, 31x31 it took 38-41 ms against 48-64 ms for XLA's transposed conv at batch 32,
  and 241 against 248 ms at batch 128. A wide input uses XLA's transposed conv (the forward
  conv of the flipped, transposed kernel), already near the matmul rate.
  """
  b, h, w, c_out = g.shape
  c_in = kernel.shape[2]
  if 9 * c_in > c_out:
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    return _xla_conv(g, flipped)
  cols = g.reshape(-1, c_out) @ kernel.reshape(9 * c_in, c_out).T
  cols = jnp.pad(cols.reshape(b, h, w, 3, 3, c_in),
                 ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
  # Tap (dy, dx) of output (i, j) read input (i + dy - 1, j + dx - 1): shift it back there.
  return sum(cols[:, 2 - dy:2 - dy + h, 2 - dx:2 - dx + w, dy, dx]
             for dy in range(3) for dx in range(3))


@jax.custom_vjp
def _matmul_grad_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _xla_conv(x, kernel)


def _matmul_grad_conv_fwd(x, kernel):
  # Saves the same residuals as XLA's rule (the input and the kernel), no patch matrix.
  return _xla_conv(x, kernel), (x, kernel)


def _matmul_grad_conv_bwd(residuals, g):
  x, kernel = residuals
  return input_grad(g, kernel).astype(x.dtype), kernel_grad(x, g).astype(kernel.dtype)


_matmul_grad_conv.defvjp(_matmul_grad_conv_fwd, _matmul_grad_conv_bwd)
