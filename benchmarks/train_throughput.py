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

from absl import app
from absl import flags
import jax

from measure import matmul_gflops, step_flops, step_time, train_step_setup
from decouple_jax import config as cfglib
from decouple_jax.learn import sgd, student

_BATCH = flags.DEFINE_integer('batch', 256, 'Images per step.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up step).')
_WIDTH = flags.DEFINE_integer('width', 256, 'Block width (paper: 256).')
_CONVS = flags.DEFINE_integer('convs', 6, 'Convs per block (paper CIFAR learning net: 6).')
_CONV_IMPLS = flags.DEFINE_list('conv_impls', ['xla', 'matmul'],
                                'ModelConfig.conv_impl values to time (xla, matmul, auto).')
_MATMUL = flags.DEFINE_integer('matmul', 2048, 'Side of the square matmul that sets the peak.')


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

  impls = _CONV_IMPLS.value
  steps = (('sgd', sgd_loss, False), ('student', student_loss, True))
  # The FLOPs are the 'xla' step's for every implementation: the network's arithmetic.
  flops = {name: step_flops(*train_step_setup(loss_fn, model_cfg('xla'), batch,
                                               student_targets=targets, abstract=True))
           for name, loss_fn, targets in steps}
  seconds = {}
  for impl in impls:
    for name, loss_fn, targets in steps:
      step, args = train_step_setup(loss_fn, model_cfg(impl), batch, student_targets=targets)
      seconds[impl, name] = step_time(step, args, steps=_STEPS.value)
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


if __name__ == '__main__':
  app.run(main)
