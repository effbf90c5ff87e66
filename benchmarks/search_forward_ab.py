"""The search's forward now (the model's own ``AirbenchNet.forward_from``) against the copy the
search used to carry (``decouple_jax/search/fast.py:forward_from`` at ``--old_commit``), timed
interleaved in one process so that their ratio shares the machine's state.

The forward restarts the network at block 0's output and runs blocks 1-2 and the head on a
layer-0 generation's children (paper CIFAR-10 shapes: 220 candidates of 15x15x256 per image,
identity convs skipped in both): most of a layer-0 generation's arithmetic. The old module is
read from git, so this runs in a checkout with history.

  .venv/bin/python benchmarks/search_forward_ab.py [--old_commit=818c3ef] [--rounds=5]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np

from measure import best_time, search_setup
from decouple_jax import config
from decouple_jax.models import airbench

REPO = pathlib.Path(__file__).resolve().parents[1]


def old_forward_module(commit: str):
  """``decouple_jax/search/fast.py`` of ``commit``, imported under another name."""
  source = subprocess.run(['git', 'show', f'{commit}:decouple_jax/search/fast.py'], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
  path = pathlib.Path(tempfile.mkdtemp()) / 'old_fast.py'
  path.write_text(source)
  spec = importlib.util.spec_from_file_location('old_fast', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--old_commit', default='818c3ef')
  parser.add_argument('--images', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds')
  parser.add_argument('--repeats', type=int, default=5, help='calls per round (best kept)')
  args = parser.parse_args()
  old_fast = old_forward_module(args.old_commit)
  cfg = config.SearchConfig()
  model, variables, _, _, taps = search_setup(args.images, cfg)
  children = taps[0][:, :cfg.n_explore + cfg.n_refine]
  skip = model.identity_convs
  plain = model.clone(identity_convs=frozenset())
  new = jax.jit(jax.vmap(lambda h: model.apply(variables, 0, h, method=model.forward_from)[-1]))
  old = jax.jit(jax.vmap(lambda h: old_fast.forward_from(plain, variables, 0, h, skip=skip)[-1]))
  np.testing.assert_allclose(np.asarray(new(children)), np.asarray(old(children)), rtol=2e-3,
                             atol=2e-3)
  print(f'# search_forward_ab  {datetime.datetime.now().isoformat(timespec="seconds")}  '
        f'jax {jax.__version__}  devices {jax.devices()}')
  print(f'# {args.images} images x {children.shape[1]} children of {children.shape[2:]}, '
        f'blocks 1-2 and the head; old = fast.forward_from at {args.old_commit}')
  ratios = []
  for r in range(args.rounds):
    t_new = best_time(new, children, repeats=args.repeats)
    t_old = best_time(old, children, repeats=args.repeats)
    ratios.append(t_new / t_old)
    print(f'round {r}: new {t_new:.4f} s, old {t_old:.4f} s, new / old {ratios[-1]:.3f}',
          flush=True)
  print(f'new / old: median {np.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}')


if __name__ == '__main__':
  sys.exit(main())
