"""The gap study: what closes the distance between search-based learning and SGD.

One study per data set (``--dataset``: MNIST, CIFAR-10), each with its own arms. Every arm is
the data set's ``configs/<dataset>.py:cpu`` on a fixed subset (``--train_images`` training
images, ``--holdout`` hold-out images, the full test set) with a few fields changed, starting
from the study's pinned reading (:attr:`Study.base`). An arm searches its training images
(cached by target hash, so arms that differ only in the student share a search), trains the
student, and reports: search seconds, mean best cross-entropy per search layer (for targets
that are the mean of several searches, the searches' and, beside it, the mean target's), R^2 of
the student's taps against the targets per block, the linear probe on the student's block-2
output, the KL head's accuracy, and the student's hold-out and test accuracy. A study that
searches its hold-out images too (CIFAR-10's) adds what generalises: R^2 on hold-out images,
and what the targets hold before any student
(:func:`decouple_jax.learn.diagnostics.target_diagnostics`: their cosine to the image's own
activation; a linear probe trained on training images' block-2 targets and tested on
hold-out images' targets; the share of the targets' variance that their class means
explain). Beside them, per search width, two references on the same images:
the random-feature floor (a linear probe trained with true labels on the UNTRAINED search
network's block-2 features) and SGD with the student's network.

Choices are made on hold-out accuracy; the test column is reported, never used to choose.
Everything is **scaled down** (the paper searches 60k images at width 256).

Resumable: a finished arm's row is kept in ``WORKDIR/rows/<arm>.json`` and not rerun; an
unfinished search or student resumes from its own files. Every finished row is also written
into the study section of ``--benchmarks_md`` (between its markers), with the date and the
machine's load, so a session that stops mid-study loses nothing; lines already recorded there
for arms this workdir lacks are kept, so a study resumed on a fresh machine adds to the table.

  .venv/bin/python benchmarks/gap_study.py --workdir=runs/gap_study                # every arm
  .venv/bin/python benchmarks/gap_study.py --workdir=runs/gap_study --arms=noise,gradient
  .venv/bin/python benchmarks/gap_study.py --workdir=runs/gap_study --list          # the arms
  .venv/bin/python benchmarks/gap_study.py --dataset=cifar10 --workdir=runs/gap_cifar10 \
      --data_source=folder --data_dir=DIR      # DIR/{train,test}/<class>/*.jpg, or an archive

An MNIST arm takes 3-10 minutes on 2 idle cores (mostly its search), a CIFAR-10 arm 15-30.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import re
import sys
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import config_files
from decouple_jax import data as datalib
from decouple_jax import identity
from decouple_jax import models
from decouple_jax import runlog
from decouple_jax.analysis import plots
from decouple_jax.learn import diagnostics
from decouple_jax.learn import sgd
from decouple_jax.learn import student
from decouple_jax.search import driver
from decouple_jax.search import store_ids

REPO = pathlib.Path(__file__).resolve().parents[1]

# The reading every MNIST arm starts from: ``mnist:cpu`` as it was before the study (blur the
# whole child, 16 generations per block, the paper's MNIST alpha, the paper's MSE weight),
# whatever the config says today, so that an arm's row means the same in every session.
MNIST_BASE = {'search.blur_target': 'candidate', 'gens': (16, 16, 16, 60),
              'alpha': (0.1, 0.1, 0.1, 0.1), 'student.mse_coef': 1.0}

# name -> (what it tests, overrides applied on top of the study's base). Overrides are dotted
# ConfigDict paths, plus five shorthands: 'gens', 'alpha' and 'blur' (generations, alpha and
# blur passes of the search layers, in tap order), 'width' (search and student block width) and
# 'epochs' (the student's and SGD's).
MNIST_ARMS = {
    'candidate': ('blur the whole child (appendix order)', {'search.blur_target': 'candidate'}),
    'noise': ('blur only the mutation noise (section 3.1)', {'search.blur_target': 'noise'}),
    'candidate_g100': ('candidate, blocks 1-2 at 100 generations',
                       {'search.blur_target': 'candidate', 'gens': (16, 100, 100, 60)}),
    'noise_g100': ('noise, blocks 1-2 at 100 generations',
                   {'search.blur_target': 'noise', 'gens': (16, 100, 100, 60)}),
    'noise_g4_100': ('noise, block 0 at 4, blocks 1-2 at 100',
                     {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60)}),
    'gradient_g4_100': ('gradient descent control, same evaluations as noise_g4_100',
                        {'search.blur_target': 'noise', 'search.method': 'gradient',
                         'gens': (4, 100, 100, 60)}),
    # Where the search compute goes (noise, block 0 at 4).
    'noise_g4_200': ('noise, blocks 1-2 at 200', {'search.blur_target': 'noise',
                                                  'gens': (4, 200, 200, 60)}),
    'noise_g4_50': ('noise, blocks 1-2 at 50', {'search.blur_target': 'noise',
                                                'gens': (4, 50, 50, 60)}),
    'noise_g4_25': ('noise, blocks 1-2 at 25', {'search.blur_target': 'noise',
                                                'gens': (4, 25, 25, 60)}),
    'noise_g4_400': ('noise, blocks 1-2 at 400', {'search.blur_target': 'noise',
                                                  'gens': (4, 400, 400, 60)}),
    'noise_g4_100_p48': ('noise_g4_100, population 48 = 8 + 20 + 20',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'search.population': 48, 'search.top_k': 8,
                          'search.n_explore': 20, 'search.n_refine': 20}),
    'noise_g4_100_a02': ('noise_g4_100, alpha 0.2 at blocks 1-2',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'alpha': (0.1, 0.2, 0.2, 0.1)}),
    'noise_g4_100_a03': ('noise_g4_100, alpha 0.3 at blocks 1-2',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'alpha': (0.1, 0.3, 0.3, 0.1)}),
    'noise_g4_100_w32': ('noise_g4_100, search and student width 32',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'width': 32}),
    'noise_g4_100_w64': ('noise_g4_100, search and student width 64',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'width': 64}),
    'noise_g4_100_parents': ('noise_g4_100, refinement parents from the parents only (prose)',
                             {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                              'search.refine_pool': 'parents'}),
    'noise_g4_100_bnbatch': ('noise_g4_100, search-net BatchNorm on population statistics',
                             {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                              'search.bn_mode': 'batch'}),
    # The student (same search as noise_g4_100: these cost a student run each).
    'noise_g4_100_ep24': ('noise_g4_100, student 24 epochs',
                          {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                           'student.train.optim.epochs': 24}),
    'noise_g4_100_lr8': ('noise_g4_100, student lr 8 (decoupled units)',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'student.train.optim.lr': 8.0}),
    'noise_g4_100_mse10': ('noise_g4_100, student MSE coefficient 10',
                           {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                            'student.mse_coef': 10.0}),
    'noise_g4_100_kl003': ('noise_g4_100, student lambda 0.03 (paper)',
                           {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                            'student.kl_weight': 0.03}),
    'noise_g4_100_skip0': ('noise_g4_100, student skips block 0',
                           {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                            'student.variant': 'skip_block0'}),
    'noise_g4_100_msesum': ('noise_g4_100, squared error summed over elements (the formula)',
                            {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                             'student.mse_reduction': 'sum'}),
    'noise_g4_100_mse10_ep24': ('noise_g4_100, student MSE coefficient 10 and 24 epochs',
                                {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                                 'student.mse_coef': 10.0, 'student.train.optim.epochs': 24}),
    'noise_g4_100_a02_mse10': ('noise_g4_100_a02, student MSE coefficient 10',
                               {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                                'alpha': (0.1, 0.2, 0.2, 0.1), 'student.mse_coef': 10.0}),
    'noise_g4_100_a03_mse10': ('noise_g4_100_a03, student MSE coefficient 10',
                               {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                                'alpha': (0.1, 0.3, 0.3, 0.1), 'student.mse_coef': 10.0}),
    'noise_g4_100_a05': ('noise_g4_100, alpha 0.5 at blocks 1-2',
                         {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                          'alpha': (0.1, 0.5, 0.5, 0.1)}),
    'noise_g4_100_blur2': ('noise_g4_100, 2 blur passes at blocks 1-2',
                           {'search.blur_target': 'noise', 'gens': (4, 100, 100, 60),
                            'blur': (5, 2, 2, 0)}),
}

# The CIFAR-10 study starts from the reading the MNIST study found (noise-only blur, generations
# on blocks 1-2, stronger mutations there, MSE weight 10, lambda 1) with the paper's initial
# noise scale, on width-32 networks with 4 convs per block, pinned field by field whatever
# ``cifar10:cpu`` says today.
CIFAR10_BASE = {'search.blur_target': 'noise', 'search.init_noise': 0.1,
                'gens': (4, 100, 100, 60), 'alpha': (0.3, 0.2, 0.2, 0.1), 'blur': (5, 1, 1, 0),
                'width': 32,
                'search.population': 24, 'search.top_k': 4, 'search.n_explore': 10,
                'search.n_refine': 10, 'student.mse_coef': 10.0, 'student.kl_weight': 1.0,
                'student.model.convs_per_block': 4, 'student.train.optim.epochs': 12,
                'student.train.optim.batch_size': 500, 'sgd.train.optim.epochs': 12,
                'sgd.train.optim.batch_size': 500}

# init001_a1: the reading ``cifar10:cpu`` took from this study (alpha 1.0 at blocks 1-2).
INIT001_A1 = {'search.init_noise': 0.01, 'alpha': (0.3, 1.0, 1.0, 0.1)}

CIFAR10_ARMS = {
    'base': ('the MNIST study\'s reading on CIFAR-10', {}),
    # Why do targets not generalise? Leads on what the search puts into them.
    'anchor1': ('fitness + 1.0 x distance from the image\'s own activation (beyond the paper)',
                {'search.operators.fitness': {'name': 'anchored', 'params': {'weight': 1.0}}}),
    'anchor3': ('fitness + 3.0 x distance from the image\'s own activation (beyond the paper)',
                {'search.operators.fitness': {'name': 'anchored', 'params': {'weight': 3.0}}}),
    'alpha01': ('the paper\'s MNIST alpha 0.1 at every layer', {'alpha': (0.1, 0.1, 0.1, 0.1)}),
    'gradient': ('gradient descent control, same evaluations as base',
                 {'search.method': 'gradient'}),
    # The initial population's input noise, 0.1 of each channel's std, passes the whitening
    # stem, which scales high-frequency patch components up by as much as 1/sqrt(5e-4): on
    # CIFAR-10 a noisy copy's block-0 activation keeps a correlation of only 0.35 with the
    # clean image's (MNIST: 0.99).
    'init001': ('initial input noise 0.01 of the channel std', {'search.init_noise': 0.01}),
    'init0': ('no initial input noise: the population starts as the image itself',
              {'search.init_noise': 0.0}),
    'init001_anchor1': ('init001 + anchor1', {
        'search.init_noise': 0.01,
        'search.operators.fitness': {'name': 'anchored', 'params': {'weight': 1.0}}}),
    # The student on init001's targets: its KL head spikes at the peak learning rate.
    'init001_lr2': ('init001, student lr 2 (decoupled units)',
                    {'search.init_noise': 0.01, 'student.train.optim.lr': 2.0}),
    'init001_lr1': ('init001, student lr 1 (decoupled units)',
                    {'search.init_noise': 0.01, 'student.train.optim.lr': 1.0}),
    'init001_ep24': ('init001, student 24 epochs',
                     {'search.init_noise': 0.01, 'student.train.optim.epochs': 24}),
    'init001_a01': ('init001, alpha 0.1 at blocks 1-2',
                    {'search.init_noise': 0.01, 'alpha': (0.3, 0.1, 0.1, 0.1)}),
    # The gap against search compute: init001 with every layer's generations scaled (1/16 to
    # 2 of 4/100/100/60, fitness evaluations per image 17 x 24 to 528 x 24).
    'init001_s1_16': ('init001, generations 1/16: 1/6/6/4', {'search.init_noise': 0.01,
                                                             'gens': (1, 6, 6, 4)}),
    'init001_s1_8': ('init001, generations 1/8: 1/12/12/8', {'search.init_noise': 0.01,
                                                             'gens': (1, 12, 12, 8)}),
    'init001_s1_4': ('init001, generations 1/4: 1/25/25/15', {'search.init_noise': 0.01,
                                                              'gens': (1, 25, 25, 15)}),
    'init001_s1_2': ('init001, generations 1/2: 2/50/50/30', {'search.init_noise': 0.01,
                                                              'gens': (2, 50, 50, 30)}),
    'init001_s2': ('init001, generations x2: 8/200/200/120', {'search.init_noise': 0.01,
                                                              'gens': (8, 200, 200, 120)}),
    # The gap against student compute: init001's search, the student and SGD both trained for
    # 2 to 32 epochs (init001 itself is 12).
    'init001_ep2': ('init001, student and SGD 2 epochs', {'search.init_noise': 0.01,
                                                          'epochs': 2}),
    'init001_ep4': ('init001, student and SGD 4 epochs', {'search.init_noise': 0.01,
                                                          'epochs': 4}),
    'init001_ep32': ('init001, student and SGD 32 epochs', {'search.init_noise': 0.01,
                                                            'epochs': 32}),
    # The rest of the search and the student, one change each on init001.
    'init001_skip0': ('init001, student skips block 0 (Table 2\'s variant)',
                      {'search.init_noise': 0.01, 'student.variant': 'skip_block0'}),
    'init001_gradient': ('init001, gradient descent control, same evaluations',
                         {'search.init_noise': 0.01, 'search.method': 'gradient'}),
    # The gradient control beat SGD on these images (hold-out 63.50% against 59.60%): how much
    # of its compute it needs, and Table 2's variant on its targets.
    'init001_gradient_s1_4': ('init001_gradient at 1/4 of its evaluations: generations '
                              '1/25/25/15', {'search.init_noise': 0.01,
                                             'search.method': 'gradient',
                                             'gens': (1, 25, 25, 15)}),
    'init001_gradient_skip0': ('init001_gradient, student skips block 0',
                               {'search.init_noise': 0.01, 'search.method': 'gradient',
                                'student.variant': 'skip_block0'}),
    'init001_convs6': ('init001, student (and its SGD) 6 convs per block',
                       {'search.init_noise': 0.01, 'student.model.convs_per_block': 6}),
    'init001_mse1': ('init001, student MSE weight 1 (the paper\'s)',
                     {'search.init_noise': 0.01, 'student.mse_coef': 1.0}),
    # The gradient control's targets sit at 0.01 nats at blocks 1-2 (its block-0 solution carried
    # forward) where evolution stops at 0.90 / 0.57, and make the better student: do stronger
    # mutations there get evolution further?
    'init001_a05': ('init001, alpha 0.5 at blocks 1-2', {'search.init_noise': 0.01,
                                                         'alpha': (0.3, 0.5, 0.5, 0.1)}),
    # init001_a05 got blocks 1-2 to 0.39 / 0.22 nats and the student 5.6 points further: how far
    # does the mutation's strength go, and does block 0 (2.21 nats after its 4 generations) move?
    'init001_a1': ('init001, alpha 1.0 at blocks 1-2', INIT001_A1),
    'init001_a2': ('init001, alpha 2.0 at blocks 1-2', {'search.init_noise': 0.01,
                                                       'alpha': (0.3, 2.0, 2.0, 0.1)}),
    # The compute curves again at alpha 1.0, the reading ``cifar10:cpu`` took from init001_a1:
    # its generations scaled 1/16 to 2, and its student and SGD trained 2 to 32 epochs.
    'init001_a1_s1_16': ('init001_a1, generations 1/16: 1/6/6/4',
                         {**INIT001_A1, 'gens': (1, 6, 6, 4)}),
    'init001_a1_s1_8': ('init001_a1, generations 1/8: 1/12/12/8',
                        {**INIT001_A1, 'gens': (1, 12, 12, 8)}),
    'init001_a1_s1_4': ('init001_a1, generations 1/4: 1/25/25/15',
                        {**INIT001_A1, 'gens': (1, 25, 25, 15)}),
    'init001_a1_s1_2': ('init001_a1, generations 1/2: 2/50/50/30',
                        {**INIT001_A1, 'gens': (2, 50, 50, 30)}),
    'init001_a1_s2': ('init001_a1, generations x2: 8/200/200/120',
                      {**INIT001_A1, 'gens': (8, 200, 200, 120)}),
    'init001_a1_ep2': ('init001_a1, student and SGD 2 epochs',
                       {**INIT001_A1, 'epochs': 2}),
    'init001_a1_ep4': ('init001_a1, student and SGD 4 epochs',
                       {**INIT001_A1, 'epochs': 4}),
    'init001_a1_ep32': ('init001_a1, student and SGD 32 epochs',
                        {**INIT001_A1, 'epochs': 32}),
    # On the whole split at alpha 1.0 the student that skips block 0 is 2.94 points above the one
    # that learns every layer: block 0's targets, which 4 generations leave at 2.2 nats, are
    # what the all-layers student loses on. Block 0's search, one change each.
    'init001_a1_skip0': ('init001_a1, student skips block 0', {**INIT001_A1,
                                                               'student.variant': 'skip_block0'}),
    'init001_a1_b0g16': ('init001_a1, 16 generations at block 0: 16/100/100/60',
                         {**INIT001_A1, 'gens': (16, 100, 100, 60)}),
    'init001_a1_b0a1': ('init001_a1, alpha 1.0 at block 0 too', {**INIT001_A1,
                                                                 'alpha': (1.0, 1.0, 1.0, 0.1)}),
    'init001_a1_b0blur1': ('init001_a1, 1 blur pass at block 0 (not 5)',
                           {**INIT001_A1, 'blur': (1, 1, 1, 0)}),
    # What a network whose block 0 stays random features reaches: init001_a1's student beside an
    # SGD run that never trains block 0.
    'init001_a1_sgd_frozen0': ('init001_a1; its SGD keeps block 0 at its untrained weights (a '
                               'control beyond the paper)',
                               {**INIT001_A1, 'sgd.frozen_blocks': (0,)}),
    'init001_a05_b0a1': ('init001_a05, alpha 1.0 at block 0', {'search.init_noise': 0.01,
                                                               'alpha': (1.0, 0.5, 0.5, 0.1)}),
    'init001_blur2': ('init001, 2 blur passes at blocks 1-2', {'search.init_noise': 0.01,
                                                               'blur': (5, 2, 2, 0)}),
    'init001_refine_parents': ('init001, refinement parents from the parents only (prose)',
                               {'search.init_noise': 0.01, 'search.refine_pool': 'parents'}),
    'init001_p48': ('init001, population 48 = 8 + 20 + 20',
                    {'search.init_noise': 0.01, 'search.population': 48, 'search.top_k': 8,
                     'search.n_explore': 20, 'search.n_refine': 20}),
    'init001_w64': ('init001, search and student width 64',
                    {'search.init_noise': 0.01, 'width': 64}),
    # Targets that keep what searches of an image agree on: the mean of 4 searches of each image
    # in one network, at 4 times init001's search compute (twice init001_s2's).
    'init001_mean4': ('init001, targets the mean of 4 searches in one network (beyond the '
                      'paper)', {'search.init_noise': 0.01, 'search.average_of': 4}),
    'init001_a1_mean4': ('init001_a1, targets the mean of 4 searches in one network (beyond '
                         'the paper)', {**INIT001_A1, 'search.average_of': 4}),
}


def search_evaluations(exp: cfglib.ExperimentConfig) -> float:
  """Fitness evaluations per image of ``exp``'s search: population x generations, summed
  over its layers, times the searches averaged per image (``search.average_of``)."""
  return float(exp.search.average_of * exp.search.population *
               sum(l.generations for l in exp.search.layers.values()))


def student_epochs(exp: cfglib.ExperimentConfig) -> float:
  """The student's epochs over its training images."""
  return float(exp.student.train.optim.epochs)


EVALUATIONS = 'fitness evaluations per image'


class Curve(NamedTuple):
  """Arms that differ only in one kind of compute, for the gap to SGD against it.

  Attributes:
    kind: ``'search'`` (the gap to the width's SGD reference; seconds are the search's) or
      ``'student'`` (arms that give the student and SGD the same epochs, each with its own SGD
      run; the gap is to the best SGD hold-out among them, the baseline a reader would pick;
      seconds are the student's).
    arms: the arm names.
    compute: an arm's compute from its experiment config (e.g. :func:`search_evaluations`).
    unit: what ``compute`` counts, for the paragraph and the figure's axis.
    reading: what the arms share beyond the study's base (e.g. ``'alpha 1.0'``), for a study
      with several curves of one kind; it goes into the curve's title and figure name.
  """
  kind: str
  arms: tuple[str, ...]
  compute: Callable[[cfglib.ExperimentConfig], float]
  unit: str
  reading: str = ''

  @property
  def title(self) -> str:
    """How the curve's paragraph begins, one line per curve in the study section."""
    return f'Gap against {self.kind} compute' + (f', {self.reading}' if self.reading else '')


class Study(NamedTuple):
  """One data set's study.

  Attributes:
    dataset: its ``configs/<dataset>.py`` and ``DataConfig.name``.
    label: how tables name the data.
    base: the pinned reading every arm starts from (overrides, as an arm's).
    arms: name -> (what it tests, overrides on top of ``base``).
    curves: the study's gap-against-compute curves.
    train_images, holdout: the subset's default sizes.
    search_holdout: also search the hold-out images, for R^2 on images the student never saw
      and for the targets' own diagnostics.
    marker: the study's section markers in BENCHMARKS.md are ``<!-- {marker}:begin -->`` and
      ``<!-- {marker}:end -->``.
  """
  dataset: str
  label: str
  base: dict
  arms: dict
  curves: tuple[Curve, ...]
  train_images: int
  holdout: int
  search_holdout: bool
  marker: str

  @property
  def begin(self) -> str:
    return f'<!-- {self.marker}:begin -->'

  @property
  def end(self) -> str:
    return f'<!-- {self.marker}:end -->'


STUDIES = {
    'mnist': Study('mnist', 'MNIST', MNIST_BASE, MNIST_ARMS, (
        Curve('search', ('noise_g4_25', 'noise_g4_50', 'noise_g4_100', 'noise_g4_200',
                         'noise_g4_400'), search_evaluations, EVALUATIONS),), 5000, 1000, False,
                   'gap_study'),
    'cifar10': Study('cifar10', 'CIFAR-10', CIFAR10_BASE, CIFAR10_ARMS, (
        Curve('search', ('init001_s1_16', 'init001_s1_8', 'init001_s1_4', 'init001_s1_2',
                         'init001', 'init001_s2'), search_evaluations, EVALUATIONS, 'alpha 0.2'),
        Curve('student', ('init001_ep2', 'init001_ep4', 'init001', 'init001_ep32'),
              student_epochs, 'student epochs', 'alpha 0.2'),
        Curve('search', ('init001_a1_s1_16', 'init001_a1_s1_8', 'init001_a1_s1_4',
                         'init001_a1_s1_2', 'init001_a1', 'init001_a1_s2'), search_evaluations,
              EVALUATIONS, 'alpha 1.0'),
        Curve('student', ('init001_a1_ep2', 'init001_a1_ep4', 'init001_a1', 'init001_a1_ep32'),
              student_epochs, 'student epochs', 'alpha 1.0')),
        10000, 1000, True, 'gap_study:cifar10'),
}


def load_base(study: Study, train_images: int, holdout: int, data_dir: str | None = None,
              data_source: str | None = None) -> dict:
  """``configs/<dataset>.py:cpu`` as a ConfigDict, cut to the study's subset; its data read
  from ``data_dir`` (default ``data/<dataset>``) with ``data_source`` (default the config's)."""
  c = config_files.load(f'{REPO / "configs" / study.dataset}.py:cpu')
  c.data.dir = data_dir or str(REPO / 'data' / study.dataset)
  if data_source:
    c.data.source = data_source
  c.data.train_limit, c.data.holdout, c.data.test_limit = train_images, holdout, 0
  return c


def arm_config(study: Study, base, overrides: dict) -> cfglib.ExperimentConfig:
  """The experiment of one arm: ``base`` (a ConfigDict) with the study's pinned reading and
  then ``overrides`` applied."""
  c = base.copy_and_resolve_references()
  for key, value in {**study.base, **overrides}.items():
    if key in ('gens', 'alpha', 'blur'):
      field = 'generations' if key == 'gens' else key
      for layer, v in zip(c.search.layers.values(), value, strict=True):
        layer[field] = v
    elif key == 'width':
      c.search.model.widths = c.student.model.widths = (value,) * 3
    elif key == 'epochs':
      c.student.train.optim.epochs = c.sgd.train.optim.epochs = value
    else:
      *path, leaf = key.split('.')
      node = c
      for part in path:
        node = node[part]
      node[leaf] = value
  return cfglib.from_dict(cfglib.ExperimentConfig, c)


def student_row(study: Study, exp: cfglib.ExperimentConfig, ds: datalib.Dataset,
                workdir: pathlib.Path) -> dict:
  """Search (cached) + student of one arm, and the numbers of its row."""
  targets = driver.cached_search(exp.data, exp.search, ds, workdir / 'searches')
  holdout = (driver.cached_search(exp.data, exp.search, ds, workdir / 'searches', 'holdout')
             if study.search_holdout else None)
  summary = runlog.read_json(targets / 'summary.json')
  run = workdir / 'students' / identity.hash_of(
      identity.student(exp.data, ds, exp.search, exp.student, store_ids.UNTRAINED))
  results = student.train_student(exp.data, exp.search, exp.student, run, targets,
                                  holdout_targets=holdout, ds=ds)
  d = results['diagnostics']
  row = {
      'search_seconds': summary['seconds_this_run'],
      'mean_best_loss': list(summary['mean_best_loss'].values()),
      'r2_train': d['r2_train'],
      'linear_probe': d['linear_probe_test_accuracy'],
      'head': d['head_test_accuracy'],
      'holdout_accuracy': results['holdout_accuracy'],
      'test_accuracy': results['test_accuracy'],
      'student_seconds': results['train_seconds'],
  }
  if 'mean_target_loss' in summary:  # targets the mean of several searches per image
    row['mean_target_loss'] = list(summary['mean_target_loss'].values())
  if holdout is not None:
    model, variables = models.init_for_dataset(exp.search.model, ds,
                                                exp.search.untrained_network_seed)
    row['r2_holdout'] = d['r2_holdout']
    store_id = lambda split: store_ids.StoreId(exp.data, exp.search, ds, split)
    row['targets'] = diagnostics.target_diagnostics(
        model, variables, ds, store_ids.open_finished(targets, store_id('train')),
        store_ids.open_finished(holdout, store_id('holdout')),
        batch_size=exp.student.train.eval_batch)
  return row


def sgd_row(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, workdir: pathlib.Path) -> dict:
  """SGD with the student's network under ``exp.sgd`` (cached by its run config)."""
  sgd_cfg = sgd.with_network(exp.sgd, exp.student.model)
  run = workdir / 'sgd' / identity.hash_of(identity.sgd(exp.data, ds, sgd_cfg))
  results = sgd.train_sgd(exp.data, sgd_cfg, run, ds=ds)
  return {'sgd_holdout_accuracy': results['holdout_accuracy'],
          'sgd_test_accuracy': results['test_accuracy'],
          'sgd_seconds': results['train_seconds']}


def reference_row(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, workdir: pathlib.Path
                  ) -> dict:
  """The random-feature floor and SGD with the student's network, at ``exp``'s width."""
  model, variables = models.init_for_dataset(exp.search.model, ds,
                                              exp.search.untrained_network_seed)
  floor = diagnostics.random_feature_floor(
      model, variables, ds, batch_size=1000,
      max_images=max(len(ds.train_images), len(ds.test_images)))
  return {'random_feature_floor': floor, **sgd_row(exp, ds, workdir)}


def _power_fit(x: np.ndarray, gap: np.ndarray, seconds: np.ndarray) -> dict | None:
  """gap = coef * x**slope by least squares in log-log (None below 3 points or if a gap is
  not positive), with the x, and the seconds (proportional to x, fitted by least squares), at
  which the gap would fall to 1 and to 0.5 points."""
  if len(x) < 3 or not (gap > 0).all():
    return None
  slope, log_coef = np.polyfit(np.log(x), np.log(gap), 1)
  # Through the origin: rows timed at different loads can make a free line's slope negative.
  per_x = float(x @ seconds / (x @ x))
  fit = {'coef': float(np.exp(log_coef)), 'slope': float(slope)}
  for points in (1.0, 0.5):
    at = float(np.exp((np.log(points) - log_coef) / slope)) if slope < 0 else None
    fit[f'x_for_{points}_point'] = at
    fit[f'seconds_for_{points}_point'] = None if at is None else per_x * at
  return fit


def compute_curve(study: Study, curve: Curve, rows: dict, refs: dict, base) -> dict | None:
  """The hold-out gap to SGD along one of the study's curves, for the arms this workdir holds,
  and its power-law fit (:func:`_power_fit`).

  Args:
    study, curve: the study and one of its :attr:`Study.curves`.
    rows: arm name -> row; a student curve's rows carry their own SGD (``'sgd'``).
    refs: width -> reference row.
    base: the study's base ConfigDict (:func:`load_base`), to compute each arm's compute.

  Returns:
    None below 2 points or without the width's reference; otherwise the numbers of
    :func:`decouple_jax.analysis.plots.plot_gap_vs_compute` (accuracies in %).
  """
  names = [n for n in curve.arms if n in rows]
  if len(names) < 2:
    return None
  width = rows[names[0]]['overrides'].get('width', study.base.get('width', 16))
  if width not in refs:
    return None
  x = np.array([curve.compute(arm_config(study, base, rows[n]['overrides'])) for n in names])
  order = np.argsort(x)
  names, x = [names[i] for i in order], x[order]
  holdout = np.array([100 * rows[n]['holdout_accuracy'] for n in names])
  sgd_each = [100 * rows[n].get('sgd', refs[width])['sgd_holdout_accuracy'] for n in names]
  sgd = max(sgd_each) if curve.kind == 'student' else 100 * refs[width]['sgd_holdout_accuracy']
  seconds = np.array([rows[n][f'{curve.kind}_seconds'] for n in names])
  return {'kind': curve.kind, 'title': curve.title, 'reading': curve.reading, 'arms': names,
          'compute': x.tolist(), 'unit': curve.unit, 'seconds': seconds.tolist(),
          'holdout_accuracy': holdout.tolist(),
          'test_accuracy': [100 * rows[n]['test_accuracy'] for n in names],
          'sgd_each_holdout_accuracy': sgd_each, 'sgd_holdout_accuracy': sgd, 'width': width,
          'fit': _power_fit(x, sgd - holdout, seconds),
          # The trend of the 3 largest computes alone: a curve that flattens makes the fit over
          # every point promise too much.
          'fit_upper': (_power_fit(x[-3:], (sgd - holdout)[-3:], seconds[-3:])
                        if len(x) > 3 else None)}


def curve_figure(study: Study, curve: dict) -> str:
  """The figure's file name under ``results/``: ``<dataset>_gap_vs_<kind>_compute[_<reading>]``
  (e.g. ``cifar10_gap_vs_search_compute_alpha_1_0.png``)."""
  reading = re.sub(r'\W+', '_', curve['reading']).strip('_')
  return f'{study.dataset}_gap_vs_{curve["kind"]}_compute{"_" * bool(reading)}{reading}.png'


def describe_curve(study: Study, curve: dict) -> str:
  """One paragraph of the study section: the points and fitted trend of
  :func:`compute_curve`."""
  gaps = curve['sgd_holdout_accuracy'] - np.array(curve['holdout_accuracy'])
  if curve['kind'] == 'student':
    points = ', '.join(f'{x:g}: student {h:.2f}, SGD {s:.2f}, gap {g:.2f}' for x, h, s, g in zip(
        curve['compute'], curve['holdout_accuracy'], curve['sgd_each_holdout_accuracy'], gaps))
    against = (f'gap to the best SGD hold-out among them, {curve["sgd_holdout_accuracy"]:.2f}%; '
               'each point\'s SGD trained for the same epochs')
  else:
    points = ', '.join(f'{x:,.0f}: {g:.2f}' for x, g in zip(curve['compute'], gaps))
    against = f'hold-out points below SGD\'s {curve["sgd_holdout_accuracy"]:.2f}%'
  text = (f'{curve["title"]} (arms {", ".join(curve["arms"])}; width '
          f'{curve["width"]}; {curve["unit"]}: {against}): {points}.')
  if curve['fit'] is None:
    return text + ' Too few points with a positive gap for a fit.'
  for fit, which in ((curve['fit'], 'every point'),
                     (curve.get('fit_upper'), 'the 3 largest computes alone')):
    if fit is None:
      continue
    text += (f' Least-squares fit in log-log over {which}: gap = {fit["coef"]:.3g} * '
             f'x^{fit["slope"]:.3f} (x = {curve["unit"]})')
    for points in (1.0, 0.5):
      at = fit[f'x_for_{points}_point']
      text += (f'; the gap does not shrink with {curve["kind"]} compute' if at is None else
               f'; {points} point at x ~ {at:,.0f} '
               f'(~{fit[f"seconds_for_{points}_point"]:,.0f} s of {curve["kind"]} for these '
               'images, extrapolated)')
    text += '.'
  return text + f' Figure: `results/{curve_figure(study, curve)}`.'


def _f(values, digits=2) -> str:
  return ' / '.join(f'{v:.{digits}f}' for v in values)


def _arm_cells(study: Study, row: dict) -> list[str]:
  """The cells of one arm's line; a study that searches its hold-out has four more."""
  what = row['what']
  if 'sgd' in row:  # an arm with its own SGD (see main)
    what += (f' (its SGD: hold-out {100 * row["sgd"]["sgd_holdout_accuracy"]:.2f}, test '
             f'{100 * row["sgd"]["sgd_test_accuracy"]:.2f})')
  loss = _f(row['mean_best_loss'])
  if 'mean_target_loss' in row:
    loss += f' (the mean target: {_f(row["mean_target_loss"])})'
  cells = [what, f'{row["search_seconds"]:.0f}', loss, _f(row['r2_train'])]
  if study.search_holdout:
    t = row['targets']
    share = t.get('class_fraction')  # rows measured before it was added lack it
    cells += [_f(row['r2_holdout']), _f(t['cos_to_activation']),
              _f(share['target']) if share else '-',
              f'{100 * t["target_probe"][-1]:.1f} / {100 * t["activation_probe"][-1]:.1f}']
  return cells + [f'{100 * row["linear_probe"]:.1f}', f'{100 * row["head"]:.1f}',
                  f'{100 * row["holdout_accuracy"]:.2f}', f'{100 * row["test_accuracy"]:.2f}',
                  row['load']]


def format_table(study: Study, rows: dict, refs: dict, recorded: str = '') -> str:
  """The study's Markdown table (accuracies in %), arms in the order of :attr:`Study.arms`.

  ``rows`` (arm name -> row) and ``refs`` (width -> reference row) are the rows this workdir
  holds. ``recorded`` is the study section as last written: its line for an arm or width that
  ``rows``/``refs`` lack is kept as it stands, so a study resumed on a fresh machine (whose
  workdir has none of the earlier rows) adds its rows to the table instead of replacing it.
  An arm's name stands for its definition: an arm whose overrides change gets a new name.
  """
  arm_lines = {m[1]: m[0] for m in re.finditer(r'^\| `([^`]+)` \|.*$', recorded, re.M)}
  ref_lines = {int(m[1]): m[0] for m in re.finditer(r'^\| (\d+) \|.*$', recorded, re.M)}
  for name, row in rows.items():
    arm_lines[name] = f'| `{name}` | {" | ".join(_arm_cells(study, row))} |'
  for width, ref in refs.items():
    ref_lines[width] = (
        f'| {width} | {100 * ref["random_feature_floor"]:.1f} | '
        f'{100 * ref["sgd_holdout_accuracy"]:.2f} | {100 * ref["sgd_test_accuracy"]:.2f} |')
  header = ['arm', 'what', 'search s', 'mean best CE 0/1/2/logits', 'R^2 blocks 0/1/2']
  if study.search_holdout:
    header += ['R^2 hold-out 0/1/2', 'target cos to image 0/1/2',
               'class share of target variance 0/1/2', 'block-2 probe: targets / image']
  header += ['probe', 'head', 'hold-out', 'test', 'load']
  lines = [f'| {" | ".join(header)} |', '|---' * len(header) + '|']
  lines += [arm_lines[name] for name in study.arms if name in arm_lines]
  lines += ['', '| width | random-feature floor (untrained block-2 probe) | '
            'SGD, student\'s network: hold-out | test |', '|---|---|---|---|']
  lines += [ref_lines[width] for width in sorted(ref_lines)]
  return '\n'.join(lines)


def _split(study: Study, path: pathlib.Path) -> list[str]:
  """``path``'s text as [before the study section, the section, after it]."""
  text = path.read_text()
  if study.begin not in text or study.end not in text:
    raise SystemExit(f'{path} has no {study.begin} ... {study.end} section to write the study '
                     'into')
  head, rest = text.split(study.begin, 1)
  return [head, *rest.split(study.end, 1)]


def read_section(study: Study, path: pathlib.Path) -> str:
  """The text between the study's markers in ``path``."""
  return _split(study, path)[1]


def write_section(study: Study, path: pathlib.Path, body: str) -> None:
  """Replaces the text between the study's markers in ``path`` with ``body``."""
  head, _, tail = _split(study, path)
  path.write_text(f'{head}{study.begin}\n{body}\n{study.end}{tail}')


def _load() -> str:
  return '/'.join(f'{x:.1f}' for x in os.getloadavg())


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--dataset', default='mnist', choices=sorted(STUDIES))
  parser.add_argument('--workdir', default='runs/gap_study')
  parser.add_argument('--arms', default='all', help="comma-separated names, or 'all'")
  parser.add_argument('--train_images', type=int, default=None,
                      help='default: the study\'s (MNIST 5,000, CIFAR-10 10,000)')
  parser.add_argument('--holdout', type=int, default=None, help='default: the study\'s (1,000)')
  parser.add_argument('--data_dir', default=None, help='default: data/<dataset>')
  parser.add_argument('--data_source', default=None,
                      help="the config's data.source (e.g. 'folder' for an image folder)")
  parser.add_argument('--benchmarks_md', default=str(REPO / 'BENCHMARKS.md'),
                      help="where finished rows are recorded ('' to skip)")
  parser.add_argument('--figures', default=str(REPO / 'results'),
                      help="where the gap-against-compute figures go ('' to skip)")
  parser.add_argument('--list', action='store_true', help='print the arms and exit')
  args = parser.parse_args(argv)
  study = STUDIES[args.dataset]
  if args.list:
    for name, (what, overrides) in study.arms.items():
      print(f'{name:24s} {what}: {overrides}')
    return
  names = list(study.arms) if args.arms == 'all' else args.arms.split(',')
  unknown = [n for n in names if n not in study.arms]
  if unknown:
    raise SystemExit(f'unknown arm(s) {unknown}; --list shows the arms')
  train_images = args.train_images or study.train_images
  holdout = args.holdout or study.holdout
  workdir = pathlib.Path(args.workdir)
  base = load_base(study, train_images, holdout, args.data_dir, args.data_source)
  ds = datalib.load_dataset(cfglib.from_dict(cfglib.ExperimentConfig, base).data)
  rows_dir = workdir / 'rows'
  base_exp = arm_config(study, base, {})
  base_sgd = sgd.with_network(base_exp.sgd, base_exp.student.model)
  for name in names:
    path = rows_dir / f'{name}.json'
    what, overrides = study.arms[name]
    exp = arm_config(study, base, overrides)
    width = exp.search.model.widths[0]
    ref_path = rows_dir / f'reference_width{width}.json'
    if not ref_path.exists():
      runlog.write_json(ref_path, {**reference_row(exp, ds, workdir), 'load': _load()})
    arm_hash = identity.hash_of(
        [identity.of(c) for c in (exp.data, exp.search, exp.student)])
    if path.exists() and runlog.read_json(path).get('config_hash', arm_hash) != arm_hash:
      # The arm's definition (or the study's base) changed since its row was measured. Rows
      # from before rows carried a hash were measured on the MNIST base and are kept.
      print(f'{name}: its row was measured with another config; measuring it again', flush=True)
      path.unlink()
    if not path.exists():
      t0 = time.perf_counter()
      row = student_row(study, exp, ds, workdir)
      if sgd.with_network(exp.sgd, exp.student.model) != base_sgd:
        # The arm changes SGD too (its epochs or the student's network): its own SGD.
        row['sgd'] = sgd_row(exp, ds, workdir)
      runlog.write_json(path, {**row, 'what': what, 'overrides': overrides,
                               'config_hash': arm_hash, 'load': _load(),
                               'arm_seconds': time.perf_counter() - t0,
                               'finished': datetime.datetime.now(datetime.timezone.utc)
                               .strftime('%Y-%m-%d %H:%M UTC')})
    rows = {n: runlog.read_json(rows_dir / f'{n}.json') for n in study.arms
            if (rows_dir / f'{n}.json').exists()}
    refs = {int(re.search(r'\d+', p.stem).group()): runlog.read_json(p)
            for p in rows_dir.glob('reference_width*.json')}
    md = pathlib.Path(args.benchmarks_md) if args.benchmarks_md else None
    section = read_section(study, md) if md else ''
    table = format_table(study, rows, refs, section)
    for spec in study.curves:
      curve = compute_curve(study, spec, rows, refs, base)
      recorded = re.search(rf'^{re.escape(spec.title)} \(.*$', section, re.M)
      if curve is None and recorded:  # measured in an earlier workdir: kept, like its rows
        table += f'\n\n{recorded[0]}'
      elif curve is not None:
        table += f'\n\n{describe_curve(study, curve)}'
        if args.figures:
          plots.plot_gap_vs_compute(curve, pathlib.Path(args.figures) / curve_figure(study, curve),
                                    plots.describe(f'{study.label}, {train_images:,} training '
                                                   'images', f'{study.dataset}:cpu (gap study)',
                                                   'scaled down'))
    print(f'\n{table}\n', flush=True)
    if md:
      data_flags = ''.join(f' --{k}={v}' for k, v in (('data_source', args.data_source),
                                                       ('data_dir', args.data_dir)) if v)
      header = (f'Command: `.venv/bin/python benchmarks/gap_study.py --dataset={study.dataset} '
                f'--workdir={args.workdir}{data_flags}`; {train_images} training / {holdout} '
                f'hold-out {study.label} images ({ds.fingerprint}), full test set; machine '
                f'{platform.node()} ({os.cpu_count()} cores), jax {jax.__version__}; table '
                f'written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. '
                f'**Scaled down** (`{study.dataset}:cpu` otherwise). "load" is the 1/5/15-minute '
                'load average when the arm finished (2 cores: about 2 is the study alone, as '
                'its search keeps both busy; more means other jobs shared them).')
      write_section(study, md, f'{header}\n\n{table}')


if __name__ == '__main__':
  main(sys.argv[1:])
