"""How much fits on a device: its memory, against XLA's own accounting of a compiled program.

Batch sizes that are only about speed (the search's images per device) are chosen here from
the device's memory and the compiled program's :meth:`memory_analysis`, and batch sizes that
are part of the method (the training batch) are checked, so that a setting that cannot fit
stops before it runs, with the numbers. JAX reuses a program compiled by
``jax.jit(f).lower(...).compile()`` for the next call of ``f`` with those shapes, so measuring
the program that then runs costs no second compilation.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import jax

from decouple_jax.config import ConfigError

# The part of a device's memory a program may plan to use: XLA's accounting leaves out
# allocator fragmentation and the buffers of the previous call still alive.
USABLE = 0.9
# On a CPU, the part of the host's available memory its devices may share (the data set, the
# target store's pages and Python live there too).
HOST_SHARE = 0.5


class DoesNotFit(ConfigError):
  """A setting whose program needs more memory than the device has."""


def device_memory(device: jax.Device | None = None) -> int:
  """Bytes of memory a program may use on ``device`` (default: the first local device).

  An accelerator's allocator limit (``memory_stats()['bytes_limit']``, which honours
  ``XLA_PYTHON_CLIENT_MEM_FRACTION``) times :data:`USABLE`; a CPU device's share of the host's
  available memory (:data:`HOST_SHARE` of it, split among the process's CPU devices).
  """
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'] * USABLE)
  devices = sum(d.platform == device.platform for d in jax.local_devices())
  return int(_host_available() * HOST_SHARE / devices)


def _host_available() -> int:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')


def program_bytes(compiled: jax.stages.Compiled) -> int:
  """Peak bytes per device of a compiled program (arguments, outputs, temporaries and code,
  less what outputs alias), from XLA's memory analysis."""
  m = compiled.memory_analysis()
  peak = getattr(m, 'peak_memory_in_bytes', 0)
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes +
           m.generated_code_size_in_bytes - m.alias_size_in_bytes)
  return int(max(peak, total))


def size(n: float) -> str:
  """Bytes as 'x.xx GB', 'x.x MB' or 'x.x kB'."""
  for unit, scale, digits in (('GB', 1e9, 2), ('MB', 1e6, 1)):
    if n >= scale:
      return f'{n / scale:.{digits}f} {unit}'
  return f'{n / 1e3:.1f} kB'


def largest_batch(bytes_at: Callable[[int], int], fixed: int, budget: int, upper: int,
                  what: str) -> int:
  """The largest per-device batch b in 1..``upper`` whose program fits ``budget`` bytes.

  ``bytes_at(b)`` compiles the program at b and returns :func:`program_bytes`; ``fixed`` is
  the part that does not grow with b (e.g. the replicated weights). The program is compiled at
  b = 1, then at the b that bytes growing linearly from there predicts, and smaller until it
  fits, so the last compile is the one that runs.

  Raises:
    DoesNotFit: one ``what`` per device does not fit, with the numbers.
  """
  one = bytes_at(1)
  if one > budget:
    raise DoesNotFit(f'one {what} per device needs {size(one)}, the device has {size(budget)} '
                     f'usable: use a device with more memory or a smaller network')
  b = min(upper, max(1, (budget - fixed) // max(one - fixed, 1)))
  while b > 1:
    need = bytes_at(b)
    if need <= budget:
      break
    # Shrink in proportion to the overshoot, by at least one.
    b = min(b - 1, math.floor(b * (budget - fixed) / max(need - fixed, 1)))
  return max(b, 1)


def check_fits(need: int, budget: int, what: str, fix: str) -> None:
  """Refuses a program of ``need`` bytes per device on a device of ``budget`` usable bytes.

  Raises:
    DoesNotFit: naming ``what`` needs how much, what the device has, and ``fix``.
  """
  if need > budget:
    raise DoesNotFit(f'{what} needs {size(need)} per device, the device has {size(budget)} '
                     f'usable: {fix}')
