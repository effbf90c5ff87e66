"""Training throughput of the paper's CIFAR learning network, against the machine's matmul rate.

  python benchmarks/train_throughput.py [--batch=N] [--steps=N] [--width=256] [--convs=6]
      [--conv_impls=xla,matmul]

Prints images/s of one SGD step (forward + backward + Nesterov update, batch-statistics
BatchNorm, as the trainer runs it), the step's FLOPs from XLA's cost analysis, the achieved
GFLOP/s, and that as a fraction of the dense float32 matmul rate measured in the same run
(the fastest of 10 calls, before and again after the steps: the higher of the two). Steps are
timed as a mean over ``--steps``, so the fraction errs low.
Also prints the student's step (MSE onto targets + KL head) on the same network, as a ratio.

Every conv implementation of ``--conv_impls`` (``ModelConfig.conv_impl``) is timed in the same
run, so their ratios share the machine's state. The FLOPs are the 'xla' step's for every
implementation (the network's arithmetic, not what a formulation adds), so GFLOP/s compare
like images/s.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import models
from decouple_jax.learn import optim, sgd, student, trainer

_BATCH = flags.DEFINE_integer('batch', 256, 'Images per step.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up step).')
_WIDTH = flags.DEFINE_integer('width', 256, 'Block width (paper: 256).')
_CONVS = flags.DEFINE_integer('convs', 6, 'Convs per block (paper CIFAR learning net: 6).')
_CONV_IMPLS = flags.DEFINE_list('conv_impls', ['xla', 'matmul'],
                                'ModelConfig.conv_impl values to time (xla, matmul, auto).')
_MATMUL = flags.DEFINE_integer('matmul', 2048, 'Side of the square matmul that sets the peak.')


def _time(fn, *args, steps: int) -> float:
  """Seconds per call, after one warm-up call; ``fn`` returns (state, ...) fed back in."""
  out = fn(*args)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(steps):
    out = fn(out[0], *args[1:])
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def matmul_gflops(n: int, repeats: int = 10) -> float:
  """Dense float32 matmul rate (GFLOP/s) of an n x n x n product: its fastest of ``repeats``
  calls, the rate the machine demonstrably reaches (single calls vary by 20% on a shared VM)."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  mm = jax.jit(lambda x: x @ a)
  jax.block_until_ready(mm(a))
  fastest = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(mm(a))
    fastest = min(fastest, time.perf_counter() - t)
  return 2 * n ** 3 / fastest / 1e9


def step_setup(loss_fn, model_cfg, batch, extras):
  model = models.build(model_cfg, 10, 3, detach_head=bool(extras))
  x = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype(np.float32)
  variables = models.init_model(model, jax.random.key(0), x)
  opt_cfg = cfglib.OptimConfig(batch_size=batch)
  tx = optim.optimizer(opt_cfg, 100)
  train_cfg = cfglib.TrainConfig(optim=opt_cfg)
  mesh = trainer.mesh_1d('batch', jax.devices()[:1])
  step = trainer.make_step_fn(loss_fn(model), tx, train_cfg, np.zeros(3, np.float32),
                              np.ones(3, np.float32), mesh)
  state = trainer.TrainState(jnp.zeros((), jnp.int32), variables['params'],
                             variables['batch_stats'], tx.init(variables['params']))
  # Placed as trainer.fit places it: a state on another sharding than the step returns makes
  # the first fed-back step retrace and recompile, inside the timed loop.
  state = jax.device_put(state, NamedSharding(mesh, P()))
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (batch, 32, 32, 3), np.uint8))
  labels = jnp.asarray(np.random.default_rng(2).integers(0, 10, batch, np.int32))
  args = (state, images, labels, extras(model) if extras else (), jnp.arange(batch),
          jax.random.key(0))
  return step, args


def main(argv):
  del argv
  batch, width = _BATCH.value, _WIDTH.value
  print(f'jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}; '
        f'network widths {width}, {_CONVS.value} convs/block, batch {batch}')
  peak_before = matmul_gflops(_MATMUL.value)

  def sgd_loss(model):
    return sgd.cross_entropy_loss_fn(model, 10)

  def model_cfg(impl):
    return cfglib.ModelConfig(widths=(width,) * 3, convs_per_block=_CONVS.value, conv_impl=impl)

  student_cfg = cfglib.StudentConfig(model=model_cfg('xla'))  # the loss reads no model field

  def student_loss(model):
    return student.student_loss_fn(model, student_cfg)

  def targets(model):
    shapes = models.tap_shapes(model, (32, 32, 3))
    return tuple(jnp.zeros((batch, *s), jnp.float32) for s in shapes)

  impls = _CONV_IMPLS.value
  steps = (('sgd', sgd_loss, None), ('student', student_loss, targets))
  flops = {name: _xla_flops(loss_fn, model_cfg('xla'), batch, extras)
           for name, loss_fn, extras in steps}
  seconds = {}
  for impl in impls:
    for name, loss_fn, extras in steps:
      step, args = step_setup(loss_fn, model_cfg(impl), batch, extras)
      seconds[impl, name] = _time(step, *args, steps=_STEPS.value)
  # The fractions use the faster of two matmul measurements, before and after the steps, so
  # a machine that slowed down (or sped up) meanwhile cannot flatter them.
  peak_after = matmul_gflops(_MATMUL.value)
  peak = max(peak_before, peak_after)
  print(f'dense f32 matmul {_MATMUL.value}^3: {peak_before:.1f} GFLOP/s before the steps, '
        f'{peak_after:.1f} after; fractions use {peak:.1f}')
  for impl in impls:
    for name, _, _ in steps:
      gflops = flops[name] / seconds[impl, name] / 1e9
      print(f'{impl:6s} {name:8s} step: {batch / seconds[impl, name]:8.1f} images/s  '
            f'{flops[name] / batch / 1e9:.3f} GFLOP/image  {gflops:7.1f} GFLOP/s  '
            f'= {gflops / peak:.1%} of the matmul rate')
    print(f"{impl:6s} student step / sgd step time: "
          f"{seconds[impl, 'student'] / seconds[impl, 'sgd']:.3f}")
  for name, _, _ in steps:
    fastest = min(impls, key=lambda impl: seconds[impl, name])
    best = flops[name] / seconds[fastest, name] / 1e9 / peak
    print(f'{name:8s} best: {best:.1%} of the matmul rate ({fastest} conv)')
    for impl in impls:
      if 'xla' in impls and impl != 'xla':
        print(f"{name:8s} {impl} / xla speed: {seconds['xla', name] / seconds[impl, name]:.3f}")


def _xla_flops(loss_fn, model_cfg, batch, extras) -> float:
  """FLOPs of one step with XLA's conv (from XLA's cost analysis): the network's arithmetic."""
  step, args = step_setup(loss_fn, model_cfg, batch, extras)
  return step.lower(*args).compile().cost_analysis()['flops']


if __name__ == '__main__':
  app.run(main)
