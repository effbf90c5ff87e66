"""notebooks/quickstart.ipynb runs top to bottom (about a minute and a half on 2 CPU cores)."""

import pathlib

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs(mnist_dir):
  del mnist_dir  # Only checks that `make data` has run: the notebook reads data/mnist.
  nb = nbformat.read(REPO / 'notebooks' / 'quickstart.ipynb', as_version=4)
  # The kernel inherits this process's environment, so conftest's 8 CPU devices too.
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(REPO / 'notebooks')}}).execute()
  code_outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert 'student test accuracy' in ''.join(o.get('text', '') for o in code_outputs)
  assert sum('image/png' in o.get('data', {}) for o in code_outputs) == 4
