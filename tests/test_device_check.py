"""benchmarks/device_check.py on a CPU with a tiny budget: it stops inside the budget, writes
its report, and says which parts ran at tiny shapes or not at all."""

import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BUDGET = 30  # seconds: enough for the device survey, the matmul rate and a tiny MNIST search


def test_device_check_keeps_its_budget_and_says_what_it_scaled_down(mnist_dir, tmp_path):
  out = tmp_path / 'device_check.json'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  t0 = time.monotonic()
  proc = subprocess.run(
      [sys.executable, str(REPO / 'benchmarks' / 'device_check.py'), f'--minutes={BUDGET / 60}',
       f'--out={out}', f'--data_dir={mnist_dir}'],
      env=env, capture_output=True, text=True, timeout=BUDGET + 60)
  wall = time.monotonic() - t0
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  report = json.loads(out.read_text())
  # Never overrun: the script's own clock, and the test's (the interpreter's start-up and exit
  # are all it adds).
  assert report['budget_seconds'] == BUDGET and report['elapsed_seconds'] <= BUDGET
  assert wall <= BUDGET + 5
  machine = report['machine']
  assert machine['platform'] == 'cpu' and machine['devices'] == 1
  assert machine['usable_memory_per_device_bytes'] > 0 and 'jax' in machine['versions']
  assert report['matmul']['float32_gflops'] > 0 and report['matmul']['bfloat16_gflops'] > 0
  # A stop names the section it cut short; what did not fit says so.
  assert report['stopped'] is None or report['stopped'].startswith('the budget ran out during')
  notes = '\n'.join(report['notes'])
  assert 'MNIST run: tiny (configs/mnist.py:demo' in notes
  assert 'not measured' in notes
  assert f'wrote {out}' in proc.stdout or 'stopped:' in proc.stdout
