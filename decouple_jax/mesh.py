"""The one mesh shape this library uses: a 1-D mesh over devices."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np


def mesh_1d(axis: str, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh named ``axis`` over ``devices`` (default: all), in Auto sharding mode.

  Auto mode lets ``jit`` place intermediate values itself; we only pin the batch/image axis.
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.sharding.Mesh(np.asarray(devices), (axis,),
                           axis_types=(jax.sharding.AxisType.Auto,))
