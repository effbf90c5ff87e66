"""Measures of an ensemble of classifiers (the paper's open question 2; docs/method.md section 10).

Quality of the averaged softmax (accuracy, negative log-likelihood, expected calibration error)
for every ensemble size, diversity in function space (how often members predict different
classes) and in representation space (linear CKA between members' block outputs). Pure NumPy in
float64 (analysis, not training); the diversity of the searched targets themselves is the
paper's N_eff, in :mod:`decouple_jax.analysis.diversity`.
"""

from __future__ import annotations

import itertools

import numpy as np

# Probability below which a true class's is counted as this, so a confident miss costs a finite
# -log(_TINY) = 69 nats rather than inf.
_TINY = 1e-30


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of rows of ``probs`` (N, C) whose argmax is ``labels`` (N,)."""
  return float(np.mean(np.argmax(probs, -1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean -log p(true class) over the rows of ``probs`` (N, C) (class probabilities), nats."""
  p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
  return float(-np.mean(np.log(np.maximum(p, _TINY))))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
  """ECE: sum over confidence bins of (images in the bin / N) x |accuracy - mean confidence|.

  Args:
    probs: (N, C) class probabilities; an image's confidence is its largest.
    labels: (N,) true classes.
    bins: equal-width bins of (0, 1], each holding the confidences in (b/bins, (b+1)/bins].

  Returns:
    The ECE, a fraction in [0, 1]: 0 when, in every bin, the fraction of correct predictions
    equals the mean confidence.
  """
  probs = np.asarray(probs, np.float64)
  confidence = probs.max(-1)
  correct = (np.argmax(probs, -1) == labels).astype(np.float64)
  which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
  gap = np.bincount(which, weights=correct - confidence, minlength=bins)
  return float(np.abs(gap).sum() / len(labels))


def ensemble_curve(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
  """Accuracy, NLL and ECE of the averaged softmax of k members, for k = 1 .. K.

  Args:
    probs: (K, N, C) each member's class probabilities on the same N images.
    labels: (N,) true classes.
    bins: ECE bins (see :func:`expected_calibration_error`).

  Returns:
    {'k': [1 .. K], 'accuracy', 'nll', 'ece': (K,) lists}: entry k - 1 is the mean over every
    subset of k members (so no member order is favoured) of the measure of their averaged
    probabilities; k = 1 is the mean member's, k = K the whole ensemble's.
  """
  probs = np.asarray(probs, np.float64)
  out = {'k': list(range(1, len(probs) + 1)), 'accuracy': [], 'nll': [], 'ece': []}
  for k in out['k']:
    means = [probs[list(s)].mean(0) for s in itertools.combinations(range(len(probs)), k)]
    out['accuracy'].append(float(np.mean([accuracy(p, labels) for p in means])))
    out['nll'].append(float(np.mean([nll(p, labels) for p in means])))
    out['ece'].append(float(np.mean([expected_calibration_error(p, labels, bins)
                                     for p in means])))
  return out


def pairwise_disagreement(predictions: np.ndarray) -> np.ndarray:
  """(K, K) fraction of images on which members i and j predict different classes, from
  ``predictions`` (K, N) class indices; zero on the diagonal."""
  predictions = np.asarray(predictions)
  return np.mean(predictions[:, None, :] != predictions[None, :, :], axis=-1)


def disagreement(predictions: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """(mean, normalised) pairwise disagreement of K >= 2 members.

  Args:
    predictions: (K, N) each member's predicted class on N images.
    labels: (N,) true classes.

  Returns:
    The mean over pairs i < j of :func:`pairwise_disagreement`, and that mean divided by the
    members' mean error (NaN if no member errs): 0 for identical members; two members of
    error e disagree at most on 2e of the images, so the normalised value is at most 2, and
    is near 2 when their errors fall on different images.
  """
  predictions = np.asarray(predictions)
  pairs = np.triu_indices(len(predictions), k=1)
  mean = float(pairwise_disagreement(predictions)[pairs].mean())
  error = float(np.mean(predictions != labels))
  return mean, mean / error if error > 0 else float('nan')


def _centred_gram(x: np.ndarray) -> np.ndarray:
  """(n, n) Gram matrix of the rows of ``x`` (n, ...) flattened, after centring each feature
  over the n rows."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  x = x - x.mean(0)
  return x @ x.T


def _gram_cka(k: np.ndarray, l: np.ndarray) -> float:
  """<K, L> / (|K| |L|) of two centred Gram matrices (n, n); NaN if either is zero."""
  norms = np.linalg.norm(k) * np.linalg.norm(l)
  return float(np.sum(k * l) / norms) if norms > 0 else float('nan')


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Linear centred kernel alignment (Kornblith et al. 2019) of two representations of the
  same n inputs.

  Args:
    x: (n, ...) one representation per input (flattened to (n, D_x)).
    y: (n, ...) another (any D_y).

  Returns:
    <K, L> / (|K| |L|) of the centred Gram matrices K, L (Frobenius), in [0, 1]: 1 for
    representations equal up to an orthogonal transform and an isotropic scale, near 0 for
    unrelated ones; NaN if either is constant over the inputs.
  """
  if len(x) != len(y):
    raise ValueError(f'linear_cka needs the same inputs on both sides, got {len(x)} and '
                     f'{len(y)} rows')
  return _gram_cka(_centred_gram(x), _centred_gram(y))


def mean_pairwise_cka(representations) -> float:
  """Mean :func:`linear_cka` over pairs i < j of K >= 2 members' ``representations``
  (K arrays (n, ...) of the same n inputs; each member's Gram matrix is computed once)."""
  grams = [_centred_gram(r) for r in representations]
  return float(np.mean([_gram_cka(a, b) for a, b in itertools.combinations(grams, 2)]))
