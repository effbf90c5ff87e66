"""Diversity of representations: collision entropy of cosine Gram matrices (paper section 3.2).

With K the cosine-similarity Gram matrix of n vectors, the collision entropy is
H = -log(sum_ij K_ij^2 / (sum_i K_ii)^2) and the effective number N_eff = exp(H): 1 for n
copies of one direction, n for n orthogonal directions. Everything here is NumPy in float64
(analysis, not training), and a vector is any array flattened to its elements.
"""

from __future__ import annotations

import numpy as np

# Norm below which a vector counts as zero: its Gram row and column are zero rather than NaN.
_TINY = 1e-30


def _unit_rows(x: np.ndarray) -> np.ndarray:
  """(n, D) float64: the rows of ``x`` (n, ...) flattened and scaled to unit norm."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norms, _TINY)


def cosine_gram(x: np.ndarray) -> np.ndarray:
  """(n, n) cosine similarities of the rows of ``x`` (n, ...); a zero row gives zeros."""
  u = _unit_rows(x)
  return u @ u.T


def collision_entropy(x: np.ndarray) -> float:
  """H = -log(sum_ij K_ij^2 / (sum_i K_ii)^2) of the cosine Gram K of the rows of ``x``.

  Args:
    x: (n, ...) n >= 1 vectors, not all zero.

  Returns:
    H in nats, between 0 (all rows parallel or antiparallel) and log(n) (mutually
    orthogonal rows).
  """
  k = cosine_gram(x)
  return float(-np.log(np.sum(k * k) / np.trace(k) ** 2))


def effective_number(x: np.ndarray) -> float:
  """N_eff = exp(H) of the rows of ``x`` (n, ...): how many distinct directions they span,
  between 1 and n."""
  return float(np.exp(collision_entropy(x)))


def class_collision_entropy(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """Within- and between-class collision entropy of ``features``.

  Args:
    features: (N, ...) one representation per image.
    labels: (N,) integer class of each image.

  Returns:
    (within, between): within is the mean over the classes present of the collision entropy
    of that class's representations; between is the collision entropy of the class means
    (one row per class present). Both in nats.
  """
  x = np.asarray(features, np.float64).reshape(len(features), -1)
  labels = np.asarray(labels)
  classes = np.unique(labels)
  within = float(np.mean([collision_entropy(x[labels == c]) for c in classes]))
  between = collision_entropy(np.stack([x[labels == c].mean(0) for c in classes]))
  return within, between


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(N,) 1 - cos(a_i, b_i) per image of ``a``, ``b`` (N, ...) (same shape): 0 for parallel,
  1 for orthogonal, 2 for opposite representations."""
  if np.shape(a) != np.shape(b):
    raise ValueError(f'cosine_distance needs equal shapes, got {np.shape(a)} and {np.shape(b)}')
  return 1.0 - np.sum(_unit_rows(a) * _unit_rows(b), axis=1)
