"""Ensembles (the paper's open question 2): the measures on hand-made arrays, the families'
seeds, and launch/ensemble.py on K = 2 end to end, killed mid-member and resumed to the same
numbers."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from decouple_jax import config as cfglib
from decouple_jax import ensemble
from decouple_jax import identity
from decouple_jax import locks
from decouple_jax import runlog
from decouple_jax.analysis import ensembles

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# The measures.

def test_accuracy_and_nll():
  probs = np.array([[1.0, 0.0], [0.25, 0.75], [0.5, 0.5]])
  labels = np.array([0, 0, 0])
  assert ensembles.accuracy(probs, labels) == pytest.approx(2 / 3)  # a tie goes to class 0
  assert ensembles.nll(probs, labels) == pytest.approx(-(np.log(0.25) + np.log(0.5)) / 3)
  # A confident miss costs a finite -log(1e-30).
  assert ensembles.nll(np.array([[0.0, 1.0]]), np.array([0])) == pytest.approx(69.0776, abs=1e-4)


def test_ece_of_a_perfectly_calibrated_toy_is_zero():
  # Confidence 0.8 and right 8 times in 10, confidence 0.6 and right 3 times in 5.
  probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5)
  labels = np.array([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
  assert ensembles.expected_calibration_error(probs, labels, bins=15) == pytest.approx(0.0)


def test_ece_of_overconfident_and_mixed_bins():
  # Confidence 0.9, right half the time: off by 0.4 everywhere.
  probs = np.array([[0.9, 0.1]] * 4)
  assert ensembles.expected_calibration_error(probs, np.array([0, 0, 1, 1])) == (
      pytest.approx(0.4))
  # One bin: confidences 0.55 (right) and 0.65 (wrong) average 0.6 against accuracy 0.5;
  # with 10 bins they fall apart: |1 - 0.55| / 2 + |0 - 0.65| / 2.
  probs, labels = np.array([[0.55, 0.45], [0.65, 0.35]]), np.array([0, 1])
  assert ensembles.expected_calibration_error(probs, labels, bins=1) == pytest.approx(0.1)
  assert ensembles.expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.55)


def test_ensemble_curve_averages_every_subset():
  # Three members, each right (p = 0.7) on two of three images and wrong (p_true = 0.4) on
  # the third, a different one each: any two or three of them are right everywhere.
  right, wrong = [0.7, 0.3], [0.4, 0.6]
  probs = np.array([[right, right, wrong], [wrong, right, right], [right, wrong, right]])
  labels = np.zeros(3, int)
  curve = ensembles.ensemble_curve(probs, labels)
  assert curve['k'] == [1, 2, 3]
  assert curve['accuracy'] == pytest.approx([2 / 3, 1.0, 1.0])
  assert curve['nll'][0] == pytest.approx(-(2 * np.log(0.7) + np.log(0.4)) / 3)
  assert curve['nll'][1] == pytest.approx(-(np.log(0.7) + 2 * np.log(0.55)) / 3)
  assert curve['nll'][2] == pytest.approx(-np.log(0.6))
  # Identical members: the curve is flat.
  same = ensembles.ensemble_curve(np.stack([probs[0]] * 3), labels)
  assert same['accuracy'] == pytest.approx([2 / 3] * 3)
  assert same['ece'] == pytest.approx([same['ece'][0]] * 3)


def test_disagreement():
  labels = np.array([0, 0, 1, 1])
  same = np.array([[0, 1, 1, 1]] * 3)
  assert ensembles.disagreement(same, labels) == (0.0, 0.0)
  assert np.all(ensembles.pairwise_disagreement(same) == 0)
  # A is right everywhere, B wrong on two images: they disagree on those two (half the
  # images); the mean error is 1/4, so the normalised value is 2, its largest.
  preds = np.array([[0, 0, 1, 1], [0, 1, 1, 0]])
  np.testing.assert_array_equal(ensembles.pairwise_disagreement(preds), [[0, 0.5], [0.5, 0]])
  assert ensembles.disagreement(preds, labels) == (0.5, 2.0)
  assert np.isnan(ensembles.disagreement(np.array([[0, 0, 1, 1]] * 2), labels)[1])


def test_linear_cka():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 4, 3))  # flattened to 12 features
  q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  rotated = 3.7 * x.reshape(50, 12) @ q + 5.0  # orthogonal, isotropic scale, shift
  assert ensembles.linear_cka(x, x) == pytest.approx(1.0)
  assert ensembles.linear_cka(x, rotated) == pytest.approx(1.0)
  assert ensembles.mean_pairwise_cka([x, rotated, -x]) == pytest.approx(1.0)
  # Not invariant to scaling one feature, and low for unrelated representations.
  stretched = x.reshape(50, 12) * np.r_[10.0, np.ones(11)]
  assert ensembles.linear_cka(x, stretched) < 0.9
  unrelated = rng.normal(size=(2000, 3))
  assert ensembles.linear_cka(rng.normal(size=(2000, 3)), unrelated) < 0.02
  assert np.isnan(ensembles.linear_cka(x, np.ones((50, 2))))
  with pytest.raises(ValueError, match='same inputs'):
    ensembles.linear_cka(x, x[:10])


# ----------------------------------------------------------------------------------------------
# The config and the families.

@pytest.mark.parametrize('fields, message', [
    ({'members': 1}, 'members=1: must be an integer >= 2'),
    ({'families': ('searches', 'nope')}, "families='nope' is not one of"),
    ({'families': ()}, 'name each family once, at least one'),
    ({'families': ('sgd', 'sgd')}, 'name each family once'),
    ({'ece_bins': 0}, 'ece_bins=0'),
])
def test_ensemble_config_refuses_bad_values(fields, message):
  with pytest.raises(cfglib.ConfigError, match=message):
    cfglib.from_dict(cfglib.ExperimentConfig, {'ensemble': fields})


def test_families_vary_what_they_say():
  exp = cfglib.ExperimentConfig(
      search=cfglib.SearchConfig(seed=10),
      student=cfglib.StudentConfig(train=cfglib.TrainConfig(seed=20)),
      sgd=cfglib.SGDConfig(train=cfglib.TrainConfig(seed=30)),
      ensemble=cfglib.EnsembleConfig(members=3))
  names = lambda family: [m.name for m in ensemble.family_members(exp, family)]
  assert names('searches') == [
      'student_search10_seed20', 'student_search11_seed20', 'student_search12_seed20']
  assert names('searches_one_network') == [
      'student_search10_seed20', 'student_search11_net10_seed20',
      'student_search12_net10_seed20']
  assert names('searches_and_seeds') == [
      'student_search10_seed20', 'student_search11_seed21', 'student_search12_seed22']
  assert names('student_seeds') == [
      'student_search10_seed20', 'student_search10_seed21', 'student_search10_seed22']
  assert names('sgd') == ['sgd_seed30', 'sgd_seed31', 'sgd_seed32']
  # The searches: 'searches' varies the network with the search, the one-network family not.
  networks = lambda family: [c.untrained_network_seed for c in ensemble.distinct_searches(
      exp, ensemble.family_members(exp, family))]
  assert networks('searches') == [10, 11, 12] and networks('searches_one_network') == [10] * 3
  assert networks('student_seeds') == [10]
  # The first member of the student families is one run (one identity), trained once.
  firsts = [ensemble.family_members(exp, f)[0] for f in cfglib.ENSEMBLE_FAMILIES[:-1]]
  assert len({m.name for m in firsts}) == 1
  assert len({identity.hash_of(ensemble.member_identity(exp, _FakeDataset(), m))
              for m in firsts}) == 1


# ----------------------------------------------------------------------------------------------
# launch/ensemble.py on configs/mnist.py:smoke (K = 2), whole and killed.

def _start(workdir, mnist_dir):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.Popen(
      [sys.executable, 'launch/ensemble.py', '--config=configs/mnist.py:smoke',
       f'--workdir={workdir}', f'--config.data.dir={mnist_dir}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


def _without_timing(results):
  """results.json without what a clock measured."""
  timing = ('search_seconds', 'train_seconds')
  strip = lambda d: {k: v for k, v in d.items() if k not in timing}
  return {**results, 'families': {f: strip(v) for f, v in results['families'].items()},
          'member_records': {n: strip(v) for n, v in results['member_records'].items()}}


@pytest.fixture(scope='module')
def runs(mnist_dir, tmp_path_factory):
  """An uninterrupted run, and one SIGKILLed in its second member's training (after that
  member's first checkpoint) and run again; both started together (two cores)."""
  root = tmp_path_factory.mktemp('ensemble')
  whole, killed = root / 'whole', root / 'killed'
  proc_whole, proc = _start(whole, mnist_dir), _start(killed, mnist_dir)
  second = killed / 'members' / 'student_search1_seed0'
  lock, refused = killed / locks.LOCK_FILE, False
  while not (second / 'run' / 'checkpoints' / '1').exists():
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    # The holder writes who it is once it holds the lock.
    if not refused and lock.exists() and lock.stat().st_size:
      # A second run on a workdir in use is refused at once, naming the holder.
      with pytest.raises(locks.DirectoryBusy, match=f'in use by pid {proc.pid}'):
        ensemble.run_ensemble(cfglib.ExperimentConfig(), killed)
      refused = True
    time.sleep(0.02)
  assert refused
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  first = killed / 'members' / 'student_search0_seed0' / 'member.json'
  finished = {'record': first.stat().st_mtime_ns, 'second': (second / 'member.json').exists()}
  out = _finish(_start(killed, mnist_dir))
  _finish(proc_whole)
  return {'whole': whole, 'killed': killed, 'out': out, 'finished': finished,
          'first_mtime': first.stat().st_mtime_ns}


@pytest.mark.slow
def test_a_run_killed_mid_member_resumes_to_the_same_numbers(runs):
  assert not runs['finished']['second']  # it was killed inside the second member
  assert runs['first_mtime'] == runs['finished']['record']  # the first was not redone
  whole = runlog.read_json(runs['whole'] / 'results.json')
  resumed = runlog.read_json(runs['killed'] / 'results.json')
  assert _without_timing(resumed) == _without_timing(whole)
  for member in whole['member_records']:
    a, b = (np.load(runs[r] / 'members' / member / 'outputs.npz') for r in ('whole', 'killed'))
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_every_family_and_measure_is_there(runs):
  results = runlog.read_json(runs['killed'] / 'results.json')
  assert set(results['families']) == set(cfglib.ENSEMBLE_FAMILIES)
  # Members shared by families ran once: 2 searches x 2 student seeds, the second search in
  # the first's network, and 2 SGD seeds; 3 searches.
  assert sorted(results['member_records']) == [
      'sgd_seed0', 'sgd_seed1', 'student_search0_seed0', 'student_search0_seed1',
      'student_search1_net0_seed0', 'student_search1_seed0', 'student_search1_seed1']
  assert len(list((runs['killed'] / 'searches').iterdir())) == 3
  for family in results['families'].values():
    assert family['curve']['k'] == [1, 2]
    for key in ('accuracy', 'nll', 'ece'):
      assert len(family['curve'][key]) == 2 and all(np.isfinite(family['curve'][key]))
    assert 0 <= family['disagreement'] <= 1 and len(family['cka']) == 3
    assert all(0 <= c <= 1 + 1e-9 for c in family['cka'])
    assert family['train_seconds'] > 0
    # The softmax is the run's own evaluation: its argmax gives the run's test accuracy.
    assert family['per_member']['accuracy'] == [
        results['member_records'][n]['test_accuracy'] for n in family['members']]
    assert family['per_member']['nll'][0] >= 0 and len(family['per_member']['ece']) == 2
  assert results['families']['sgd']['search_seconds'] == 0
  assert results['families']['searches']['search_seconds'] > 0
  diversity = results['target_diversity']
  assert set(diversity) == {'searches', 'searches_one_network', 'searches_and_seeds'}
  assert diversity['searches']['network_seeds'] == [0, 1]
  assert diversity['searches_one_network']['network_seeds'] == [0, 0]
  for d in diversity.values():
    assert d['search_seeds'] == [0, 1] and d['n_images'] == 2
    assert d['block1']['n_eff_all'][0] == pytest.approx(1.0)


@pytest.mark.slow
def test_table_and_figure_say_scaled_down(runs):
  table = (runs['killed'] / 'table.md').read_text()
  assert table.strip() in runs['out']  # the table is what the script prints
  assert table.startswith("# mnist:smoke (scaled down (smoke)): ensembles, NOT the paper's")
  rows = [l for l in table.splitlines() if l.startswith('| students') or l.startswith('| SGD')]
  families = len(cfglib.ENSEMBLE_FAMILIES)
  assert len(rows) == 2 * families and all('scaled down (smoke)' in r for r in rows[:families])
  assert 'N_eff' in table
  assert (runs['killed'] / 'ensemble.png').read_bytes()[:4] == b'\x89PNG'
  figure = runlog.read_json(runs['killed'] / 'ensemble.json')
  assert figure['scale'] == 'scaled down (smoke)'
  assert len(figure['sgd']['pair_disagreement']) == 1  # one pair of two members


class _FakeDataset:
  """What a member's identity reads of a data set."""
  fingerprint = 'f'
  test_images = np.zeros((5, 1))
