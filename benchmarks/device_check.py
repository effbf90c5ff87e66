"""Checks whatever devices JAX sees for this library, in a fixed time budget.

  python benchmarks/device_check.py --minutes=8 [--out=device_check.json] [--data_dir=data/mnist]

Prints, and writes as one JSON file (``--out``):

1. the devices (kind, count, usable memory) and the versions;
2. the dense matmul rate, float32 and bfloat16;
3. the search engine's generation step at the paper's shapes (CIFAR 15x15x256 and MNIST
   13x13x256 at layer 0, population 240), at every layer: seconds per image-generation per
   device and the images in flight per device that fit its memory; from those per-layer times,
   the projected hours of the paper's whole search of MNIST, CIFAR-10 and CIFAR-100 on these
   devices; and whether a bfloat16 forward would speed the search up;
4. training images/s of the paper's CIFAR learning network (6 convs per block, width 256), the
   SGD step and the student step, float32 and bfloat16, as a fraction of the matmul rate;
5. a paper-scale MNIST search (``configs/mnist.py:paper``) of as many training images as fit
   half the budget the measurements leave, its mean best cross-entropy per layer, and a
   student trained on them for the other half, with its hold-out accuracy.

The budget is kept by measuring and stopping: the measurements (2-4) share the first
:data:`MEASURE_END` of it, each skipped (and said so) when what it needs, judged from what was
measured before it, does not fit what is left; the search stops before a batch that would not
end in its half, the student after the epoch the next of which would not end in time; and a
watchdog writes what was measured and exits at the budget whatever is running. Where the
paper's shapes cannot fit (the training network and the MNIST run on a CPU), tiny shapes run
instead and the output says so.
"""

from __future__ import annotations

import time

_START = time.monotonic()  # the budget counts from here, before JAX is imported

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import signal
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np

import measure
from decouple_jax import config as cfglib
from decouple_jax import config_files
from decouple_jax import data as datalib
from decouple_jax import memory
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.learn import sgd, student, trainer
from decouple_jax.models import airbench
from decouple_jax.search import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
# Fractions of the budget: the measurements (sections 2-4) end by MEASURE_END, the search
# engine's by ENGINE_END; the MNIST search and its student share the rest equally, but for
# MARGIN, kept for the student's last evaluation and the report.
ENGINE_END, MEASURE_END, MARGIN = 0.22, 0.35, 0.04
# The paper's data sets as searched here: image shape, classes, training images (the training
# split, its 4,000 hold-out images removed).
DATASETS = {'cifar10': ((32, 32, 3), 10, 46_000), 'mnist': ((28, 28, 1), 10, 56_000),
            'cifar100': ((32, 32, 3), 100, 46_000)}
# The paper's CIFAR learning network (section 4.2) and its tiny stand-in.
PAPER_NET, TINY_NET = dict(width=256, batch=2000), dict(width=32, batch=64)
# A student needs some images to learn anything; fewer and the MNIST run goes tiny. A
# throughput measured on fewer images per step than MIN_BATCH says little about training.
MIN_IMAGES, MIN_BATCH = 500, 32
# The fraction of the float32 matmul rate a training step is taken to reach when planning.
TRAIN_EFFICIENCY = 0.2


class Budget:
  """Seconds since the start, and deadlines as fractions of the budget."""

  def __init__(self, seconds: float, start: float):
    self.seconds = seconds
    self.start = start

  def at(self, fraction: float) -> float:
    return self.start + fraction * self.seconds

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def fits(self, seconds: float, deadline: float) -> bool:
    return time.monotonic() + seconds <= deadline


class Report:
  """The JSON being built; ``write`` may run from the watchdog while a section runs."""

  def __init__(self, path: pathlib.Path, budget: Budget, command: str):
    self.path, self.budget = path, budget
    self.lock = threading.Lock()
    self.section = 'start'
    self.data = {'command': command, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
                 'budget_seconds': budget.seconds, 'notes': [], 'stopped': None}

  def note(self, text: str) -> None:
    print(f'note: {text}', flush=True)
    with self.lock:
      self.data['notes'].append(text)

  def set(self, key: str, value) -> None:
    """Records ``value`` and writes the file, so a stop at any moment keeps it."""
    with self.lock:
      self.data[key] = value
    self.write()

  def start(self, section: str) -> None:
    self.section = section
    # What the file says if the run is stopped before its next write.
    self.set('stopped', f'the budget ran out during {section}')

  def write(self) -> None:
    with self.lock:
      self.data['elapsed_seconds'] = round(self.budget.elapsed(), 1)
      runlog.write_json(self.path, self.data)


def _watchdogs(report: Report) -> None:
  """Stops the run at the budget: a thread writes the report and exits just before it, and,
  should a long call hold the interpreter then, the kernel ends the process at the budget
  (SIGALRM), leaving the report of the last measurement, which names the section it was in."""
  left = report.budget.start + report.budget.seconds - time.monotonic()

  def stop():
    report.write()
    print(f'stopped: {report.data["stopped"]}; wrote {report.path}', flush=True)
    os._exit(0)
  timer = threading.Timer(max(left - 1.5, 0), stop)
  timer.daemon = True
  timer.start()
  signal.signal(signal.SIGALRM, signal.SIG_DFL)
  signal.setitimer(signal.ITIMER_REAL, max(left, 0.01))


# --- 2. matmul rate ---------------------------------------------------------------------------

def matmul_rates(report: Report) -> dict:
  n = 2048 if jax.default_backend() == 'cpu' else 8192
  rates = {'n': n, 'float32_gflops': measure.matmul_gflops(n, jnp.float32, repeats=5),
           'bfloat16_gflops': measure.matmul_gflops(n, jnp.bfloat16, repeats=5)}
  print(f'dense matmul {n}^3: float32 {rates["float32_gflops"]:.1f} GFLOP/s, bfloat16 '
        f'{rates["bfloat16_gflops"]:.1f} GFLOP/s', flush=True)
  return rates


# --- 3. the search engine ---------------------------------------------------------------------

def _search_network(image_shape, num_classes, cfg):
  """The paper's untrained search network on random images (the step's cost does not depend
  on the values), with its identity convs skipped as the search runs it."""
  images = np.random.default_rng(0).normal(size=(8, *image_shape)).astype(np.float32)
  model = models.build(cfg.model, num_classes, image_shape[-1])
  variables = models.init_model(model, jax.random.key(0), images)
  return model.clone(identity_convs=airbench.identity_convs(variables), conv_impl='xla'), variables


def _time_step(fn, args) -> tuple[float, float, int]:
  """(compile seconds, seconds of one call, program bytes per device) of jitted ``fn``."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_seconds = time.perf_counter() - t0
  return compile_seconds, measure.best_time(fn, *args, repeats=1), memory.program_bytes(compiled)


def search_engine(report: Report, budget: Budget, deadline: float) -> dict:
  """Per data set and layer: seconds per image-generation at the paper's shapes; then the
  projected hours of each data set's whole search."""
  cfg = cfglib.SearchConfig()  # the paper's population and schedule (MNIST: same generations)
  usable = memory.device_memory()
  cpu = jax.default_backend() == 'cpu'
  if cpu:
    report.note('search steps are timed with 1 image per call: a CPU runs the images of a '
                'batch one after another, so batching buys it nothing but memory')
  seen, cost = {}, 3.0  # programs measured, by (layer, candidate shape, classes); est. seconds
  out = {}
  for name, (image_shape, num_classes, n_train) in DATASETS.items():
    if not budget.fits(cost, deadline):
      report.note(f'search engine, {name}: not measured, the measurements\' share of the '
                  'budget ran out')
      continue
    model, variables = _search_network(image_shape, num_classes, cfg)
    shapes = models.tap_shapes(model, image_shape)
    layers = []
    for layer, shape in enumerate(shapes):
      key = (layer, shape, num_classes)  # every step scores through the head
      if key not in seen:
        if not budget.fits(cost, deadline):
          report.note(f'search engine, {name} layer {layer}: not measured, the budget ran out')
          break
        t0 = time.perf_counter()
        seen[key] = _measure_layer(model, variables, cfg, layer, shape, usable, cpu)
        cost = max(cost, time.perf_counter() - t0)
      layers.append({'layer': layer, 'shape': 'x'.join(map(str, shape)),
                     'generations': list(cfg.layers.values())[layer].generations,
                     **seen[key]})
    entry = {'shape_layer0': 'x'.join(map(str, shapes[0])), 'population': cfg.population,
             'scale': 'paper', 'layers': layers,
             'images_in_flight_per_device': layers[0]['images_in_flight_per_device']
             if layers else None, 'initial_forward_seconds_per_image': None}
    if len(layers) == len(shapes):
      if budget.fits(cost, deadline):
        fwd = measure.initial_forward_fn(model, variables, cfg)
        entry['initial_forward_seconds_per_image'] = _time_step(
            fwd, (jnp.zeros((1, *image_shape), jnp.float32),))[1]
      else:
        report.note(f'search engine, {name}: the initial population\'s forward (a fraction of '
                    'a percent of the search) not measured, the budget ran out; left out of '
                    'the projection')
      per_image = (entry['initial_forward_seconds_per_image'] or 0.0) + sum(
          l['seconds_per_image_generation'] * l['generations'] for l in layers)
      entry['seconds_per_image'] = per_image
      entry['projected'] = {
          'images': n_train, 'devices': jax.device_count(),
          'hours': per_image * n_train / jax.device_count() / 3600}
      print(f'{name}: {per_image:.2f} s per image -> the whole search of {n_train} images: '
            f'{entry["projected"]["hours"]:.1f} hours on {jax.device_count()} device(s)',
            flush=True)
    out[name] = entry
    report.set('search_engine', out)
    if name == 'cifar10':  # at its shapes, while the budget lasts
      if budget.fits(cost, deadline):
        out['bfloat16_forward'] = _bfloat16_forward(model, variables, cfg)
      else:
        report.note('search engine, bfloat16 forward: not measured, the budget ran out')
  return out


def _measure_layer(model, variables, cfg, layer, shape, usable, cpu) -> dict:
  """The generation step at ``layer`` on random candidates of ``shape``."""
  step = measure.engine_step_fn(model, variables, cfg, layer)

  def args(b):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(b, cfg.population, *shape)).astype(np.float32))
    loss = jnp.asarray(rng.uniform(1, 3, (b, cfg.population)).astype(np.float32))
    return h, loss, jax.random.split(jax.random.key(0), b), jnp.zeros(b, jnp.int32)
  compile_seconds, seconds, nbytes = _time_step(step, args(1))
  in_flight = max(1, int(usable // nbytes))
  b = 1
  if not cpu and in_flight > 1:
    # Enough images for a call of about a second: what an accelerator needs to be busy.
    b = int(min(in_flight, max(2, 1.0 // max(seconds, 1e-6))))
    seconds = _time_step(step, args(b))[1]
  per = seconds / b
  print(f'  layer {layer} ({"x".join(map(str, shape))}): {per:.5f} s per image-generation '
        f'({b} image(s) per call; {in_flight} fit a device), compiled in {compile_seconds:.1f} s',
        flush=True)
  return {'seconds_per_image_generation': per, 'images_per_call': b,
          'images_in_flight_per_device': in_flight, 'compile_seconds': compile_seconds}


def _bfloat16_forward(model, variables, cfg) -> dict:
  """The network forward of a layer-0 generation's children at CIFAR shapes, float32 against
  bfloat16: the part of a generation a narrower dtype could speed up most (the rest is the
  operators' elementwise work)."""
  children = cfg.n_explore + cfg.n_refine
  h = np.random.default_rng(0).normal(size=(children, 15, 15, 256)).astype(np.float32)
  seconds = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    v = jax.tree.map(lambda a, dtype=dtype: a.astype(dtype), variables)
    fwd = jax.jit(lambda v, x: model.apply(v, 0, x, use_running_average=True,
                                           method=model.forward_from)[-1])
    seconds[jnp.dtype(dtype).name] = measure.best_time(fwd, v, jnp.asarray(h, dtype), repeats=2)
  out = {'children': children, 'float32_seconds': seconds['float32'],
         'bfloat16_seconds': seconds['bfloat16'],
         'speedup': seconds['float32'] / seconds['bfloat16']}
  print(f'search forward of {children} layer-0 children: float32 {out["float32_seconds"]:.4f} s, '
        f'bfloat16 {out["bfloat16_seconds"]:.4f} s ({out["speedup"]:.2f}x)', flush=True)
  return out


# --- 4. training throughput -------------------------------------------------------------------

def training(report: Report, budget: Budget, deadline: float, rates: dict,
             compile_guess: float) -> dict:
  """Images/s of the SGD and student steps of the paper's CIFAR learning network, float32 and
  bfloat16; tiny shapes when the paper's would not fit the budget."""
  if not budget.fits(compile_guess, deadline):
    report.note('training: not measured, the measurements\' share of the budget ran out')
    return {'scale': None, 'steps': []}
  devices = jax.device_count()
  paper_cfg = cfglib.ModelConfig(widths=(PAPER_NET['width'],) * 3, convs_per_block=6)
  paper_batch = PAPER_NET['batch'] // devices
  sgd_loss = lambda model: sgd.cross_entropy_loss_fn(model, 10)
  per_image = measure.step_flops(*measure.train_step_setup(sgd_loss, paper_cfg, 8,
                                                           abstract=True)) / 8
  # Four programs, each compiled and run twice, at the rate a training step reaches at best
  # (about a fifth of the matmul rate on a CPU, BENCHMARKS.md): the per-device batch that fits
  # that time, the paper's at most; none worth measuring and the network goes tiny.
  seconds_per_image = per_image / (TRAIN_EFFICIENCY * rates['float32_gflops'] * 1e9)
  left = deadline - time.monotonic()
  batch = min(paper_batch, int((left / 4 - compile_guess) / (2 * seconds_per_image)))
  scale, width = 'paper', PAPER_NET['width']
  if batch < MIN_BATCH:
    width, batch = TINY_NET['width'], TINY_NET['batch']
    scale = (f'tiny (width {width}, batch {batch}): at the paper\'s width 256 not even '
             f'{MIN_BATCH} images per step fit the {left:.0f} s left here')
    report.note(f'training: {scale}')
  elif batch < paper_batch:
    report.note(f'training: {batch} images per device per step, not the paper\'s '
                f'{paper_batch}: what fits the time left')
  model_cfg = dataclasses.replace(paper_cfg, widths=(width,) * 3)
  student_cfg = cfglib.StudentConfig(model=model_cfg)  # the loss reads no model field
  losses = {'sgd': (sgd_loss, False),
            'student': (lambda model: student.student_loss_fn(model, student_cfg), True)}
  variables = measure.init_network(model_cfg)
  usable = memory.device_memory()
  rows, cost, flops = [], 0.0, {}
  # SGD first in both dtypes: if the budget stops early, what bfloat16 buys is still known.
  for name, (loss, targets) in losses.items():
    for dtype in ('float32', 'bfloat16'):
      if not budget.fits(cost, deadline):
        report.note(f'training, {name} step in {dtype}: not measured, the budget ran out')
        continue
      t0 = time.perf_counter()
      step, args = measure.train_step_setup(loss, model_cfg, batch, student_targets=targets,
                                            compute_dtype=dtype, variables=variables)
      lowered = step.lower(*args)
      # The float32 program's count for both dtypes: the network's arithmetic, not the
      # conversions a bfloat16 program adds.
      step_flops = flops.setdefault(name, lowered.cost_analysis()['flops'])
      compiled = lowered.compile()  # the step's first call below runs this compile
      compile_seconds = time.perf_counter() - t0
      need = memory.program_bytes(compiled)
      if need > usable:
        report.note(f'training, {name} step in {dtype}: not measured, a step of {batch} images '
                    f'needs {memory.size(need)} per device, the device has {memory.size(usable)}')
        continue
      seconds = measure.step_time(step, args, steps=1)
      cost = max(cost, time.perf_counter() - t0)
      rate = step_flops / seconds / 1e9
      rows.append({'step': name, 'compute_dtype': dtype, 'images_per_s': batch / seconds,
                   'gflop_per_image': step_flops / batch / 1e9, 'gflops': rate,
                   'fraction_of_matmul_rate': rate / rates[f'{dtype}_gflops'],
                   'compile_seconds': compile_seconds, 'bytes_per_device': need})
      print(f'{name:7s} step, {dtype:8s}: {batch / seconds:8.1f} images/s, {rate:7.1f} GFLOP/s '
            f'= {rows[-1]["fraction_of_matmul_rate"]:.1%} of the {dtype} matmul rate',
            flush=True)
  return {'network': f'CIFAR, 6 convs per block, width {width}', 'scale': scale,
          'batch_per_device': batch, 'steps': rows}


# --- 5. a paper-scale MNIST search and a student ----------------------------------------------

def _config(variant: str) -> cfglib.ExperimentConfig:
  return cfglib.from_dict(cfglib.ExperimentConfig,
                         config_files.load(f'{REPO / "configs" / "mnist.py"}:{variant}'))


def mnist_run(report: Report, budget: Budget, data_dir: str, engine: dict, train: dict
              ) -> dict:
  """Searches as many MNIST training images as fit half the budget left, then trains a student
  on them until the budget's end; ``engine`` and ``train`` (the measurements) say what fits."""
  search_end = (time.monotonic() + budget.at(1 - MARGIN)) / 2
  exp, scale = _config('paper'), 'paper (configs/mnist.py:paper)'
  per_image = engine.get('mnist', {}).get('seconds_per_image')
  compile_guess = 3 * max((l['compile_seconds'] for l in engine.get('mnist', {}).get(
      'layers', [])), default=10.0)
  fit = (0 if per_image is None else
         int((search_end - time.monotonic() - compile_guess) / per_image) * jax.device_count())
  if fit < MIN_IMAGES:
    why = ('its search step was not measured' if per_image is None else
           f'{per_image:.1f} s per image here: {max(fit, 0)} images fit its time')
    exp = _config('demo')
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, test_limit=2000))
    scale = (f'tiny (configs/mnist.py:demo, test split cut to 2,000 images): the paper\'s '
             f'search does not fit ({why}, fewer than the {MIN_IMAGES} a student needs)')
    report.note(f'MNIST run: {scale}')
    fit = exp.data.train_limit
  data_cfg = dataclasses.replace(exp.data, dir=data_dir,
                                 train_limit=min(max(fit, 1), exp.data.train_limit or fit))
  ds = datalib.load_dataset(data_cfg)
  search_cfg = exp.search
  t0 = time.monotonic()
  fn = sharding.make_search_fn(*models.init_for_dataset(search_cfg.model, ds,
                                                        search_cfg.untrained_network_seed),
                               search_cfg)
  batch = fn.batch(ds.image_shape, len(ds.train_images))
  images = np.asarray(datalib.normalize(ds.train_images, ds.mean, ds.std))
  result = _search_until(fn, images, ds.train_labels, ds.train_index, search_end)
  searched = len(result.init_loss)
  search_seconds = time.monotonic() - t0
  out = {'scale': scale, 'images_searched': searched, 'images_per_call': batch,
         'search_seconds': search_seconds, 'mean_initial_ce': float(result.init_loss.mean()),
         'mean_best_ce': dict(zip(search_cfg.layers, result.best_loss.mean(0).tolist()))}
  print(f'MNIST search ({scale}): {searched} images in {search_seconds:.0f} s; mean best CE '
        + ' / '.join(f'{v:.3f}' for v in out['mean_best_ce'].values()), flush=True)
  report.set('mnist_run', out)
  report.start('the MNIST student')
  out['student'] = _student(exp, ds, result, budget, train)
  return out


class _OutOfTime(Exception):
  pass


def _search_until(fn: sharding.SearchFn, images, labels, indices, deadline: float):
  """``fn.search`` of the first images whose batches end by ``deadline``: no batch starts
  that the last one's duration says would end after it (the first always runs)."""
  parts, clock = [], [time.monotonic()]

  def keep(part):
    parts.append(part)
    now = time.monotonic()
    seconds, clock[0] = now - clock[0], now
    if sum(len(p.init_loss) for p in parts) < len(images) and now + seconds > deadline:
      raise _OutOfTime
  try:
    fn.search(images, labels, indices, on_batch=keep)
  except _OutOfTime:
    pass
  return jax.tree.map(lambda *a: np.concatenate(a), *parts)


def _student(exp, ds, result, budget: Budget, train_measured: dict) -> dict:
  """A student of ``exp`` trained on the searched images until the budget's end."""
  n = len(result.init_loss)
  devices = jax.device_count()
  batch = max(devices, min(exp.student.train.optim.batch_size, n // 2) // devices * devices)
  steps = n // batch
  deadline = budget.at(1 - MARGIN)
  # Epochs that fill the time left, judged from the step's FLOPs at the rate the measured
  # student step reached, so that the learning-rate schedule spans the run; the watchdog
  # stops it at the budget if that judgement was wrong.
  step, args = measure.train_step_setup(
      lambda m: student.student_loss_fn(m, exp.student), exp.student.model, batch,
      student_targets=True, image_shape=ds.image_shape, num_classes=ds.num_classes,
      abstract=True)
  flops = measure.step_flops(step, args)
  dtype = trainer.compute_dtype(exp.student.train).name
  rows = train_measured.get('steps', [])
  measured = ([r for r in rows if r['step'] == 'student' and r['compute_dtype'] == dtype] or
              [r for r in rows if r['compute_dtype'] == dtype] or rows or
              [{'gflops': 1.0, 'compile_seconds': 30.0}])
  epoch_seconds = steps * flops / (measured[0]['gflops'] * 1e9)
  left = deadline - time.monotonic() - measured[0]['compile_seconds']
  if left < epoch_seconds:
    return {'images': n, 'trained': False,
            'why': f'{left + measured[0]["compile_seconds"]:.0f} s were left, a compile and an '
                   f'epoch need about {measured[0]["compile_seconds"] + epoch_seconds:.0f} s'}
  epochs = int(max(1, min(exp.student.train.optim.epochs, left // max(epoch_seconds, 1e-6))))
  train = dataclasses.replace(
      exp.student.train, eval_every=epochs,
      optim=dataclasses.replace(exp.student.train.optim, batch_size=batch, epochs=epochs))
  searched = dataclasses.replace(ds, train_images=ds.train_images[:n],
                                 train_labels=ds.train_labels[:n], train_index=ds.train_index[:n])
  results = student.fit_student(searched, result.targets,
                                dataclasses.replace(exp.student, train=train))
  out = {'images': n, 'trained': True, 'batch': batch, 'epochs_planned': epochs,
         'epochs_run': results['epochs_run'], 'train_seconds': results['train_seconds'],
         'holdout_accuracy': results['holdout_accuracy'],
         'test_accuracy': results['test_accuracy']}
  print(f'student on {n} searched images: {results["epochs_run"]} epoch(s), hold-out '
        f'{100 * results["holdout_accuracy"]:.2f}%, test {100 * results["test_accuracy"]:.2f}%',
        flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--minutes', type=float, default=8.0, help='the time budget')
  parser.add_argument('--out', default='device_check.json', help='the JSON file written')
  parser.add_argument('--data_dir', default=str(REPO / 'data' / 'mnist'),
                      help='MNIST (make data fetches it)')
  args = parser.parse_args()
  budget = Budget(60 * args.minutes, _START)
  report = Report(pathlib.Path(args.out), budget, ' '.join(sys.argv))
  _watchdogs(report)
  report.start('the device survey')
  report.set('machine', measure.machine())
  m = report.data['machine']
  print(f'# device_check {report.data["date"]}: {m["devices"]} x {m["device_kind"]} '
        f'({m["platform"]}, {memory.size(m["usable_memory_per_device_bytes"])} usable each), '
        f'{m["processes"]} process(es), jax {m["versions"]["jax"]}; budget {args.minutes} min',
        flush=True)
  report.start('the matmul rate')
  rates = matmul_rates(report)
  report.set('matmul', rates)
  report.start('the search engine')
  engine = search_engine(report, budget, budget.at(ENGINE_END))
  report.set('search_engine', engine)
  report.start('the training steps')
  compiles = [l['compile_seconds'] for e in engine.values() for l in e.get('layers', [])]
  train = training(report, budget, budget.at(MEASURE_END), rates,
                   3 * max(compiles, default=3.0))
  report.set('training', train)
  report.start('the MNIST search')
  report.set('mnist_run', mnist_run(report, budget, args.data_dir, engine, train))
  signal.setitimer(signal.ITIMER_REAL, 0)
  report.section = 'the report'
  report.set('stopped', None)
  print(f'wrote {args.out} after {budget.elapsed():.0f} s of a {budget.seconds:.0f} s budget',
        flush=True)


if __name__ == '__main__':
  main()
