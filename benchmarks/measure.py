"""What the benchmarks share: how they time, the machine's matmul rate, and the paper-shaped
programs they time (the search engine's generation step, the training steps).

Imported by the scripts beside it (``python benchmarks/x.py`` puts this directory on the path).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from decouple_jax import config as cfglib
from decouple_jax import memory
from decouple_jax import models
from decouple_jax.learn import optim, trainer
from decouple_jax.models import airbench
from decouple_jax.search import evolve
from decouple_jax.search import fast
from decouple_jax.search import operators as ops


def best_time(fn, *args, repeats: int) -> float:
  """Best wall time of ``repeats`` calls of ``fn(*args)`` (after one warm-up call that
  compiles)."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def step_time(step, args: tuple, steps: int) -> float:
  """Mean seconds per call of a step ``(state, *rest) -> (state, ...)`` fed its own state,
  over ``steps`` calls after one warm-up call."""
  out = step(*args)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(steps):
    out = step(out[0], *args[1:])
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def matmul_gflops(n: int, dtype=jnp.float32, repeats: int = 10) -> float:
  """Dense matmul rate (GFLOP/s) of an n x n x n product in ``dtype``: the fastest of
  ``repeats`` calls, the rate the machine demonstrably reaches (single calls vary by 20% on a
  shared VM)."""
  a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
  mm = jax.jit(lambda x: x @ a)
  return 2 * n ** 3 / best_time(mm, a, repeats=repeats) / 1e9


def machine() -> dict:
  """The devices JAX sees (kind, count, usable memory), the host, and the versions."""
  devices = jax.devices()
  versions = {name: importlib.metadata.version(name)
              for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')}
  return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'devices': len(devices), 'local_devices': jax.local_device_count(),
          'processes': jax.process_count(),
          'usable_memory_per_device_bytes': memory.device_memory(),
          'host': platform.node(), 'processor': platform.processor() or platform.machine(),
          'cpus': os.cpu_count(), 'python': sys.version.split()[0], 'versions': versions}


def search_setup(n_images: int, cfg: cfglib.SearchConfig, image_shape=(32, 32, 3),
                 num_classes: int = 10):
  """The search network of ``cfg`` on random images of ``image_shape``, and their initial
  populations.

  Returns (model, variables, images, labels, taps): model with its identity convs set (as the
  search runs it), images (n, H, W, C), taps[l] (n, P, *S_l): the initial population pushed to
  every tap, i.e. realistic candidates for each layer.
  """
  rng = np.random.default_rng(0)
  images = rng.normal(size=(max(n_images, 8), *image_shape)).astype(np.float32)
  model = models.build(cfg.model, num_classes, image_shape[-1])
  variables = models.init_model(model, jax.random.key(0), images)
  model = model.clone(identity_convs=airbench.identity_convs(variables), conv_impl='xla')
  images, labels = images[:n_images], np.arange(n_images, dtype=np.int32) % num_classes

  @jax.jit
  @jax.vmap
  def initial_taps(image, key):
    noisy = ops.init_population(image, fast.normal(key, (cfg.population, *image.shape)),
                                cfg.init_noise)
    return model.apply(variables, noisy, use_running_average=True)
  keys = jax.random.split(jax.random.key(1), n_images)
  return model, variables, jnp.asarray(images), jnp.asarray(labels), initial_taps(images, keys)


def engine_step_fn(model, variables, cfg: cfglib.SearchConfig, layer: int):
  """jit(vmap(the engine's generation step)) at ``layer``: (h, loss, key, label) -> population.

  ``model`` as :func:`search_setup` returns it (identity convs skipped)."""
  forward = evolve.network_forward(model, variables, 'inference')

  def step(h, loss, key, label):
    def score(c):
      logits = c if layer == airbench.LOGITS else forward(layer, c)[-1]
      return ops.fitness(logits, label)
    schedule = list(cfg.layers.values())[layer]
    return evolve.generation_step(evolve.Population(h, loss), key, alpha=schedule.alpha,
                                  schedule=schedule, cfg=cfg, score=score)
  return jax.jit(jax.vmap(step))


def initial_forward_fn(model, variables, cfg: cfglib.SearchConfig):
  """jit(vmap(the initial population's forward)): images (n, H, W, C) -> taps."""
  forward = evolve.network_forward(model, variables, 'inference')
  return jax.jit(jax.vmap(lambda x: forward(-1, jnp.broadcast_to(x, (cfg.population,
                                                                       *x.shape)))))


def init_network(model_cfg: cfglib.ModelConfig, image_shape=(32, 32, 3),
                 num_classes: int = 10) -> dict:
  """Variables of ``model_cfg`` (whitened on random images), shared by the steps of its
  family that :func:`train_step_setup` builds."""
  model = models.build(model_cfg, num_classes, image_shape[-1])
  x = np.random.default_rng(0).normal(size=(64, *image_shape)).astype(np.float32)
  return models.init_model(model, jax.random.key(0), x)


def train_step_setup(loss_fn, model_cfg: cfglib.ModelConfig, batch: int, *,
                     student_targets: bool = False, image_shape=(32, 32, 3),
                     num_classes: int = 10, compute_dtype: str = 'float32',
                     abstract: bool = False, variables: dict | None = None):
  """A training step as ``trainer.fit`` runs it, on one device, and its arguments.

  ``loss_fn(model)`` gives the loss; ``student_targets`` feeds it zero targets of the taps'
  shapes (the student's step). Returns (step, args) for :func:`step_time`; with ``abstract``
  the arguments are only shapes (nothing is initialised or compiled), enough for
  :func:`step_flops`. ``variables`` (:func:`init_network`) saves initialising again.
  """
  model = models.build(model_cfg, num_classes, image_shape[-1], detach_head=student_targets)
  opt_cfg = cfglib.OptimConfig(batch_size=batch)
  tx = optim.optimizer(opt_cfg, 100)
  train_cfg = cfglib.TrainConfig(optim=opt_cfg, compute_dtype=compute_dtype)
  mesh = trainer.mesh_1d('batch', jax.devices()[:1])
  channels = np.zeros(image_shape[-1], np.float32)
  step = trainer.make_step_fn(loss_fn(model), tx, train_cfg, channels, channels + 1, mesh)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (batch, *image_shape), np.uint8)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  extras = (tuple(np.zeros((batch, *s), np.float32)
                  for s in models.tap_shapes(model, image_shape)) if student_targets else ())
  if abstract:
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, use_running_average=True),
                               jax.random.key(0), x)
    state = jax.eval_shape(lambda v: trainer.TrainState(
        jnp.zeros((), jnp.int32), v['params'], v['batch_stats'], tx.init(v['params'])),
        variables)
    shape = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    return step, (state, shape(images), shape(labels), tuple(map(shape, extras)),
                  shape(np.arange(batch)), jax.random.key(0))
  variables = variables or init_network(model_cfg, image_shape, num_classes)
  state = trainer.TrainState(jnp.zeros((), jnp.int32), variables['params'],
                             variables['batch_stats'], tx.init(variables['params']))
  # Placed as trainer.fit places it: a state on another sharding than the step returns makes
  # the first fed-back step retrace and recompile, inside the timed loop. Host copies first:
  # the step donates its state, which must not be the shared variables.
  state = jax.device_put(jax.tree.map(np.array, state), NamedSharding(mesh, P()))
  return step, (state, jnp.asarray(images), jnp.asarray(labels), tuple(map(jnp.asarray, extras)),
                jnp.arange(batch), jax.random.key(0))


def step_flops(step, args: tuple) -> float:
  """FLOPs of one call of ``step(*args)``, from XLA's cost analysis of the lowered program."""
  return step.lower(*args).cost_analysis()['flops']
