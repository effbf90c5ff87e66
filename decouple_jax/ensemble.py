"""Ensembles of search-based students and of SGD models: do diverse searches give diverse models?

The paper's motivation is that search, unlike gradient descent, can find many solutions, and
it closes on "more research is needed on how diverse representations translate to diverse model
solutions". :func:`run_ensemble` measures it (docs/method.md section 10). Each family of
``exp.ensemble.families`` has K = ``exp.ensemble.members`` members
(:class:`~decouple_jax.config.EnsembleConfig` says which seeds each varies): students on K
searches with one student seed, on K searches in one network with one student seed, on K
searches with K student seeds, K student seeds on one search, and K SGD runs of the student's
network (a deep ensemble). A member is a :class:`Member`: a search seed, the seed of the
untrained network searched in, and a training seed; members shared by families (the first of
each search family is the same student) are trained once. A search seed s also picks its
network (``search.network_seed`` None: the network of seed s), so the members of 'searches'
differ by their search and by the random network their targets come from; those of
'searches_one_network' are searched in one network, as the paper's many solutions are.

In ``workdir``:

  searches/<id>/targets          the searches, cached by id (:func:`driver.cached_search`)
  members/<name>/run             a member's training run (checkpoints, metrics, results)
  members/<name>/outputs.npz     its test-set softmax and block outputs, once it finished
  members/<name>/member.json     its record, written last: a member with one is finished
  results.json, table.md         every number, and the table (labelled with the config's scale)
  ensemble.png (+ .json)         ensemble accuracy against k; disagreement against accuracy

Resumption: a finished member is read, not rerun; an unfinished one resumes its search by
chunk and its training by checkpoint, and its outputs are computed from the same selected
weights, so a killed run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

import jax
import numpy as np

from decouple_jax import config as cfglib
from decouple_jax import data as datalib
from decouple_jax import identity
from decouple_jax import locks
from decouple_jax import models
from decouple_jax import report
from decouple_jax import runlog
from decouple_jax.analysis import ensembles
from decouple_jax.analysis import plots
from decouple_jax.analysis import scaling
from decouple_jax.learn import sgd
from decouple_jax.learn import student
from decouple_jax.mesh import mesh_1d
from decouple_jax.models import airbench
from decouple_jax.search import driver
from decouple_jax.search import store_ids
from decouple_jax.search.target_store import TargetStore

_OUTPUTS = 'outputs.npz'
_RECORD = 'member.json'
FAMILY_NAMES = {
    'searches': 'students on K searches, one student seed',
    'searches_one_network': 'students on K searches in one network, one student seed',
    'searches_and_seeds': 'students on K searches, K student seeds',
    'student_seeds': 'students on one search, K student seeds',
    'sgd': "SGD, the student's network, K seeds",
}


@dataclasses.dataclass(frozen=True)
class Member:
  """One trained network: a student on the search with seed ``search_seed`` in the untrained
  network of seed ``network_seed`` (None: ``search_seed``, as ``search.network_seed``), or,
  if ``search_seed`` is None, the student's network trained end to end with SGD;
  ``train_seed`` seeds its initialisation and shuffling."""
  train_seed: int
  search_seed: int | None = None
  network_seed: int | None = None

  @property
  def name(self) -> str:
    if self.search_seed is None:
      return f'sgd_seed{self.train_seed}'
    network = '' if self.network_seed is None else f'_net{self.network_seed}'
    return f'student_search{self.search_seed}{network}_seed{self.train_seed}'


def family_members(exp: cfglib.ExperimentConfig, family: str) -> list[Member]:
  """The K members of ``family`` (see :class:`~decouple_jax.config.EnsembleConfig`)."""
  s, t, g = exp.search.seed, exp.student.train.seed, exp.sgd.train.seed
  n = exp.search.untrained_network_seed

  def student(train_seed: int, search_seed: int, network_seed: int) -> Member:
    # SearchConfig writes a search seed's own network as None: one member, one name.
    search = dataclasses.replace(exp.search, seed=search_seed, network_seed=network_seed)
    return Member(train_seed, search.seed, search.network_seed)

  make = {'searches': lambda i: student(t, s + i, n + i),
          'searches_one_network': lambda i: student(t, s + i, n),
          'searches_and_seeds': lambda i: student(t + i, s + i, n + i),
          'student_seeds': lambda i: student(t + i, s, n),
          'sgd': lambda i: Member(g + i)}[family]
  return [make(i) for i in range(exp.ensemble.members)]


def _search_config(exp: cfglib.ExperimentConfig, member: Member) -> cfglib.SearchConfig:
  """The search a student ``member``'s targets come from."""
  return dataclasses.replace(exp.search, seed=member.search_seed,
                             network_seed=member.network_seed)


def _student_config(exp: cfglib.ExperimentConfig, seed: int) -> cfglib.StudentConfig:
  return dataclasses.replace(exp.student, train=dataclasses.replace(exp.student.train, seed=seed))


def _sgd_config(exp: cfglib.ExperimentConfig, seed: int) -> cfglib.SGDConfig:
  cfg = sgd.with_network(exp.sgd, exp.student.model)
  return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def _search(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, search_cfg: cfglib.SearchConfig,
            root: pathlib.Path) -> pathlib.Path:
  """The target store of ``search_cfg``, searched on first use."""
  return driver.cached_search(exp.data, search_cfg, ds, root)


def _cka_images(exp: cfglib.ExperimentConfig, ds: datalib.Dataset) -> int:
  return min(exp.ensemble.cka_images, len(ds.test_images))


def member_identity(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, member: Member) -> dict:
  """What a member's outputs depend on: its training run's identity
  (:mod:`decouple_jax.identity`; a student's includes its search) and the test images its
  block outputs are kept for."""
  if member.search_seed is None:
    run = identity.sgd(exp.data, ds, _sgd_config(exp, member.train_seed))
  else:
    run = identity.student(exp.data, ds, _search_config(exp, member),
                           _student_config(exp, member.train_seed), store_ids.UNTRAINED)
  return {'run': run, 'cka_images': _cka_images(exp, ds)}


def _train(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, member: Member,
           run_dir: pathlib.Path, searches: pathlib.Path, mesh: jax.sharding.Mesh | None
           ) -> tuple[airbench.AirbenchNet, cfglib.TrainConfig, dict, float]:
  """Trains ``member`` (searching first if it is a student) unless finished, in ``run_dir``.

  Returns:
    (its network, its training config, the run's results with the selected ``variables``,
    the seconds its search took over every invocation (0 for SGD)).
  """
  if member.search_seed is None:
    cfg = _sgd_config(exp, member.train_seed)
    results = sgd.train_sgd(exp.data, cfg, run_dir, ds=ds, mesh=mesh)
    search_seconds = 0.0
  else:
    search_cfg = _search_config(exp, member)
    targets = _search(exp, ds, search_cfg, searches)
    cfg = _student_config(exp, member.train_seed)
    results = student.train_student(exp.data, search_cfg, cfg, run_dir, targets, ds=ds,
                                    mesh=mesh)
    search_seconds = sum(c['seconds'] for c in
                         runlog.JsonLines(targets / 'search_log.jsonl').records())
  model = models.build(cfg.model, ds.num_classes, ds.image_shape[-1])
  return model, cfg.train, results, search_seconds


def member_outputs(model: airbench.AirbenchNet, variables, ds: datalib.Dataset,
                   train_cfg: cfglib.TrainConfig, cka_images: int) -> dict[str, np.ndarray]:
  """A trained member's outputs on the test split, as its ensembles read them.

  BatchNorm and batches are those of the run's own evaluation (``train_cfg.bn_batch_stats``,
  ``train_cfg.eval_batch``), so the argmax of 'probs' gives the run's test accuracy.

  Args:
    model: the member's network.
    variables: its selected {'params', 'batch_stats'}.
    ds: the data set.
    train_cfg: its training config.
    cka_images: how many of the first test images' block outputs to keep.

  Returns:
    {'probs': (N_test, C) float32 softmax of the logits, and per block its tap name
    (``config.tap_names``: 'block0', ...): (cka_images, D_l) float32 the block's output (after its GELU: what the next block
    consumes, whatever the network's tap), flattened}.
  """
  block_names = cfglib.tap_names(len(model.widths))[:-1]

  def is_block(module, method_name):
    return isinstance(module, airbench.Block) and method_name == '__call__'

  @jax.jit
  def forward(variables, images):
    x = datalib.normalize(images, ds.mean, ds.std)
    taps, state = model.apply(variables, x, use_running_average=not train_cfg.bn_batch_stats,
                              capture_intermediates=is_block,
                              mutable=['intermediates', 'batch_stats'])
    blocks = [state['intermediates'][name]['__call__'][0][0] for name in block_names]
    return jax.nn.softmax(taps[-1].astype(np.float32)), blocks

  probs, blocks = [], []
  for start in range(0, len(ds.test_images), train_cfg.eval_batch):
    p, b = forward(variables, ds.test_images[start:start + train_cfg.eval_batch])
    probs.append(np.asarray(p))
    if start < cka_images:
      blocks.append([np.asarray(x).reshape(len(x), -1) for x in b])
  out = {'probs': np.concatenate(probs)}
  for name, per_batch in zip(block_names, zip(*blocks)):
    out[name] = np.concatenate(per_batch)[:cka_images]
  return out


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes ``arrays`` atomically (a kill never leaves half a file)."""
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def run_member(exp: cfglib.ExperimentConfig, ds: datalib.Dataset, member: Member,
               workdir: str | pathlib.Path, mesh: jax.sharding.Mesh | None = None
               ) -> tuple[dict, dict[str, np.ndarray]]:
  """``member``'s record and outputs (:func:`member_outputs`), trained unless finished (on
  ``mesh``, axis 'batch'; default every device).

  A finished member (``workdir/members/<name>/member.json``, see
  :func:`decouple_jax.identity.finished`) is read; otherwise its search and training resume
  from what is on disk.

  Returns:
    (record: 'name', 'search_seed', 'train_seed', the run's 'test_accuracy' and
    'holdout_accuracy', 'search_seconds', 'train_seconds', and its :func:`member_identity`
    as 'config' and 'config_hash'; outputs).

  Raises:
    ConfigError: the member's directory holds a member of another config, naming the
      settings that differ.
  """
  workdir = pathlib.Path(workdir)
  directory = workdir / 'members' / member.name
  config = member_identity(exp, ds, member)
  record = identity.finished(directory / _RECORD, config)
  if record is not None:
    with np.load(directory / _OUTPUTS) as f:
      return record, dict(f)
  model, train_cfg, results, search_seconds = _train(
      exp, ds, member, directory / 'run', workdir / 'searches', mesh)
  outputs = member_outputs(model, results['variables'], ds, train_cfg, _cka_images(exp, ds))
  _write_npz(directory / _OUTPUTS, outputs)
  record = identity.record(
      config, name=member.name, search_seed=member.search_seed, train_seed=member.train_seed,
      test_accuracy=results['test_accuracy'], holdout_accuracy=results['holdout_accuracy'],
      search_seconds=search_seconds, train_seconds=results['train_seconds'])
  runlog.write_json(directory / _RECORD, record)
  return record, outputs


def family_results(members: Sequence[Member], records: dict, outputs: dict,
                   labels: np.ndarray, bins: int) -> dict:
  """The measures of one family from its members' records and outputs (by member name).

  Returns:
    'members' (names), 'per_member' ({'accuracy', 'nll', 'ece'}: each member's, from its
    softmax), 'curve'
    (:func:`~decouple_jax.analysis.ensembles.ensemble_curve`), 'gain' (accuracy of all K
    minus the mean member's), 'disagreement' and 'normalised_disagreement'
    (:func:`~decouple_jax.analysis.ensembles.disagreement`; the latter None if no member
    errs), 'pairwise_disagreement' (K, K),
    'cka' (mean pairwise linear CKA per block), 'search_seconds' (of its distinct searches)
    and 'train_seconds' (of its members); accuracies and disagreements as fractions.
  """
  names = [m.name for m in members]
  probs = np.stack([outputs[n]['probs'] for n in names])
  predictions = probs.argmax(-1)
  curve = ensembles.ensemble_curve(probs, labels, bins)
  mean, normalised = ensembles.disagreement(predictions, labels)
  searches = {(m.search_seed, m.network_seed): records[m.name]['search_seconds']
              for m in members}
  return {
      'members': names,
      'per_member': {'accuracy': [ensembles.accuracy(p, labels) for p in probs],
                     'nll': [ensembles.nll(p, labels) for p in probs],
                     'ece': [ensembles.expected_calibration_error(p, labels, bins)
                             for p in probs]},
      'curve': curve,
      'gain': curve['accuracy'][-1] - curve['accuracy'][0],
      'disagreement': mean,
      # None (JSON null), not NaN, when no member errs: NaN is not valid JSON.
      'normalised_disagreement': None if np.isnan(normalised) else normalised,
      'pairwise_disagreement': ensembles.pairwise_disagreement(predictions).tolist(),
      'cka': [ensembles.mean_pairwise_cka([outputs[n][block] for n in names])
              for block in outputs[names[0]] if block != 'probs'],
      'search_seconds': float(sum(searches.values())),
      'train_seconds': float(sum(records[n]['train_seconds'] for n in names)),
  }


def distinct_searches(exp: cfglib.ExperimentConfig, members: Sequence[Member]
                      ) -> list[cfglib.SearchConfig]:
  """The searches the student ``members`` learned from, each once, in member order."""
  return list(dict.fromkeys(_search_config(exp, m) for m in members
                            if m.search_seed is not None))


def target_diversity(exp: cfglib.ExperimentConfig, ds: datalib.Dataset,
                     search_cfgs: Sequence[cfglib.SearchConfig],
                     searches: str | pathlib.Path) -> dict:
  """The paper's N_eff (Fig. 3; :func:`decouple_jax.analysis.scaling.runs_diversity`) of R
  searches' targets of the first ``analysis.n_images`` training images, with
  ``analysis.threshold``; searched unless cached in ``searches``.

  Args:
    exp: the experiment (its data, ``analysis.n_images`` and ``analysis.threshold``).
    ds: the data set.
    search_cfgs: the R searches, e.g. a family's :func:`distinct_searches`.
    searches: the cache of searches (:func:`decouple_jax.search.driver.cached_search`).

  Returns:
    {'search_seeds', 'network_seeds' (each search's untrained network), 'n_images', 'layers',
    'threshold', and per layer name (R,) lists 'n_eff', 'images', 'kept', 'n_eff_all' for
    k = 1 .. R searches}.
  """
  opened = [TargetStore.open(_search(exp, ds, c, pathlib.Path(searches))) for c in search_cfgs]
  positions = np.arange(min(exp.analysis.n_images, len(ds.train_images)))
  return {'search_seeds': [c.seed for c in search_cfgs],
          'network_seeds': [c.untrained_network_seed for c in search_cfgs],
          'n_images': len(positions),
          **scaling.runs_diversity(
              list(exp.search.layers),
              lambda layer: [st.read(positions, layers=[layer])[0] for st in opened],
              [st.best_loss[positions] for st in opened], exp.analysis.threshold)}


@locks.holding('workdir')
def run_ensemble(exp: cfglib.ExperimentConfig, workdir: str | pathlib.Path, *,
                 devices: Sequence[jax.Device] | None = None) -> dict:
  """Trains and measures the ensembles of ``exp.ensemble``; resumable member by member.

  Args:
    exp: the experiment: its search, student and SGD settings make the members (see
      :func:`family_members`), ``exp.ensemble`` the families and measures.
    workdir: the layout of the module docstring; resumed if it exists.
    devices: what training runs on (a mesh with axis 'batch'); default all. The searches run
      on every device.

  Returns:
    The dict also written to ``workdir/results.json``: 'families' ({family:
    :func:`family_results`}), 'member_records' ({name: :func:`run_member`'s record}),
    'target_diversity' ({family: :func:`target_diversity` of its distinct searches} for
    each family of several searches), the numbers of members and test images, and the
    config. ``table.md`` gets :func:`format_table` of it, ``ensemble.png``
    :func:`decouple_jax.analysis.plots.plot_ensembles`.
  """
  workdir = pathlib.Path(workdir)
  mesh = mesh_1d('batch', list(devices) if devices is not None else jax.devices())
  ds = datalib.load_dataset(exp.data)
  families = {f: family_members(exp, f) for f in exp.ensemble.families}
  records, outputs = {}, {}
  for members in families.values():
    for m in members:
      if m.name not in records:
        records[m.name], outputs[m.name] = run_member(exp, ds, m, workdir, mesh)
  searched = {f: tuple(distinct_searches(exp, m)) for f, m in families.items()}
  # Measured once per set of several searches: 'searches' and 'searches_and_seeds' share one.
  measured = {c: target_diversity(exp, ds, c, workdir / 'searches')
              for c in dict.fromkeys(searched.values()) if len(c) > 1}
  results = {
      'name': exp.name, 'scale': exp.scale, 'members': exp.ensemble.members,
      'train_images': len(ds.train_images), 'test_images': len(ds.test_images),
      'cka_images': _cka_images(exp, ds),
      'families': {f: family_results(members, records, outputs, ds.test_labels,
                                     exp.ensemble.ece_bins)
                   for f, members in families.items()},
      'member_records': records,
      'target_diversity': {f: measured[c] for f, c in searched.items() if c in measured},
      'config': cfglib.to_dict(exp),
  }
  runlog.write_json(workdir / 'results.json', results)
  (workdir / 'table.md').write_text(format_table(results))
  plots.plot_ensembles(results, workdir / 'ensemble.png',
                       plots.describe(ds.name, exp.name, exp.scale))
  return results


def _number(value: float | None) -> str:
  return '-' if value is None else f'{value:.3f}'


def _pct(values) -> str:
  return ' / '.join(f'{100 * v:.2f}' for v in values)


def format_table(results: dict) -> str:
  """The Markdown report of :func:`run_ensemble`'s results."""
  scale = report.scale_label(results['scale'])
  title = (f'# {results["name"]} ({scale}): ensembles, NOT the paper\'s settings'
           if results['scale'] != 'paper' else f'# {results["name"]}: ensembles')
  k = results['members']
  lines = [
      title, '',
      f'K = {k} members per family; every measure on the {results["test_images"]} test images '
      f'({results["train_images"]} training images). The paper has no such table: this '
      'measures its open question 2, whether diverse searches give diverse models. Member: '
      'the mean over members; K: the averaged softmax of all K. Disagreement: mean over pairs '
      'of the fraction of images predicted differently, and divided by the members\' mean '
      f'error. CKA: mean pairwise linear CKA of block outputs on {results["cka_images"]} test '
      f'images. ECE: expected calibration error, {results["config"]["ensemble"]["ece_bins"]} '
      'confidence bins.', '',
      '| family | accuracy (%): member -> K | gain (points) | NLL: member -> K | '
      'ECE (%): member -> K | disagreement (%) | / error | CKA block 0 / 1 / 2 | '
      'search s | train s | scale |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for family, f in results['families'].items():
    c = f['curve']
    lines.append(
        f'| {FAMILY_NAMES[family]} | {100 * c["accuracy"][0]:.2f} -> '
        f'{100 * c["accuracy"][-1]:.2f} | {100 * f["gain"]:+.2f} | {c["nll"][0]:.4f} -> '
        f'{c["nll"][-1]:.4f} | {100 * c["ece"][0]:.2f} -> {100 * c["ece"][-1]:.2f} | '
        f'{100 * f["disagreement"]:.2f} | {_number(f["normalised_disagreement"])} | '
        + ' / '.join(f'{v:.3f}' for v in f['cka']) +
        f' | {f["search_seconds"]:.0f} | {f["train_seconds"]:.0f} | {scale} |')
  lines += ['', f'Ensemble accuracy (%) by size k = 1 .. {k} (mean over every k-subset of '
            'members), and each member\'s:', '',
            '| family | by k | members |', '|---|---|---|']
  for family, f in results['families'].items():
    lines.append(f'| {FAMILY_NAMES[family]} | {_pct(f["curve"]["accuracy"])} | '
                 f'{_pct(f["per_member"]["accuracy"])} |')
  diversity = results['target_diversity']
  if diversity:
    first = next(iter(diversity.values()))
    lines += ['', f'Target diversity: the paper\'s N_eff of each family\'s {k} searches\' '
              f'targets, mean over the first {first["n_images"]} training images, for k = 1 .. '
              f'{k} searches; every search\'s target, and (in brackets) those giving the true '
              f'class p > {first["threshold"]:g}:', '']
    fmt = lambda values: ' / '.join('-' if v is None else f'{v:.2f}' for v in values)
    for family, d in diversity.items():
      lines.append(f'- {FAMILY_NAMES[family]} (search seeds '
                   f'{", ".join(map(str, d["search_seeds"]))}; networks '
                   f'{", ".join(map(str, d["network_seeds"]))}):')
      lines += [f'  - {layer}: {fmt(d[layer]["n_eff_all"])} ({fmt(d[layer]["n_eff"])})'
                for layer in d['layers']]
  lines += ['', 'Search seconds count each distinct search of a family once (the student-seed '
            'family shares one). The families of K searches search each in an untrained network '
            'of its own (by default that of its search seed), except the one-network family, '
            'whose searches are all in the network of the first.', '']
  return '\n'.join(lines)
