"""What limits the student's accuracy: fitting the targets, the targets' labels, or the head.

Three questions, one number each (not from the paper; docs/method.md section 8):

- Does the body fit its targets? R^2 of each block's tap against the searched targets, on
  training images and, when the hold-out split was searched too, on images the student never
  trained on.
- Do the targets carry the label? How often the cached logits' argmax (p_hat's mode) is the
  true label: the KL head can do no better than what it is taught.
- Does the body carry the label to unseen images? A linear probe trained with TRUE labels on
  the frozen block-2 output (the head's input) next to the KL-trained head's test accuracy: a
  probe far above the head means the head, not the body, is what limits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax.models import airbench
from decouple_jax.search.target_store import TargetStore

# Sufficient statistics of R^2 over images: (SSE, per-element sum of the targets (D,), their
# per-element sum of squares (D,), number of images). They add up over batches.
R2Stats = tuple[float, np.ndarray, np.ndarray, int]


@jax.jit
def _batch_r2_stats(pred: jax.Array, target: jax.Array):
  p = pred.reshape(pred.shape[0], -1).astype(jnp.float32)
  t = target.reshape(target.shape[0], -1).astype(jnp.float32)
  return jnp.sum(jnp.square(p - t)), t.sum(0), jnp.square(t).sum(0)


def r2_stats(pred, target) -> R2Stats:
  """The :data:`R2Stats` of ``pred`` against ``target``, both (N, ...), as float64."""
  sse, sum_t, sum_t2 = _batch_r2_stats(jnp.asarray(pred), jnp.asarray(target))
  return (float(sse), np.asarray(sum_t, np.float64), np.asarray(sum_t2, np.float64),
          len(target))


def r2_from_stats(stats: R2Stats) -> float:
  """1 - SSE / SST, with SST the squared deviation of each element from its mean over images."""
  sse, sum_t, sum_t2, n = stats
  sst = float(np.sum(sum_t2 - np.square(sum_t) / n))
  # Targets identical over all images leave nothing to explain.
  return 1.0 - sse / sst if sst > 0 else float('nan')


def r_squared(pred, target) -> float:
  """R^2 of ``pred`` (N, ...) against ``target`` (N, ...): 1 for a perfect prediction, 0 for
  predicting every element's mean over the N images, negative for worse."""
  return r2_from_stats(r2_stats(pred, target))


def add_r2_stats(a: R2Stats, b: R2Stats) -> R2Stats:
  """The statistics of two disjoint sets of images together."""
  return tuple(x + y for x, y in zip(a, b))


def phat_accuracy(store: TargetStore, labels: np.ndarray) -> float:
  """Fraction of the store's images whose cached logits' argmax is ``labels`` (N,)."""
  # The logits alone: the block targets are far larger and not needed here.
  (logits,) = store.read(layers=[-1])
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


@functools.partial(jax.jit, static_argnames=('num_classes', 'epochs'))
def _probe(x_train, y_train, x_test, y_test, num_classes: int, epochs: int, lr: float):
  mean = x_train.mean(0)
  std = x_train.std(0)
  # A feature constant over the training images carries nothing; keep it at zero.
  std = jnp.where(std > 0, std, 1.0)
  x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
  params = {'w': jnp.zeros((x_train.shape[1], num_classes)), 'b': jnp.zeros(num_classes)}
  tx = optax.adam(lr)

  def loss(p):
    logits = x_train @ p['w'] + p['b']
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(p), opt_state)
    return (optax.apply_updates(p, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=epochs)
  return jnp.mean(jnp.argmax(x_test @ params['w'] + params['b'], -1) == y_test)


def linear_probe(features_train: np.ndarray, labels: np.ndarray, features_test: np.ndarray,
                 labels_test: np.ndarray, num_classes: int, *, epochs: int = 300,
                 lr: float = 0.01) -> float:
  """Test accuracy of softmax regression trained on frozen features with true labels.

  Features are standardised with the training features' per-dimension mean and std; the
  regression is trained full-batch with Adam (one step per epoch) from zero weights.

  Args:
    features_train: (N, D) float features of the training images.
    labels: (N,) int true labels.
    features_test: (M, D) features of the test images.
    labels_test: (M,) int.
    num_classes: K.
    epochs: full-batch steps.
    lr: Adam learning rate.

  Returns:
    Fraction of the M test images classified correctly.
  """
  return float(_probe(jnp.asarray(features_train, jnp.float32), jnp.asarray(labels, jnp.int32),
                      jnp.asarray(features_test, jnp.float32),
                      jnp.asarray(labels_test, jnp.int32), num_classes, epochs, lr))


def make_features_fn(model: airbench.AirbenchNet, batch_stats_mode: bool, mean, std):
  """Jitted ``(variables, uint8 images (B, H, W, C)) -> (taps, head input (B, D))``.

  The head input is the last block's output (post-GELU, whatever ``model.tap`` is) flattened;
  it is what the 'flatten' head reads. BatchNorm as in evaluation: batch statistics of the B
  images if ``batch_stats_mode``, else the running averages.
  """
  last = f'block{len(model.widths) - 1}'

  def is_last_block(module, method_name):
    del method_name
    return isinstance(module, airbench.Block) and module.name == last

  def features(variables, images):
    x = datalib.normalize(images, mean, std)
    taps, state = model.apply(variables, x, use_running_average=not batch_stats_mode,
                              capture_intermediates=is_last_block,
                              mutable=['intermediates', 'batch_stats'])
    ((out, _),) = state['intermediates'][last]['__call__']
    return taps, out.reshape(out.shape[0], -1)
  return jax.jit(features)


def _pass(features_fn, variables, images: np.ndarray, labels: np.ndarray, batch_size: int,
          store: TargetStore | None) -> tuple[list[float] | None, np.ndarray, float]:
  """One pass over ``images`` (positions 0..N-1 of ``store``, if given).

  Returns:
    R^2 per block against the stored targets (None without a store), the head inputs
    (N, D) and the head's accuracy.
  """
  stats, features, correct = None, [], 0
  for start in range(0, len(images), batch_size):
    stop = min(start + batch_size, len(images))
    taps, feats = features_fn(variables, images[start:stop])
    features.append(np.asarray(feats))
    correct += int(np.sum(np.argmax(np.asarray(taps[-1]), -1) == labels[start:stop]))
    if store is not None:
      blocks = range(len(taps) - 1)
      targets = store.read(np.arange(start, stop), layers=blocks)
      batch = [r2_stats(taps[l], targets[l]) for l in blocks]
      stats = batch if stats is None else [add_r2_stats(a, b) for a, b in zip(stats, batch)]
  r2 = None if stats is None else [r2_from_stats(s) for s in stats]
  return r2, np.concatenate(features), correct / len(images)


def random_feature_floor(model: airbench.AirbenchNet, variables, ds: datalib.Dataset, *,
                         batch_size: int, max_images: int = 4000, probe_epochs: int = 300,
                         probe_lr: float = 0.01) -> float:
  """The accuracy a student's body gives had it learned nothing: a linear probe trained with
  TRUE labels on the head input (block-2 output) of an untrained network, e.g. the search
  network (inference-form BatchNorm, as the search sees it).

  Same images and probe as :func:`student_diagnostics`' linear probe (the first
  ``max_images`` training and test images), so the two compare exactly.

  Returns:
    The fraction of the test images the probe classifies correctly.
  """
  fn = make_features_fn(model, False, ds.mean, ds.std)
  n_train, n_test = (min(max_images, len(ds.train_images)), min(max_images, len(ds.test_images)))
  _, f_train, _ = _pass(fn, variables, ds.train_images[:n_train], ds.train_labels[:n_train],
                        batch_size, None)
  _, f_test, _ = _pass(fn, variables, ds.test_images[:n_test], ds.test_labels[:n_test],
                       batch_size, None)
  return linear_probe(f_train, ds.train_labels[:n_train], f_test, ds.test_labels[:n_test],
                      ds.num_classes, epochs=probe_epochs, lr=probe_lr)


def student_diagnostics(model: airbench.AirbenchNet, variables, ds: datalib.Dataset,
                        store: TargetStore, holdout_store: TargetStore | None,
                        cfg: cfglib.StudentConfig, *, max_images: int = 4000,
                        probe_epochs: int = 300, probe_lr: float = 0.01) -> dict:
  """The diagnostics of a trained student (see the module docstring).

  Every forward pass uses the evaluation's BatchNorm mode and batch size
  (``cfg.train.bn_batch_stats``, ``cfg.train.eval_batch``). To stay cheap, R^2 and the probe use
  the first ``max_images`` images of each split; ``head_test_accuracy`` is measured on the same
  test images as the probe, so the two compare exactly (it can differ slightly from the run's
  ``test_accuracy`` when the test split is larger).

  Args:
    model: the student network (its taps are what the loss compared with the targets).
    variables: the selected student's {'params', 'batch_stats'}.
    ds: the data set; ``store`` holds targets of ``ds.train_*`` position by position.
    store: the training split's target store.
    holdout_store: the hold-out split's target store, or None.
    cfg: the student config.
    max_images: images per split for R^2 and the probe.
    probe_epochs, probe_lr: see :func:`linear_probe`.

  Returns:
    ``r2_train`` and ``r2_holdout`` (R^2 per block, the latter None without a hold-out
    store), ``phat_accuracy`` (over the whole training store), ``linear_probe_test_accuracy``,
    ``head_test_accuracy`` and the number of ``images`` each split contributed.
  """
  fn = make_features_fn(model, cfg.train.bn_batch_stats, ds.mean, ds.std)
  batch = cfg.train.eval_batch
  n_train, n_test = (min(max_images, len(ds.train_images)), min(max_images, len(ds.test_images)))
  r2_train, f_train, _ = _pass(fn, variables, ds.train_images[:n_train],
                               ds.train_labels[:n_train], batch, store)
  _, f_test, head_accuracy = _pass(fn, variables, ds.test_images[:n_test],
                                   ds.test_labels[:n_test], batch, None)
  r2_holdout, n_holdout = None, 0
  if holdout_store is not None:
    n_holdout = min(max_images, len(ds.holdout_images))
    r2_holdout, _, _ = _pass(fn, variables, ds.holdout_images[:n_holdout],
                             ds.holdout_labels[:n_holdout], batch, holdout_store)
  probe = linear_probe(f_train, ds.train_labels[:n_train], f_test, ds.test_labels[:n_test],
                       ds.num_classes, epochs=probe_epochs, lr=probe_lr)
  return {
      'r2_train': r2_train,
      'r2_holdout': r2_holdout,
      'phat_accuracy': phat_accuracy(store, ds.train_labels),
      'linear_probe_test_accuracy': probe,
      'head_test_accuracy': head_accuracy,
      'images': {'train': n_train, 'holdout': n_holdout, 'test': n_test},
  }


def _z(x: np.ndarray) -> np.ndarray:
  """(N, ...) -> (N, D): each sample's values flattened and z-normalised."""
  x = x.reshape(len(x), -1).astype(np.float64)
  x = x - x.mean(1, keepdims=True)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def class_fraction(x: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """The share of ``x``'s variance over images that its class means explain.

  Args:
    x: (N, ...) one value array per image.
    labels: (N,) their classes.
    num_classes: K.

  Returns:
    sum_k n_k |mean_k - mean|^2 / sum_i |x_i - mean|^2, in [0, 1]: 1 when every image's
    values are its class's mean, about (K - 1) / N for values unrelated to the class.
  """
  x = x.reshape(len(x), -1).astype(np.float64)
  x = x - x.mean(0)
  total = float(np.sum(np.square(x)))
  between = sum(float(np.sum(labels == k)) * float(np.sum(np.square(x[labels == k].mean(0))))
                for k in range(num_classes) if np.any(labels == k))
  return between / total if total > 0 else float('nan')


def target_diagnostics(model: airbench.AirbenchNet, variables, ds: datalib.Dataset,
                       store: TargetStore, holdout_store: TargetStore, *,
                       max_images: int = 2000, batch_size: int = 500,
                       probe_epochs: int = 300, probe_lr: float = 0.01) -> dict:
  """What the search put into its targets, before any student (not from the paper).

  Two questions, per block: how far is a target from the image's own activation in the
  network it was searched in (``model``, inference-form BatchNorm, as the search sees it),
  and does a target carry the label in a form that holds for other images?

  Args:
    model, variables: the network the stores were searched in.
    ds: the data set; ``store`` holds ``ds.train_*`` position by position and
      ``holdout_store`` ``ds.holdout_*``.
    store, holdout_store: target stores of the training and hold-out splits.
    max_images: images per split used (the first ones).
    batch_size: images per forward pass.
    probe_epochs, probe_lr: see :func:`linear_probe`.

  Returns:
    ``cos_to_activation``: per block, the mean over training images of the cosine between
      the per-sample z-normalised target and the image's own activation (1: the search kept
      the image's activation; 0: unrelated);
    ``target_probe``: per block, the hold-out accuracy of a linear probe trained with true
      labels on training images' targets and tested on hold-out images' targets;
    ``activation_probe``: the same probe on the images' own activations (what the targets'
      probe is to be compared with);
    ``class_fraction``: per block, :func:`class_fraction` of the training images' targets,
      of their own activations and of what the search added (target minus activation): a
      student regressing onto the targets learns the label only through the first, and what
      is left of the added part is specific to each image.
  """
  n_train, n_hold = min(max_images, len(ds.train_images)), min(max_images,
                                                               len(ds.holdout_images))
  fn = make_features_fn(model, False, ds.mean, ds.std)  # inference BatchNorm, as searched
  blocks = range(len(store.spec.shapes) - 1)

  def activations(images):
    parts = [fn(variables, images[s:s + batch_size])[0]
             for s in range(0, len(images), batch_size)]
    return [np.concatenate([np.asarray(p[l]) for p in parts]) for l in blocks]

  act_train, act_hold = activations(ds.train_images[:n_train]), activations(
      ds.holdout_images[:n_hold])
  t_train = store.read(np.arange(n_train), layers=blocks)
  t_hold = holdout_store.read(np.arange(n_hold), layers=blocks)
  y_train, y_hold = ds.train_labels[:n_train], ds.holdout_labels[:n_hold]
  probe = lambda a, b: linear_probe(a.reshape(len(a), -1), y_train, b.reshape(len(b), -1),
                                    y_hold, ds.num_classes, epochs=probe_epochs, lr=probe_lr)
  return {
      'cos_to_activation': [float(np.mean(np.sum(_z(t_train[l]) * _z(act_train[l]), 1)))
                            for l in blocks],
      'target_probe': [probe(t_train[l], t_hold[l]) for l in blocks],
      'activation_probe': [probe(act_train[l], act_hold[l]) for l in blocks],
      'class_fraction': {
          name: [class_fraction(f(l), y_train, ds.num_classes) for l in blocks]
          for name, f in (('target', lambda l: t_train[l]), ('activation', lambda l: act_train[l]),
                          ('added', lambda l: t_train[l] - act_train[l]))},
      'images': [n_train, n_hold],
  }
