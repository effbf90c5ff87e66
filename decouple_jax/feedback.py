"""Search and learning in a loop: search again in the trained student (the paper's open question 1).

The paper ends on "networks learn searched representations, then trained networks inform the
next search iteration". :func:`run_feedback` does that, in ``workdir``:

  sgd/                  SGD with the student's network, end to end (the reference)
  round1/targets        the paper's search, in the untrained network
  round1/student        a student trained on them
  round{r}/targets      every training image searched again in round r-1's student: its taps
                        are the search space, its own head the fitness, its BatchNorm in
                        inference form with statistics per ``feedback.bn_stats``
  round{r}/student      round r's student, warm-started from round r-1's weights or fresh
                        (``feedback.warm_start``)

What a round searches is what the next student regresses onto: the student's taps (with
``tap='pre_gelu'``, its last BatchNorm output times the tap scale; the search restarts the
network from them through :meth:`~decouple_jax.models.AirbenchNet.tap_output`). Labels still
reach the body only through searched targets: every round's student has the same
``stop_gradient`` head and the same loss.

Every round resumes after a kill (stores by chunk, students by checkpoint); a finished round
(``round{r}/round.json``) is read, not redone. ``results.json`` holds every round's numbers and
``feedback.png`` draws them against SGD.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

import flax.serialization
import jax

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import identity
from decouple_jax import models
from decouple_jax import report
from decouple_jax import runlog
from decouple_jax.mesh import mesh_1d
from decouple_jax.analysis import plots
from decouple_jax.learn import bn_stats
from decouple_jax.learn import sgd
from decouple_jax.learn import student
from decouple_jax.search import driver
from decouple_jax.search import sharding
from decouple_jax.search import store_ids

_VARIABLES = 'student_variables.msgpack'


def round_dir(workdir: str | pathlib.Path, r: int) -> pathlib.Path:
  """Round ``r``'s directory (rounds count from 1)."""
  return pathlib.Path(workdir) / f'round{r}'


def round_search_config(exp: cfglib.ExperimentConfig, r: int) -> cfglib.SearchConfig:
  """The search of round ``r``: ``exp.search``, with ``feedback.layers`` from round 2 on."""
  if r == 1 or not exp.feedback.layers:
    return exp.search
  return dataclasses.replace(exp.search, layers=exp.feedback.layers)


def search_network(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, variables):
  """(model, variables) of a trained student as the network the next round searches in, its
  BatchNorm statistics per ``feedback.bn_stats``, its epsilon ``feedback.bn_eps``."""
  model = models.build(dataclasses.replace(exp.student.model, bn_eps=exp.feedback.bn_eps),
                       ds.num_classes, ds.image_shape[-1])
  if exp.feedback.bn_stats == 'recompute':
    variables = bn_stats.population_batch_stats(
        model, variables, ds.train_images, ds.mean, ds.std, exp.student.train.eval_batch)
  return model, variables


def _write_variables(path: pathlib.Path, variables) -> None:
  tmp = path.with_suffix('.tmp')
  tmp.write_bytes(flax.serialization.to_bytes(variables))
  os.replace(tmp, path)


def _student_template(exp: cfglib.ExperimentConfig, ds: datalib.Dataset):
  return models.init_for_dataset(exp.student.model, ds, exp.student.train.seed,
                                 detach_head=True)[1]


def run_round(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, workdir: str | pathlib.Path,
              r: int, previous=None, *, meshes: dict | None = None) -> dict:
  """Round ``r``: search (in the untrained network for r = 1, else in the student whose
  selected variables are ``previous``), then train round r's student; resumable. ``meshes``
  may give the 'search' and 'train' meshes (default: every device).

  Returns the round's record (also ``round{r}/round.json``): test and hold-out accuracy of
  the hold-out-selected student, the search's mean initial and best loss per layer, the
  student's diagnostics (R^2 per block, linear probe, head accuracy, p_hat accuracy), and the
  seconds spent searching (chunk times summed over every invocation) and training.
  """
  rdir = round_dir(workdir, r)
  search_cfg = round_search_config(exp, r)
  network = None if r == 1 else search_network(exp, ds, previous)
  network_id = store_ids.UNTRAINED if network is None else cfglib.hash_tree(network[1])
  targets = store_ids.store_dir(rdir)
  meshes = meshes or {}
  driver.run_search(exp.data, search_cfg, targets, ds=ds, network=network,
                    mesh=meshes.get('search'))
  summary = runlog.read_json(targets / 'summary.json')
  warm = r > 1 and exp.feedback.warm_start
  results = student.train_student(exp.data, search_cfg, exp.student, rdir / 'student', targets,
                                  ds=ds, mesh=meshes.get('train'), network_id=network_id,
                                  init_variables=previous if warm else None)
  _write_variables(rdir / _VARIABLES, results['variables'])
  d = results['diagnostics']
  record = identity.record(
      identity.feedback_round(exp, ds, r),
      round=r, network=network_id, start='warm' if warm else 'fresh',
      test_accuracy=results['test_accuracy'],
      holdout_accuracy=results['holdout_accuracy'],
      best_epoch=results['best_epoch'],
      mean_init_loss=summary['mean_init_loss'],
      mean_best_loss=summary['mean_best_loss'],
      r2_train=d['r2_train'], linear_probe=d['linear_probe_test_accuracy'],
      head=d['head_test_accuracy'], phat_accuracy=d['phat_accuracy'],
      search_seconds=sum(c['seconds'] for c in
                         runlog.JsonLines(targets / 'search_log.jsonl').records()),
      train_seconds=results['train_seconds'])
  runlog.write_json(rdir / 'round.json', record)
  return record


def _finished_round(exp: cfglib.ExperimentConfig, ds: datalib.Dataset,
                    workdir: str | pathlib.Path, r: int):
  """(record, selected student variables) of round ``r`` if it finished, else None."""
  rdir = round_dir(workdir, r)
  record = identity.finished(rdir / 'round.json', identity.feedback_round(exp, ds, r),
                             fix=f'Use a new --workdir, or delete {rdir} and the rounds after it.')
  if record is None:
    return None
  variables = flax.serialization.from_bytes(_student_template(exp, ds),
                                            (rdir / _VARIABLES).read_bytes())
  return record, variables


def run_feedback(exp: cfglib.ExperimentConfig, workdir: str | pathlib.Path, *,
                 devices: Sequence[jax.Device] | None = None) -> dict:
  """``exp.feedback.rounds`` rounds of search and learning, and SGD with the same network.

  Args:
    exp: the experiment: its search is round 1's, its student every round's,
      ``exp.feedback`` the loop (see :class:`~decouple_jax.config.FeedbackConfig`).
    workdir: the layout of the module docstring; resumed if it exists.
    devices: what every phase runs on (searches on a mesh with axis 'images', training on one
      with axis 'batch'); default all.

  Returns:
    The dict also written to ``workdir/results.json``: 'student' (which student every round
    trains, as a report names it), 'rounds' (each round's record, see :func:`run_round`),
    'sgd' (test and hold-out accuracy, training seconds), the config.
  """
  workdir = pathlib.Path(workdir)
  devices = list(devices) if devices is not None else jax.devices()
  meshes = {'search': sharding.make_mesh(devices), 'train': mesh_1d('batch', devices)}
  ds = datalib.load_dataset(exp.data)
  sgd_result = sgd.train_sgd(exp.data, sgd.with_network(exp.sgd, exp.student.model),
                             workdir / 'sgd', ds=ds, mesh=meshes['train'])
  rounds, previous = [], None
  for r in range(1, exp.feedback.rounds + 1):
    finished = _finished_round(exp, ds, workdir, r)
    if finished is None:
      rounds.append(run_round(exp, ds, workdir, r, previous, meshes=meshes))
      finished = _finished_round(exp, ds, workdir, r)
    else:
      rounds.append(finished[0])
    previous = finished[1]
  config = cfglib.to_dict(exp)
  results = {
      'name': exp.name, 'scale': exp.scale, 'train_images': len(ds.train_images),
      'student': report.run_method_name(exp.student.variant, config),
      'rounds': rounds,
      'sgd': {k: sgd_result[k] for k in ('test_accuracy', 'holdout_accuracy', 'train_seconds')},
      'config': config,
  }
  runlog.write_json(workdir / 'results.json', results)
  plots.plot_feedback(results, workdir / 'feedback.png',
                      plots.describe(ds.name, exp.name, exp.scale))
  return results
