"""Generation step, layer scan and the whole search: NumPy reference with the same draws, jit,
scan vs loop, identity-conv skip, sharding, batch-size invariance, recompilation, progress, and
targets that are the mean of several searches (search.average_of)."""

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decouple_jax import config
from decouple_jax import models
from decouple_jax import search
from decouple_jax.search import evolve
from decouple_jax.search import operators as ops

from numerics import assert_close
from test_search_operators import np_blur, np_children, np_fitness, np_normalise

MNIST = pathlib.Path(__file__).resolve().parents[1] / 'data' / 'mnist'
CFG = config.SearchConfig(
    model=config.ModelConfig(widths=(8, 8, 8)), population=12, top_k=3, n_explore=4,
    n_refine=5, layers={'block0': config.LayerSchedule(6, 0.3, 5.0, 2),
                        'block1': config.LayerSchedule(3, 0.2, 3.0, 1),
                        'block2': config.LayerSchedule(3, 0.1, 3.0, 1),
                        'logits': config.LayerSchedule(4, 0.1, 1.0, 0)})
LAYER0, LOGITS = CFG.layers['block0'], CFG.layers['logits']


# --- one generation against NumPy ------------------------------------------------------------

def np_generation(h, loss, draws, cfg, schedule, np_score):
  """One generation (docs/method.md section 3, steps 2.1-2.4), written out plainly."""
  top = np.argsort(loss, kind='stable')[:cfg.top_k]
  parents = h[top]
  noise = draws.noise
  if h.ndim == 2:
    finish = lambda x: x - x.mean(axis=1, keepdims=True)
  elif cfg.blur_target == 'noise':
    noise = np_blur(noise, schedule.blur, cfg.blur_padding)
    finish = lambda x: np_normalise(x, cfg.norm_eps)
  else:
    finish = lambda x: np_normalise(np_blur(x, schedule.blur, cfg.blur_padding), cfg.norm_eps)
  e = cfg.n_explore
  explorers = np_children(parents, draws.parents[:e], noise[:e],
                          schedule.alpha * schedule.boost, finish)
  pool = np.concatenate([parents, explorers]) if cfg.refine_pool == 'parents_and_explorers' \
      else parents
  refiners = np_children(pool, draws.parents[e:], noise[e:], schedule.alpha, finish)
  new = np.concatenate([parents, explorers, refiners])
  if cfg.bn_mode == 'batch':  # a candidate's loss depends on its population: score them all
    return new, np_score(new)
  return new, np.concatenate([loss[top], np_score(new[cfg.top_k:])])


@pytest.mark.parametrize('shape, refine_pool, blur_target', [
    ((5, 4, 3), 'parents_and_explorers', 'candidate'), ((5, 4, 3), 'parents', 'candidate'),
    ((5, 4, 3), 'parents_and_explorers', 'noise'), ((10,), 'parents_and_explorers', 'noise')])
def test_generation_equals_numpy_with_same_draws(shape, refine_pool, blur_target):
  cfg = dataclasses.replace(CFG, refine_pool=refine_pool, blur_padding='valid',
                            blur_target=blur_target)
  schedule = LAYER0 if len(shape) == 3 else LOGITS
  rng = np.random.default_rng(1)
  head = rng.normal(size=(int(np.prod(shape)), 10)).astype(np.float32) * 0.1
  h = rng.normal(size=(cfg.population, *shape)).astype(np.float32)
  loss = rng.permutation(cfg.population).astype(np.float32)
  draws = search.draw_generation(jax.random.key(2), cfg, shape)
  score = lambda c: ops.fitness(c.reshape(len(c), -1) @ head, 4)
  step = jax.jit(functools.partial(evolve.generation_step_with_draws, alpha=schedule.alpha,
                                   schedule=schedule, cfg=cfg, score=score))
  got = step(evolve.Population(jnp.asarray(h), jnp.asarray(loss)), draws)
  np_score = lambda c: np_fitness(c.reshape(len(c), -1) @ head.astype(np.float64), 4)
  draws = jax.tree.map(np.asarray, draws)
  expected_h, expected_loss = np_generation(h.astype(np.float64), loss, draws, cfg, schedule,
                                            np_score)
  np.testing.assert_allclose(got.h, expected_h, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got.loss, expected_loss, rtol=1e-4)
  np.testing.assert_array_equal(got.loss[:cfg.top_k], [0, 1, 2])  # elitism: parents kept


def test_batch_bn_mode_scores_the_whole_population():
  seen = []
  score = lambda c: seen.append(c.shape[0]) or jnp.zeros(c.shape[0])
  pop = evolve.Population(jnp.zeros((12, 10)), jnp.arange(12.0))
  for mode in ('inference', 'batch'):
    cfg = dataclasses.replace(CFG, bn_mode=mode)
    jax.eval_shape(lambda p: evolve.generation_step(p, jax.random.key(0), alpha=LOGITS.alpha,
                                                    schedule=LOGITS, cfg=cfg, score=score), pop)
  assert seen == [CFG.n_explore + CFG.n_refine, CFG.population]


# --- a real network -------------------------------------------------------------------------

@pytest.fixture(scope='module')
def problem():
  """4 real MNIST training images (random ones if MNIST is absent) and the search net."""
  if (MNIST / 'train-images-idx3-ubyte.gz').exists():
    from decouple_jax import data
    ds = data.load_dataset(config.DataConfig(name='mnist', dir=str(MNIST), train_limit=4,
                                             test_limit=1))
    images = np.asarray(data.normalize(ds.train_images, ds.mean, ds.std))
    labels, indices = ds.train_labels, ds.train_index.astype(np.int32)
  else:
    images = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    labels, indices = np.array([0, 4, 1, 9], np.int32), np.arange(1, 5, dtype=np.int32)
  model = models.build(CFG.model, num_classes=10, in_channels=1)
  # Jitted init: eager init compiles every random op separately (seconds on 2 cores).
  variables = jax.jit(model.init)(jax.random.key(CFG.seed), jnp.asarray(images[:2]))
  variables = {**variables, 'params': models.init_whitening(variables['params'], images)}
  return model, variables, images, labels, indices


def _layer0(model, variables, images, labels, skip):
  """Layer 0 of image 0 from its initial population: (initial population, score, key)."""
  taps = model.apply(variables, jnp.asarray(images[:1].repeat(CFG.population, 0)),
                     use_running_average=True)
  pop = evolve.Population(taps[0], ops.fitness(taps[-1], labels[0]))
  forward = evolve.network_forward(model.clone(identity_convs=skip), variables, 'inference')
  score = lambda h: ops.fitness(forward(0, h)[-1], labels[0])
  return pop, functools.partial(evolve.generation_step, alpha=LAYER0.alpha, schedule=LAYER0,
                                cfg=CFG, score=score)


def test_scan_equals_python_loop(problem):
  model, variables, images, labels, _ = problem
  pop, step = _layer0(model, variables, images, labels, models.identity_convs(variables))
  key = jax.random.key(7)
  scanned, curve = jax.jit(lambda p: evolve.search_layer(
      p, key, schedule=LAYER0, cfg=CFG, score=step.keywords['score']))(pop)
  looped, jitted_step = pop, jax.jit(step)
  # A scan body and a jitted step are two programs: every child's forward (6 convs summing
  # 9 x 8 terms each) may round otherwise.
  terms = 6 * 9 * 8
  for g in range(LAYER0.generations):
    looped = jitted_step(looped, jax.random.fold_in(key, g))
    assert_close(curve[g], looped.loss.min(), terms)
  assert_close(scanned.h, looped.h, terms)
  assert_close(scanned.loss, looped.loss, terms)


def test_jit_equals_no_jit():
  rng = np.random.default_rng(3)
  head = jnp.asarray(rng.normal(size=(10, 10)), jnp.float32)
  step = functools.partial(evolve.generation_step, alpha=LOGITS.alpha, schedule=LOGITS, cfg=CFG,
                           score=lambda c: ops.fitness(c @ head, 2))
  pop = evolve.Population(jnp.asarray(rng.normal(size=(12, 10)), jnp.float32), jnp.arange(12.0))
  eager, jitted = step(pop, jax.random.key(1)), jax.jit(step)(pop, jax.random.key(1))
  # Eager ops against one fused program: the 10-term logits and their log-sum-exp.
  assert_close(eager.h, jitted.h, terms=10)
  assert_close(eager.loss, jitted.loss, terms=10)


def test_identity_conv_skip_equals_full_computation(problem):
  model, variables, images, labels, _ = problem
  assert models.identity_convs(variables)  # the search net's square convs are Dirac identities
  results = []
  for skip in (models.identity_convs(variables), frozenset()):
    pop, step = _layer0(model, variables, images, labels, skip)
    results.append(jax.jit(step)(pop, jax.random.key(3)))
  # Bitwise on any CPU: a Dirac conv's every output is x * 1 plus exact zeros.
  np.testing.assert_array_equal(results[0].h, results[1].h)
  np.testing.assert_array_equal(results[0].loss, results[1].loss)


# --- the whole search, sharded ---------------------------------------------------------------

@pytest.fixture(scope='module')
def searched(problem):
  """4 images searched on 8 devices (1 image per device after padding to 8) and on 1 device
  (a vmap batch of 4), and image 2 alone on 8 devices."""
  model, variables, images, labels, indices = problem
  assert len(jax.devices()) == 8, 'tests/conftest.py emulates 8 CPU devices'
  fn8 = search.make_search_fn(model, variables, CFG)
  fn1 = search.make_search_fn(model, variables, CFG, mesh=search.make_mesh(jax.devices()[:1]))
  run = lambda fn, batch, sl: search.search_in_batches(fn, batch, images[sl], labels[sl],
                                                       indices[sl])
  return dict(fn8=fn8, r8=run(fn8, 8, slice(0, 4)), r8_one=run(fn8, 8, slice(2, 3)),
              r1=run(fn1, 4, slice(0, 4)))


def _assert_same(a, b):
  """Equal up to float rounding: XLA's CPU reductions sum in an order that depends on the
  batch shape (about an ulp); a different draw or selection would differ by far more."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_sharded_over_8_devices_equals_one_device(searched):
  _assert_same(searched['r8'], searched['r1'])


def test_image_result_does_not_depend_on_batch_size(searched):
  # r8 vs r1 is also a vmap batch of 1 vs 4 on a device; here the call's batch differs too.
  _assert_same(jax.tree.map(lambda a: a[2:3], searched['r8']), searched['r8_one'])
  _assert_same(jax.tree.map(lambda a: a[2:3], searched['r1']), searched['r8_one'])


def _compile_events(call):
  """JAX's tracing, lowering and compilation events while ``call()`` runs."""
  events = []
  listener = lambda event, *args, **kwargs: events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    jax.block_until_ready(call())
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return [e for e in events if e.startswith('/jax/core/compile/')]


def test_second_call_does_not_recompile(problem, searched):
  _, _, images, labels, indices = problem
  fn = searched['fn8']
  # 9 images in calls of 8: two calls, the second padded, both of the shape compiled already.
  nine = np.arange(9) % len(images)
  assert not _compile_events(lambda: search.search_in_batches(
      fn, 8, images[nine], labels[nine], indices[nine]))  # no trace either
  # Positive control: a batch of 16, a shape not compiled yet. Its compile must be seen, or
  # the check above would pass with a listener that hears nothing.
  sixteen = np.arange(16) % len(images)
  seen = _compile_events(lambda: fn(images[sixteen], labels[sixteen], indices[sixteen]))
  assert {'/jax/core/compile/jaxpr_trace_duration',
          '/jax/core/compile/backend_compile_duration'} <= set(seen)
  with pytest.raises(ValueError, match='multiple of 8'):
    fn(images[:4], labels[:4], indices[:4])


def test_result_shapes_and_losses_are_consistent(problem, searched):
  model, variables, _, labels, _ = problem
  r = searched['r8']
  assert [t.shape for t in r.targets] == [(4, 13, 13, 8), (4, 6, 6, 8), (4, 3, 3, 8), (4, 10)]
  assert [c.shape for c in r.curves] == [(4, s.generations) for s in CFG.layers.values()]
  assert r.best_loss.shape == (4, 4) and r.init_loss.shape == (4,)
  for layer in range(4):
    # A target's loss, re-scored through the rest of the network, is its reported loss.
    h = jnp.asarray(r.targets[layer])
    logits = h if layer == 3 else model.apply(variables, layer, h, method=model.forward_from)[-1]
    rescored = jax.vmap(lambda z, y: ops.fitness(z[None], y)[0])(logits, labels)
    np.testing.assert_allclose(rescored, r.best_loss[:, layer], rtol=1e-5)
    np.testing.assert_array_equal(r.curves[layer][:, -1], r.best_loss[:, layer])
    assert np.all(np.diff(r.curves[layer], axis=1) <= 0)  # elitism: the best never worsens


def test_fitness_falls_over_the_search(searched):
  r = searched['r8']
  steps = np.concatenate([r.init_loss[:, None], r.best_loss], axis=1)
  assert np.all(np.diff(steps, axis=1) <= 0)
  assert np.all(r.best_loss[:, 3] < r.init_loss - 0.1)


def reference_search(model, variables, cfg, image, label, index):
  """The layer-wise search of one image written out plainly: the network through Flax's own
  ``model.apply``, each generation by :func:`np_generation`, the draws from the documented
  keys. Returns (targets, best_loss (4,), init_loss, curves) as NumPy."""
  batch_stats = cfg.bn_mode == 'batch'

  @functools.cache
  def jitted(layer):
    kwargs = dict(use_running_average=not batch_stats, mutable=['batch_stats'] if batch_stats
                  else False)
    if layer < 0:
      apply = lambda h: model.apply(variables, h, **kwargs)
    else:
      apply = lambda h: model.apply(variables, layer, h, method=model.forward_from, **kwargs)
    return jax.jit(lambda h: apply(h)[0] if batch_stats else apply(h))

  def forward(layer, h):
    return [np.asarray(t, np.float64) for t in jitted(layer)(jnp.asarray(h, jnp.float32))]

  image_key = jax.random.fold_in(jax.random.key(cfg.seed), index)
  noise = np.asarray(search.fast.normal(jax.random.fold_in(image_key, 0),
                                               (cfg.population, *image.shape)))
  noisy = image + cfg.init_noise * image.std(axis=(0, 1)) * noise
  taps = forward(-1, noisy)
  h, loss = taps[0], np_fitness(taps[-1], label)
  init_loss = loss.min()
  targets, best_loss, curves = [], [], []
  for layer, schedule in enumerate(cfg.layers.values()):
    def np_score(c, layer=layer):
      return np_fitness(c if layer == 3 else forward(layer, c)[-1], label)
    curve = []
    for g in range(schedule.generations):
      key = jax.random.fold_in(jax.random.fold_in(image_key, layer + 1), g)
      draws = jax.tree.map(np.asarray, search.draw_generation(key, cfg, h.shape[1:]))
      h, loss = np_generation(h, loss, draws, cfg, schedule, np_score)
      curve.append(loss.min())
    best = np.argmin(loss)
    targets.append(h[best])
    best_loss.append(loss[best])
    curves.append(curve)
    if layer < 3:
      down = forward(layer, h)[0]
      if cfg.seed_next == 'best':
        h, loss = np.broadcast_to(down[best], down.shape), np.full_like(loss, loss[best])
      else:
        h = down
  return targets, np.array(best_loss), init_loss, [np.array(c) for c in curves]


def test_non_default_options_equal_the_reference(problem):
  model, variables, images, labels, indices = problem
  cfg = dataclasses.replace(CFG, bn_mode='batch', seed_next='population', blur_padding='valid',
                            blur_target='candidate', refine_pool='parents', skip_identity_convs=False)
  r = search.make_search_fn(model, variables, cfg, mesh=search.make_mesh(jax.devices()[:2]))(
      images[:2], labels[:2], indices[:2])
  for i in range(2):
    targets, best_loss, init_loss, curves = reference_search(
        model, variables, cfg, images[i].astype(np.float64), labels[i], indices[i])
    for got, want in zip(r.targets, targets, strict=True):
      np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r.best_loss[i], best_loss, rtol=1e-4)
    np.testing.assert_allclose(r.init_loss[i], init_loss, rtol=1e-4)
    for got, want in zip(r.curves, curves, strict=True):
      np.testing.assert_allclose(got[i], want, rtol=1e-4)


@pytest.mark.parametrize('layer', [0, 3])
def test_gradient_control_takes_one_step_per_child_and_never_worsens(problem, layer):
  """search.method='gradient': G * C descent steps from the population's best candidate; the
  result has evolution's shapes, re-scores to its reported loss and beats the start."""
  model, variables, images, labels, _ = problem
  cfg = dataclasses.replace(CFG, method='gradient', blur_target='noise')
  taps = model.apply(variables, jnp.asarray(images[:1].repeat(CFG.population, 0)),
                     use_running_average=True)
  forward = evolve.network_forward(model, variables, 'inference')
  score = lambda h: ops.fitness(h if layer == 3 else forward(layer, h)[-1], labels[0])
  pop = evolve.Population(taps[layer], score(taps[layer]))
  evaluated = []

  def counting(h):  # counts candidates scored at run time, inside the scan too
    jax.debug.callback(lambda n: evaluated.append(int(n)), h.shape[0])
    return score(h)
  schedule = list(cfg.layers.values())[layer]
  out, curve = jax.jit(lambda p: evolve.search_layer(
      p, jax.random.key(0), schedule=schedule, cfg=cfg, score=counting))(pop)
  jax.effects_barrier()
  children = cfg.n_explore + cfg.n_refine
  # Evolution scores G * C children; the descent takes as many steps, plus the last candidate.
  assert sum(evaluated) == schedule.generations * children + 1
  assert out.h.shape == pop.h.shape and curve.shape == (schedule.generations,)
  np.testing.assert_allclose(score(out.h[:1]), out.loss[:1], rtol=1e-5)
  assert np.all(np.diff(curve) <= 0) and curve[-1] == out.loss[0]
  assert out.loss[0] < pop.loss.min() - 0.05
  if layer < 3:  # per-sample normalised, as evolution's candidates
    np.testing.assert_allclose(np.asarray(out.h[0]).std(), 1.0, rtol=1e-3)


def test_anchored_fitness_keeps_targets_near_the_image_and_scores_the_sum(problem, searched):
  """The 'anchored' fitness: a block target's reported loss is its cross-entropy plus the
  weight times its distance from the image's own activation, and the targets stay nearer to it
  than the paper's fitness leaves them."""
  model, variables, images, labels, indices = problem
  cfg = dataclasses.replace(CFG, operators=dataclasses.replace(
      CFG.operators, fitness=config.OperatorConfig('anchored', {'weight': 2.0})))
  r = search.search_in_batches(search.make_search_fn(model, variables, cfg), 8, images, labels,
                               indices)
  clean = model.apply(variables, jnp.asarray(images), use_running_average=True)
  distance = jax.vmap(lambda h, ref: ops.anchor_distance(h[None], ref, CFG.norm_eps)[0])
  for layer in range(3):
    h = jnp.asarray(r.targets[layer])
    ce = jax.vmap(lambda z, y: ops.fitness(z[None], y)[0])(
        model.apply(variables, layer, h, method=model.forward_from)[-1], labels)
    d_anchored = distance(h, clean[layer])
    np.testing.assert_allclose(r.best_loss[:, layer], ce + 2.0 * d_anchored, rtol=1e-5)
    d_paper = distance(jnp.asarray(searched['r8'].targets[layer]), clean[layer])
    assert float(d_anchored.mean()) < float(d_paper.mean())


# --- the shared layer loop and its alpha schedule ----------------------------------------------

@pytest.mark.parametrize('name, end', [('constant', 1.0), ('linear', 0.25), ('cosine', 0.1)])
def test_the_layer_loop_reads_alpha_at_the_generation_counter(name, end):
  """layer.run hands generation g the schedule's alpha at g: from alpha down to end x alpha."""
  schedule = config.LayerSchedule(5, 0.4, 1.0, 0, config.AlphaSchedule(name, end))
  recorder = search.layer.Method(  # records each generation's alpha, returns them as h
      init=lambda pop: (0, jnp.zeros(5)),
      step=lambda s, key, alpha: (s[0] + 1, s[1].at[s[0]].set(alpha)),
      best_loss=lambda s: s[1][0], finish=lambda s, pop: pop.replace(h=s[1]))
  pop = evolve.Population(jnp.zeros((3, 2)), jnp.arange(3.0))
  out, _ = jax.jit(lambda p: search.layer.run(p, jax.random.key(0), schedule=schedule,
                                              method=recorder))(pop)
  alphas = np.asarray(out.h)
  np.testing.assert_allclose(alphas[[0, -1]], [0.4, 0.4 * end], rtol=1e-6)
  assert np.all(np.diff(alphas) <= 1e-7) and (name == 'constant') == np.all(alphas == 0.4)


def test_a_decaying_alpha_changes_the_search_and_the_constant_one_is_the_default(problem):
  model, variables, images, labels, indices = problem
  run = lambda cfg: search.make_search_fn(model, variables, cfg,
                                          mesh=search.make_mesh(jax.devices()[:1]))(
      images[:1], labels[:1], indices[:1])
  decaying = dataclasses.replace(CFG, layers={**CFG.layers, 'block0': dataclasses.replace(
      LAYER0, alpha_schedule=config.AlphaSchedule('cosine', 0.1))})
  base, decayed = run(CFG), run(decaying)
  assert not np.array_equal(base.targets[0], decayed.targets[0])
  assert decayed.curves[0].shape == base.curves[0].shape


# --- targets the mean of several searches per image (search.average_of, beyond the paper) -----

def _by_key(model, variables, cfg, images, labels, keys):
  """:func:`evolve.search_with_key` of each image with its key, one jitted vmap."""
  search_one = functools.partial(evolve.search_with_key, model, variables, cfg)
  return jax.jit(jax.vmap(search_one))(images, labels, keys)


def _image_keys(cfg, indices, repeat):
  return jnp.stack([evolve.repeat_key(jax.random.fold_in(evolve.base_key(cfg), i), repeat)
                    for i in indices])


def test_one_search_per_image_is_the_search_with_the_image_key_bitwise(problem):
  model, variables, images, labels, indices = problem
  got = jax.jit(functools.partial(evolve.search_batch, model, variables, CFG))(
      images, labels, indices)
  want = _by_key(model, variables, CFG, images, labels, _image_keys(CFG, indices, 0))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got.target_loss, got.best_loss)


def test_the_repeats_draw_from_keys_no_other_search_uses():
  image_key = jax.random.fold_in(jax.random.key(0), 5)
  # The image key's own children: its initial population (0) and its layers (1 .. L).
  children = [jax.random.fold_in(image_key, j) for j in range(len(CFG.layers) + 1)]
  repeats = [evolve.repeat_key(image_key, r) for r in range(4)]
  assert repeats[0] is image_key
  data = {tuple(np.asarray(jax.random.key_data(k)).tolist())
          for k in [image_key, *children, *repeats[1:]]}
  assert len(data) == 1 + len(children) + 3


def test_targets_of_two_searches_are_their_mean_and_scored_by_the_fitness(problem):
  model, variables, images, labels, indices = problem
  cfg = dataclasses.replace(CFG, average_of=2)
  got = jax.jit(functools.partial(evolve.search_batch, model, variables, cfg))(
      images, labels, indices)
  runs = [_by_key(model, variables, cfg, images, labels, _image_keys(cfg, indices, r))
          for r in range(2)]
  # The two searches differ: what the mean averages is not one search twice.
  assert not np.allclose(runs[0].targets[1], runs[1].targets[1], atol=1e-2)
  # float32, summed in a scan there and by NumPy here: an ulp or two apart.
  mean = lambda *a: np.mean(np.stack(a), 0)
  for name in ('targets', 'best_loss', 'init_loss', 'curves'):
    for a, b in zip(jax.tree.leaves(getattr(got, name)),
                    jax.tree.leaves(jax.tree.map(mean, *[getattr(r, name) for r in runs])),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)
  for i in range(len(images)):
    fitness = evolve.image_fitness(model, variables, cfg, images[i], labels[i])
    want = [fitness(l, jnp.asarray(t[i])[None])[0] for l, t in enumerate(got.targets)]
    np.testing.assert_allclose(got.target_loss[i], want, rtol=1e-5)
