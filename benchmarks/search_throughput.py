"""Search-engine throughput at the paper's CIFAR-10 shapes (docs/method.md section 3).

Prints seconds per image-generation of
  (a) the engine's generation step (decouple_jax.search: fused, matrix blur, identity convs
      skipped), at layer 0 (candidates 15x15x256, population 240 = 20 + 100 + 120);
  (b) a straightforward version written here: the same algorithm, blurring what the engine
      blurs (``--blur_target``: the mutation noise, the default, or the whole child), as
      separate jitted steps, every conv computed through ``model.forward_from``, one
      ``lax.reduce_window`` per blur pass, ``jax.random`` defaults;
  (c) drawing the generation's Gaussian noise alone (220 x 15x15x256 per image), with
      ``jax.random.normal`` and with the engine's sampler;
the ratios a/b and a/c, the measured step time at every layer and the projected hours of the
paper's full CIFAR-10 search (50,000 images, generations 300/100/100/10) on this machine, and
the throughput ratio of the sharded search on 8 emulated CPU devices vs 1 (measured in a
subprocess that emulates the devices).

Run (about 3 minutes on 2 cores):
  .venv/bin/python benchmarks/search_throughput.py [--images 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from measure import best_time as timed
from measure import engine_step_fn, initial_forward_fn, search_setup as setup
from decouple_jax import config
from decouple_jax import search
from decouple_jax.search import fast
from decouple_jax.search import mutation
from decouple_jax.search import operators as ops

CIFAR_IMAGES = 50_000
NUM_CLASSES = 10


def straightforward_step_fn(model, variables, cfg):
  """Layer 0's generation as a plain, unfused program: one jitted call per step, smoothing
  what ``cfg.blur_target`` says (the noise before it is added, or the child after)."""
  model = model.clone(identity_convs=frozenset())  # every conv computed
  schedule, k, e = cfg.layers['block0'], cfg.top_k, cfg.n_explore
  vjit = lambda f: jax.jit(jax.vmap(f))
  select = vjit(lambda loss: ops.select(loss, k))
  gather = vjit(lambda h, i: h[i])

  @functools.lru_cache(maxsize=None)
  def draw(n, pool_size, shape):
    return vjit(lambda key: (jax.random.randint(jax.random.fold_in(key, 0), (n, 2), 0, pool_size),
                             jax.random.normal(jax.random.fold_in(key, 1), (n, *shape))))
  spread = vjit(ops.spread)
  crossover = vjit(ops.crossover)
  sigma = vjit(lambda s, i: (s[i[:, 0]] + s[i[:, 1]]) / 2)
  mutate = jax.jit(jax.vmap(mutation.perturb, in_axes=(0, 0, None, 0)))
  blur_pass = vjit(lambda h: ops.blur(h, 1, cfg.blur_padding))
  normalise = vjit(lambda h: ops.normalise(h, cfg.norm_eps))
  concat = vjit(lambda *xs: jnp.concatenate(xs))
  forward = vjit(lambda h: model.apply(variables, 0, h, use_running_average=True,
                                       method=model.forward_from)[-1])
  fitness = vjit(ops.fitness)

  def blur(x):
    for _ in range(schedule.blur):
      x = blur_pass(x)
    return x

  def children(pool, key, n, alpha):
    parents, noise = draw(n, pool.shape[1], pool.shape[2:])(key)
    h = crossover(gather(pool, parents[..., 0]), gather(pool, parents[..., 1]))
    if cfg.blur_target == 'noise':
      noise = blur(noise)
    h = mutate(h, sigma(spread(pool), parents), alpha, noise)
    return normalise(blur(h) if cfg.blur_target == 'candidate' else h)

  def step(h, loss, keys, labels):
    top = select(loss)
    parents = gather(h, top)
    explorers = children(parents, jax.vmap(lambda q: jax.random.fold_in(q, 0))(keys), e,
                         schedule.alpha * schedule.boost)
    kept = concat(parents, explorers)
    refiners = children(kept, jax.vmap(lambda q: jax.random.fold_in(q, 1))(keys),
                        cfg.n_refine, schedule.alpha)
    new = concat(kept, refiners)
    return new, concat(gather(loss, top), fitness(forward(concat(explorers, refiners)), labels))
  return step


def probe_devices(n_images: int, repeats: int, blur_target: str) -> None:
  """(Subprocess with 8 emulated devices.) Whole-search throughput, 8 devices vs 1."""
  cfg = dataclasses.replace(config.SearchConfig(blur_target=blur_target), layers={
      name: dataclasses.replace(s, generations=g)
      for (name, s), g in zip(config.PAPER_SCHEDULE.items(), (3, 1, 1, 1))})
  model, variables, images, labels, _ = setup(n_images, cfg)
  indices = np.arange(n_images, dtype=np.int32)
  times = {}
  for n in (1, len(jax.devices())):
    fn = search.make_search_fn(model, variables, cfg, mesh=search.make_mesh(jax.devices()[:n]))
    times[n] = timed(fn, images, labels, indices, repeats=repeats)
  n8 = len(jax.devices())
  print(f'DEVICES {n8} {times[n8]:.4f} {times[1]:.4f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=2, help='images per batch')
  parser.add_argument('--repeats', type=int, default=3, help='timed calls (best is kept)')
  parser.add_argument('--blur_target', default=config.SearchConfig.blur_target,
                      choices=config.BLUR_TARGETS,
                      help="what the blur smooths ('candidate' to compare with engines older "
                      "than the field)")
  parser.add_argument('--probe_devices', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.probe_devices:
    probe_devices(8, args.repeats, args.blur_target)
    return

  cfg = config.SearchConfig(blur_target=args.blur_target)
  b = args.images
  print(f'# search_throughput  {datetime.datetime.now().isoformat(timespec="seconds")}  '
        f'jax {jax.__version__}  {platform.processor() or platform.machine()}  '
        f'{os.cpu_count()} CPUs  devices {jax.devices()}')
  print(f'# paper CIFAR-10 shapes, population {cfg.population} = {cfg.top_k} + '
        f'{cfg.n_explore} + {cfg.n_refine}, blur_target {cfg.blur_target!r}, {b} images per batch, '
        f'best of {args.repeats}')
  model, variables, images, labels, taps = setup(b, cfg)
  keys = jax.random.split(jax.random.key(2), b)
  loss = jax.vmap(ops.fitness)(taps[-1], labels)

  per_layer = []
  for layer in range(4):
    step = engine_step_fn(model, variables, cfg, layer)
    per_layer.append(timed(step, taps[layer], loss, keys, labels, repeats=args.repeats) / b)
  a = per_layer[0]
  plain = straightforward_step_fn(model, variables, cfg)
  t_b = timed(plain, taps[0], loss, keys, labels, repeats=max(1, args.repeats - 1)) / b
  n_noise = (cfg.n_explore + cfg.n_refine, *taps[0].shape[2:])
  noise_jax = jax.jit(jax.vmap(lambda q: jax.random.normal(q, n_noise)))
  noise_engine = jax.jit(jax.vmap(lambda q: fast.normal(q, n_noise)))
  c = timed(noise_jax, keys, repeats=args.repeats) / b
  c_engine = timed(noise_engine, keys, repeats=args.repeats) / b

  print('\n## seconds per image-generation, layer 0 (15x15x256)')
  print(f'(a) engine generation step            {a:8.4f} s')
  print(f'(b) straightforward version           {t_b:8.4f} s')
  print(f'(c) noise alone, jax.random.normal    {c:8.4f} s')
  print(f"(c') noise alone, engine sampler      {c_engine:8.4f} s")
  print(f'b/a = {t_b / a:.2f}x faster (goal >= 3)   a/c = {a / c:.2f} (goal <= 2)   '
        f"a/c' = {a / c_engine:.2f}")

  print('\n## projected full CIFAR-10 search on this machine (measured step at each layer)')
  t_init = timed(initial_forward_fn(model, variables, cfg), images, repeats=args.repeats) / b
  total = t_init
  for layer, (s, t) in enumerate(zip(cfg.layers.values(), per_layer)):
    shape = 'x'.join(map(str, taps[layer].shape[2:]))
    print(f'layer {layer} ({shape:>10s}): {t:8.4f} s/gen x {s.generations:3d} gen = '
          f'{t * s.generations:7.2f} s/image')
    total += t * s.generations
  print(f'initial population forward: {t_init:.4f} s/image')
  print(f'total {total:.1f} s/image -> {total * CIFAR_IMAGES / 3600:.0f} hours for '
        f'{CIFAR_IMAGES} images on 1 device')

  env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                                    ' --xla_force_host_platform_device_count=8').strip())
  out = subprocess.run([sys.executable, __file__, '--probe_devices',
                        f'--repeats={max(1, args.repeats - 1)}',
                        f'--blur_target={args.blur_target}'],
                       env=env, capture_output=True, text=True, check=True).stdout
  n8, t8, t1 = next(line.split()[1:] for line in out.splitlines() if line.startswith('DEVICES'))
  print(f'\n## 8 emulated devices vs 1 (whole search, generations 3/1/1/1, 8 images)')
  print(f'1 device {float(t1):.2f} s, {n8} devices {float(t8):.2f} s: {n8} devices run at '
        f'{float(t1) / float(t8):.2f}x the speed of 1 ({os.cpu_count()} physical cores, so '
        f'emulated devices share them)')


if __name__ == '__main__':
  main()
