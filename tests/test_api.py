"""The public API: every package's ``__all__`` names what exists, and what README.md and the
notebook call is in it."""

import ast
import importlib
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('decouple_jax', 'decouple_jax.analysis', 'decouple_jax.data', 'decouple_jax.learn',
            'decouple_jax.models', 'decouple_jax.search')


def _resolve(dotted: str):
  """The object ``dotted`` names (``decouple_jax.search.operators.blur``), importing modules on
  the way."""
  parts = dotted.split('.')
  obj = importlib.import_module(parts[0])
  for i, part in enumerate(parts[1:], 1):
    if not hasattr(obj, part):
      importlib.import_module('.'.join(parts[:i + 1]))  # a submodule not imported yet
    obj = getattr(obj, part)
  return obj


@pytest.mark.parametrize('name', PACKAGES)
def test_every_name_in_all_exists(name):
  package = importlib.import_module(name)
  assert package.__all__, name
  assert len(set(package.__all__)) == len(package.__all__), name
  for public in package.__all__:
    _resolve(f'{name}.{public}')


def test_the_top_package_imports_nothing_and_report_no_plots():
  """``import decouple_jax`` is free; report.py (a table) needs neither matplotlib nor the
  search nor the learner."""
  code = ('import sys, decouple_jax, decouple_jax.report; '
          'print(sorted(m for m in sys.modules if m.startswith(("decouple_jax", "matplotlib", '
          '"jax"))))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=REPO).stdout
  assert out.strip() == "['decouple_jax', 'decouple_jax.report']", out


def test_readme_calls_exist_and_are_public():
  readme = (REPO / 'README.md').read_text()
  [screen] = re.findall(r'## The library in one screen\n\n```python\n(.*?)```', readme, re.S)
  # `search.run_search(...)` in the API block: a package's public name, then what it holds.
  calls = re.findall(r'(?<![\w.])(config|config_files|data|models|search|learn|analysis)\.(\w+(?:\.\w+)*)',
                     screen)
  assert len(calls) > 10, calls
  for package, dotted in calls:
    module = importlib.import_module(f'decouple_jax.{package}')
    first = dotted.split('.')[0]
    assert first in getattr(module, '__all__', dir(module)), f'{package}.{dotted}'
    _resolve(f'decouple_jax.{package}.{dotted}')
  # Anywhere in the README, a full name resolves.
  for dotted in set(re.findall(r'decouple_jax(?:\.\w+)+', readme)):
    _resolve(dotted)


def test_notebook_uses_public_names_only():
  nb = nbformat.read(REPO / 'notebooks' / 'quickstart.ipynb', as_version=4)
  code = '\n'.join(c.source for c in nb.cells if c.cell_type == 'code')
  tree = ast.parse('\n'.join(l for l in code.splitlines() if not l.lstrip().startswith(('!', '%'))))
  aliases = {}  # local name -> the public module it is bound to
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('decouple_jax'):
      module = importlib.import_module(node.module)
      for alias in node.names:
        assert alias.name in getattr(module, '__all__', ()), (
            f'from {node.module} import {alias.name}: not in {node.module}.__all__')
        if isinstance(getattr(module, alias.name, None), type(module)):
          aliases[alias.asname or alias.name] = getattr(module, alias.name)
  used = 0
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and
        node.value.id in aliases):
      module = aliases[node.value.id]
      assert node.attr in getattr(module, '__all__', dir(module)), (
          f'{node.value.id}.{node.attr}: not public in {module.__name__}')
      used += 1
  assert used > 5


def test_notebook_and_readme_name_one_repository():
  """REPO_URL is defined once in the README; the notebook's first code cell clones it and the
  Colab badge opens the notebook from it."""
  readme = (REPO / 'README.md').read_text()
  [url] = re.findall(r'`REPO_URL = (https://github\.com/[\w.-]+/[\w.-]+)`', readme)
  nb = nbformat.read(REPO / 'notebooks' / 'quickstart.ipynb', as_version=4)
  first = next(c for c in nb.cells if c.cell_type == 'code').source
  assert f"REPO_URL = '{url}'" in first and "'google.colab' in sys.modules" in first
  badge = url.replace('https://github.com/', 'https://colab.research.google.com/github/')
  assert f'({badge}/blob/main/notebooks/quickstart.ipynb)' in readme
