"""The wheel a user would install (issue 22): built with setuptools' warnings as errors, holding
the package and its license and nothing else, and working outside the repository: the launch
scripts and the notebook run from it, installed non-editable.

Building needs PyPI (pip's isolated build environment installs setuptools); installing the
wheel does not (--no-deps, and the project venv already holds the dependencies).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / 'launch').glob('*.py'))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> pathlib.Path:
  # Built from a copy: setuptools writes build/ and *.egg-info/ into the source tree, and a stale
  # build/lib would carry deleted modules into the wheel.
  src = tmp_path_factory.mktemp('src') / 'repo'
  shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
      '.git', '.venv', 'build', '*.egg-info', '__pycache__', 'runs', '.pytest_cache'))
  out = tmp_path_factory.mktemp('wheel')
  # Every setuptools warning, its deprecations included, is a UserWarning: as errors they fail
  # the build here instead of scrolling past in `make install`.
  env = dict(os.environ, PYTHONWARNINGS='error::UserWarning')
  proc = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-w', str(out), str(src)], env=env,
      capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  [path] = out.glob('*.whl')
  return path


def test_wheel_holds_the_package_and_license_only(wheel):
  name, version = wheel.name.split('-')[:2]
  dist_info = f'{name}-{version}.dist-info'
  with zipfile.ZipFile(wheel) as z:
    files = set(z.namelist())
    metadata = z.read(f'{dist_info}/METADATA').decode()
    license_text = z.read(f'{dist_info}/licenses/LICENSE')
  # No tests, configs, launch scripts or data: nothing outside the package and its metadata.
  assert {f.split('/')[0] for f in files} == {'decouple_jax', dist_info}
  package = {str(p.relative_to(REPO)) for p in (REPO / 'decouple_jax').rglob('*.py')}
  assert {f for f in files if f.startswith('decouple_jax/')} == package
  assert license_text == (REPO / 'LICENSE').read_bytes()
  headers = metadata.split('\n\n', 1)[0].splitlines()
  for header in ('Metadata-Version: 2.4', 'License-Expression: Apache-2.0',
                 'License-File: LICENSE'):
    assert header in headers, metadata[:2000]


@pytest.fixture(scope='module')
def site(wheel, tmp_path_factory) -> pathlib.Path:
  """The wheel installed (not editable) into a directory of its own, for PYTHONPATH."""
  site = tmp_path_factory.mktemp('site')
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index',
                  '--target', str(site), str(wheel)], check=True)
  return site


def test_installed_wheel_runs_the_launch_scripts(site, tmp_path):
  # Run from outside the repository, with the wheel's copy first on the path: nothing can come
  # from the source tree but the launch scripts and configs/.
  env = dict(os.environ, PYTHONPATH=str(site))
  run = lambda *args: subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  procs = {
      'import': run('-c', 'import decouple_jax; print(decouple_jax.__file__)'),
      'missing config': run(str(REPO / 'launch' / 'train_sgd.py'), '--config=nope.py',
                            '--workdir=w'),
      **{script.name: run(str(script), '--help') for script in SCRIPTS},
  }
  outputs = {k: (p.wait(timeout=120), *p.communicate()) for k, p in procs.items()}
  code, out, err = outputs['import']
  assert code == 0 and pathlib.Path(out.strip()).is_relative_to(site), (out, err)
  code, _, err = outputs['missing config']
  assert code == 1 and 'configs/mnist.py' in err, err
  for script in SCRIPTS:
    code, out, err = outputs[script.name]
    assert code == 0, (script.name, err)
    if script.name != 'fetch_data.py':  # the one script without --config
      assert 'configs/mnist.py: ' in out, (script.name, out)


@pytest.mark.slow
def test_installed_wheel_runs_the_notebook(site, mnist_dir):
  """The notebook, top to bottom, with the package from the wheel alone (about a minute and a
  half on 2 cores); configs/ and data/mnist come from the repository it runs in, as on Colab
  from the clone its first cell makes."""
  del mnist_dir  # Only checks that `make data` has run.
  nb = nbformat.read(REPO / 'notebooks' / 'quickstart.ipynb', as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell(
      'import decouple_jax\nprint("package:", decouple_jax.__file__)'))
  # The kernel gets the wheel first on its path; it inherits the rest of this process's
  # environment (conftest's 8 CPU devices, the XLA compilation cache).
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(REPO / 'notebooks')}}).execute(
                              env=dict(os.environ, PYTHONPATH=str(site)))
  text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                 for o in c.outputs)
  assert 'student test accuracy' in text
  [package] = [l.split(': ', 1)[1] for l in text.splitlines() if l.startswith('package: ')]
  assert pathlib.Path(package).is_relative_to(site), package
