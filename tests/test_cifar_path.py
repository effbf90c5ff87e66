"""The CIFAR path end to end: launch/reproduce.py on a CIFAR-format archive made here."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from cifar_archives import write_cifar_archive

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['cifar10', 'cifar100'])
def test_reproduce_runs_on_a_cifar_archive(tmp_path, kind):
  rng = np.random.default_rng(0)
  n, m = 192, 64
  archive_dir = tmp_path / 'data'
  archive_dir.mkdir()
  coarse = ({'coarse_labels': rng.integers(0, 20, n),
             'test_coarse_labels': rng.integers(0, 20, m)}
            if kind == 'cifar100' else {})
  classes = 100 if kind == 'cifar100' else 10
  write_cifar_archive(archive_dir, rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
                      rng.integers(0, classes, n),
                      test_images=rng.integers(0, 256, (m, 32, 32, 3), np.uint8),
                      test_labels=rng.integers(0, classes, m), kind=kind, **coarse)
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  cmd = [sys.executable, 'launch/reproduce.py', f'--config=configs/{kind}.py:smoke',
         f'--workdir={workdir}', f'--config.data.dir={archive_dir}',
         "--config.reproduce.sgd_convs=(2,)", "--config.reproduce.variants=('all_layers',)"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert [r['method'] for r in results['rows']] == ['sgd', 'all_layers']
  table = (workdir / 'table.md').read_text()
  assert f'{kind}:smoke' in table and 'scaled down' in table
  assert results['search']['train']['images'] == 128
