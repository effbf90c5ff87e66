"""notebooks/quickstart.ipynb runs top to bottom (about a minute on 2 CPU cores)."""

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs(mnist_dir):
  del mnist_dir  # Only checks that `make data` has run: the notebook reads data/mnist.
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  pytest.importorskip('ipykernel')
  nb = nbformat.read(REPO / 'notebooks' / 'quickstart.ipynb', as_version=4)
  # The kernel inherits this process's environment, so conftest's 8 CPU devices too.
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(REPO / 'notebooks')}}).execute()
  outputs = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                    for o in c.outputs)
  assert 'student test accuracy' in outputs
  images = sum('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code'
               for o in c.outputs)
  assert images == 4
