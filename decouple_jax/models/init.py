"""The network's initialisers: PyTorch-default Kaiming-uniform, Dirac, whitening (paper section
3.1 and appendix A.1; docs/method.md section 2)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's default for Conv/Linear: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), +).
kaiming_uniform = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def dirac_kaiming_uniform(key, shape, dtype=jnp.float32):
  """HWIO conv kernel: Kaiming-uniform, then the first C_in filters become identities.

  airbench's ``dirac_(w[:C_in])``: output channel i < min(C_in, C_out) copies input channel i
  at the kernel centre. A square conv therefore starts as an exact identity.
  """
  kh, kw, c_in, c_out = shape
  w = kaiming_uniform(key, shape, dtype)
  n = min(c_in, c_out)
  idx = jnp.arange(n)
  w = w.at[:, :, :, :n].set(0.0)
  return w.at[kh // 2, kw // 2, idx, idx].set(1.0)


def is_identity_kernel(kernel) -> bool:
  """True if an HWIO kernel is exactly the identity (square, Dirac, every other entry 0)."""
  kernel = np.asarray(kernel)
  kh, kw, c_in, c_out = kernel.shape
  if c_in != c_out:
    return False
  eye = np.zeros_like(kernel)
  eye[kh // 2, kw // 2, np.arange(c_in), np.arange(c_in)] = 1.0
  return bool(np.array_equal(kernel, eye))


def patches_2x2(images: np.ndarray) -> np.ndarray:
  """All 2x2 patches (stride 1) of (N, H, W, C) images, as (N*(H-1)*(W-1), 2*2*C) rows.

  The row layout is (dy, dx, c), matching the HWIO kernel layout of a 2x2 conv.
  """
  x = np.asarray(images, np.float64)
  parts = [x[:, dy:x.shape[1] - 1 + dy, dx:x.shape[2] - 1 + dx, :]
           for dy in (0, 1) for dx in (0, 1)]
  return np.stack(parts, axis=3).reshape(-1, 4 * x.shape[3])


def whitening_kernel(images: np.ndarray, eps: float = 5e-4) -> np.ndarray:
  """The airbench whitening filters from normalised training images.

  Args:
    images: (N, H, W, C) float, already normalised (paper: the first 5000 training images).
    eps: added to the eigenvalues.

  Returns:
    (2, 2, C, 8C) float32 HWIO kernel: the 4C eigenvectors of the (uncentred) 2x2-patch
    covariance, largest eigenvalue first, each scaled by 1/sqrt(eigenvalue + eps), followed by
    their negatives.
  """
  p = patches_2x2(images)
  cov = p.T @ p / p.shape[0]
  evals, evecs = np.linalg.eigh(cov)
  evals, evecs = evals[::-1], evecs[:, ::-1]
  filters = evecs / np.sqrt(evals + eps)  # (4C, 4C): column j is filter j
  filters = np.concatenate([filters, -filters], axis=1)
  c = images.shape[-1]
  return filters.reshape(2, 2, c, 8 * c).astype(np.float32)


def init_whitening(params, images: np.ndarray, eps: float = 5e-4):
  """Returns ``params`` with the stem's kernel set by :func:`whitening_kernel`."""
  kernel = whitening_kernel(images, eps)
  whiten = dict(params['whiten'], kernel=jnp.asarray(kernel))
  return {**params, 'whiten': whiten}


def init_model(model, key: jax.Array, whiten_images: np.ndarray, eps: float = 5e-4):
  """Initialises ``model`` and its whitening stem from normalised images (N, H, W, C).

  Returns the variables dict ({'params', 'batch_stats'}).
  """
  # Jitted: Flax's eager init dispatches op by op (~10x slower, worse with many devices).
  init = jax.jit(model.init, static_argnames='use_running_average')
  variables = init(key, jnp.asarray(whiten_images[:2], jnp.float32), use_running_average=True)
  variables = dict(variables)
  variables['params'] = init_whitening(variables['params'], whiten_images, eps)
  return variables
