"""The batched search over devices: image axis sharded, weights replicated, no collectives.

A 1-D mesh (axis ``'images'``) splits the batch across devices; every device runs
:func:`decouple_jax.search.evolve.search_batch` on its own images under ``jax.shard_map``.
Images never interact, so there is no communication, and because each image's randomness
comes from its dataset index, an image gets the same draws on any number of devices and in any
batch. Its result is the same up to float rounding: XLA's CPU reductions sum in an order that
depends on the batch shape, which moves values by about an ulp.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from decouple_jax.config import SearchConfig
from decouple_jax.mesh import mesh_1d
from decouple_jax.models import airbench
from decouple_jax.search import evolve

AXIS = 'images'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'images' over ``devices`` (default: all devices)."""
  return mesh_1d(AXIS, devices)


def make_search_fn(model: airbench.AirbenchNet, variables, search_cfg: SearchConfig,
                   mesh: jax.sharding.Mesh | None = None, *,
                   ops: evolve.Operators = evolve.Operators(),
                   ) -> Callable[[jax.Array, jax.Array, jax.Array], evolve.SearchResult]:
  """The jitted, sharded search of a batch of images.

  Identity convolutions are found once here, on these concrete ``variables``, and skipped by
  the model's own forward (:attr:`~decouple_jax.models.AirbenchNet.identity_convs`).

  Args:
    model: the search network: the untrained one of ``search_cfg.model``, or any network of
      the family (a trained student, say), whose taps are then what is searched.
    variables: its {'params', 'batch_stats'} (replicated on every device).
    search_cfg: the search configuration.
    mesh: a 1-D mesh with axis 'images' (default: all devices, :func:`make_mesh`).
    ops: the search's operators (:class:`decouple_jax.search.evolve.Operators`); swap any of
      them to search with your own.

  Returns:
    ``fn(images_norm (B, H, W, C) float32, labels (B,) int32, indices (B,) int32) ->
    SearchResult`` with leading axis B. Any B works: the batch is padded to a multiple of the
    device count and the padding stripped. Calls whose B pads
    to the same size (in particular a second call with the same B) do not recompile.
  """
  mesh = mesh if mesh is not None else make_mesh()
  skip = airbench.identity_convs(variables) if search_cfg.skip_identity_convs else frozenset()
  # XLA's conv: the search only runs forward, whose values every conv_impl shares.
  model = model.clone(identity_convs=skip, conv_impl='xla')
  search = functools.partial(evolve.search_batch, model, cfg=search_cfg, ops=ops)
  run = jax.jit(jax.shard_map(
      lambda v, x, y, i: search(v, images=x, labels=y, indices=i), mesh=mesh,
      in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)), out_specs=P(AXIS)))
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  sharded = NamedSharding(mesh, P(AXIS))

  def search_fn(images, labels, indices):
    b = len(images)
    # Padding (repeating the last image; its extra results are dropped) happens outside the
    # jit, so every B that pads to the same size shares one compile.
    padded = -(-b // mesh.size) * mesh.size
    inputs = [np.pad(np.asarray(a, dtype), [(0, padded - b)] + [(0, 0)] * (np.ndim(a) - 1),
                     'edge')
              for a, dtype in ((images, np.float32), (labels, np.int32), (indices, np.int32))]
    result = run(variables, *jax.device_put(inputs, sharded))
    return jax.tree.map(lambda a: a[:b], result)
  return search_fn
