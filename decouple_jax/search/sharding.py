"""The batched search over devices: image axis sharded, weights replicated, no collectives.

A 1-D mesh (axis ``'images'``) splits each batch across devices; every device runs
:func:`decouple_jax.search.evolve.search_batch` on its own images under ``jax.shard_map``.
Images never interact, so there is no communication, and because each image's randomness
comes from its dataset index, an image gets the same draws on any number of devices and in any
batch. Its result is the same up to float rounding: XLA's CPU reductions sum in an order that
depends on the batch shape, which moves values by about an ulp.

:func:`search_images` searches N images in memory (arrays in, targets out); the disk-backed
search (:mod:`decouple_jax.search.driver`) calls the same :meth:`SearchFn.search` chunk by chunk.
Underneath, :func:`search_in_batches` is the one loop: calls of one fixed batch shape, the last
one padded, so nothing recompiles; :func:`images_per_call` sizes that batch, from the device's
memory when ``search.batch_images`` is 'auto'.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from decouple_jax import memory
from decouple_jax.config import SearchConfig
from decouple_jax.mesh import mesh_1d
from decouple_jax.models import airbench
from decouple_jax.search import evolve

AXIS = 'images'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'images' over this process's devices among ``devices`` (default:
  all of them): the processes of a multi-process search each search their own chunks."""
  devices = jax.local_devices() if devices is None else devices
  return mesh_1d(AXIS, [d for d in devices if d.process_index == jax.process_index()])


class SearchFn:
  """The jitted search of a batch of images, sharded over a mesh's 'images' axis.

  ``fn(images_norm (B, H, W, C) float32, labels (B,) int32, indices (B,) int32) ->
  SearchResult`` with leading axis B, a multiple of the mesh's devices; a second call with the
  same B does not recompile. :meth:`search` searches any number of images with it, in batches
  it sizes itself. Build it with :func:`make_search_fn`.
  """

  def __init__(self, model: airbench.AirbenchNet, variables, search_cfg: SearchConfig,
               mesh: jax.sharding.Mesh):
    skip = airbench.identity_convs(variables) if search_cfg.skip_identity_convs else frozenset()
    # Always XLA's conv (the fastest forward, and the search only runs forward): the targets
    # do not depend on conv_impl, which the store's identity leaves out.
    model = model.clone(identity_convs=skip, conv_impl='xla')
    search = functools.partial(evolve.search_batch, model, cfg=search_cfg)
    self.mesh = mesh
    self.cfg = search_cfg
    self._run = jax.jit(jax.shard_map(
        lambda v, x, y, i: search(v, images=x, labels=y, indices=i), mesh=mesh,
        in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)), out_specs=P(AXIS)))
    self._variables = jax.device_put(variables, NamedSharding(mesh, P()))
    self._sharded = NamedSharding(mesh, P(AXIS))
    self._compiled: dict[tuple, jax.stages.Compiled] = {}
    # image shape -> (images per device it was sized for at most, images per call)
    self._sized: dict[tuple, tuple[int, int]] = {}

  def _check(self, b: int) -> None:
    if b % self.mesh.size:
      raise ValueError(f'a batch of {b} images does not split over {self.mesh.size} devices: '
                       f'give a multiple of {self.mesh.size}, or use search_in_batches, which '
                       'pads')

  def __call__(self, images, labels, indices) -> evolve.SearchResult:
    self._check(len(images))
    inputs = [np.asarray(a, dtype) for a, dtype in
              ((images, np.float32), (labels, np.int32), (indices, np.int32))]
    return self._run(self._variables, *jax.device_put(inputs, self._sharded))

  def compile(self, batch: int, image_shape: tuple[int, ...]) -> jax.stages.Compiled:
    """The program for ``batch`` images of ``image_shape`` (H, W, C), compiled once; a call
    with that batch then runs it without compiling again."""
    self._check(batch)
    key = (batch, tuple(image_shape))
    if key not in self._compiled:
      spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self._sharded)
      self._compiled[key] = self._run.lower(
          self._variables, spec((batch, *image_shape), np.float32), spec((batch,), np.int32),
          spec((batch,), np.int32)).compile()
    return self._compiled[key]

  @property
  def weight_bytes(self) -> int:
    """Bytes of the replicated network on each device."""
    return sum(x.nbytes for x in jax.tree.leaves(self._variables))

  def batch(self, image_shape: tuple[int, ...], n_images: int,
            memory_bytes: int | None = None) -> int:
    """Images per call for searching ``n_images`` of ``image_shape`` (H, W, C):
    :func:`images_per_call`, sized once and reused by later calls it serves (a store's
    smaller last chunk, say), so they compile nothing."""
    shape, upper = tuple(image_shape), math.ceil(n_images / self.mesh.size)
    sized_for, batch = self._sized.get(shape, (0, 0))
    # A batch sized for fewer images than asked is too small only if memory did not limit it.
    if upper > sized_for and batch == sized_for * self.mesh.size:
      batch = images_per_call(self, self.cfg, shape, n_images, memory_bytes)
      self._sized[shape] = (upper, batch)
    return batch

  def sized_batch(self, image_shape: tuple[int, ...]) -> int | None:
    """Images per call of the last :meth:`batch` sized for ``image_shape``, or None."""
    return self._sized.get(tuple(image_shape), (0, None))[1]

  def search(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, *,
             memory_bytes: int | None = None,
             on_batch: Callable[[evolve.SearchResult], None] | None = None
             ) -> evolve.SearchResult:
    """Searches N images in memory, in calls of :meth:`batch` images.

    Args:
      images: (N, H, W, C) normalised float images; labels (N,) int; indices (N,) their
        dataset indices (every image's randomness derives from (seed, its index)).
      memory_bytes: usable bytes per device for sizing the batch (see
        :func:`images_per_call`).
      on_batch: called with each batch's results (host arrays) as they come.

    Returns:
      The :class:`~decouple_jax.search.evolve.SearchResult` of the N images, NumPy arrays:
      targets per layer (N, *S_l), best_loss (N, 4), target_loss (N, 4), init_loss (N,),
      curves per layer.
    """
    batch = self.batch(images.shape[1:], len(images), memory_bytes)
    return search_in_batches(self, batch, images, labels, indices, on_batch=on_batch)


def make_search_fn(model: airbench.AirbenchNet, variables, search_cfg: SearchConfig,
                   mesh: jax.sharding.Mesh | None = None) -> SearchFn:
  """The jitted, sharded search of a batch of images (:class:`SearchFn`).

  Identity convolutions are found once here, on these concrete ``variables``, and skipped by
  the model's own forward (:attr:`~decouple_jax.models.AirbenchNet.identity_convs`).

  Args:
    model: the search network: the untrained one of ``search_cfg.model``, or any network of
      the family (a trained student, say), whose taps are then what is searched.
    variables: its {'params', 'batch_stats'} (replicated on every device).
    search_cfg: the search configuration, its operators too (``search_cfg.operators``).
    mesh: a 1-D mesh with axis 'images' (default: this process's devices, :func:`make_mesh`).
  """
  return SearchFn(model, variables, search_cfg, mesh if mesh is not None else make_mesh())


def images_per_call(search_fn: SearchFn, search_cfg: SearchConfig,
                    image_shape: tuple[int, ...], n_images: int,
                    memory_bytes: int | None = None) -> int:
  """Images per call of ``search_fn``: ``search_cfg.batch_images`` per device times the
  devices, compiled for that batch.

  With ``batch_images='auto'``, as many per device as the compiled program fits in the
  device's memory (:func:`decouple_jax.memory.largest_batch`); a number is checked against
  it instead. Either way no more than ``n_images`` (the most a caller searches at once, e.g.
  a store chunk) need.

  Args:
    search_fn: the search.
    search_cfg: its config.
    image_shape: (H, W, C) of the images.
    n_images: how many images a caller searches at most in one go.
    memory_bytes: usable bytes per device (default :func:`decouple_jax.memory.device_memory`);
      give a pretend size to see what a smaller device would do.

  Raises:
    decouple_jax.memory.DoesNotFit: the setting (or one image per device) does not fit, with
      the numbers.
  """
  devices = search_fn.mesh.size
  budget = memory_bytes if memory_bytes is not None else memory.device_memory(
      search_fn.mesh.devices.flat[0])
  bytes_at = lambda b: memory.program_bytes(search_fn.compile(b * devices, image_shape))
  upper = math.ceil(n_images / devices)
  if search_cfg.batch_images == 'auto':
    per_device = memory.largest_batch(bytes_at, search_fn.weight_bytes, budget, upper,
                                      what='image')
  else:
    per_device = min(search_cfg.batch_images, upper)
    memory.check_fits(bytes_at(per_device), budget, f'search.batch_images={per_device}',
                      "lower it, or set it to 'auto' to fit the device")
  return per_device * devices


def search_images(images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                  search_cfg: SearchConfig, network: tuple, *,
                  mesh: jax.sharding.Mesh | None = None, memory_bytes: int | None = None,
                  on_batch: Callable[[evolve.SearchResult], None] | None = None
                  ) -> evolve.SearchResult:
  """The search of N images in memory: arrays in, targets per layer out.

  One call of :meth:`SearchFn.search` on a new :func:`make_search_fn`: batches sized to the
  devices' memory, sharded over them. To search several sets of images with one network and
  config, build the :class:`SearchFn` once and call its ``search``, which compiles once.

  Args:
    images: (N, H, W, C) normalised float images (``data.normalize(uint8, ds.mean, ds.std)``).
    labels: (N,) int labels.
    indices: (N,) int dataset indices (each image's randomness derives from them).
    search_cfg: the search.
    network: (model, variables) searched in, e.g. ``models.init_for_dataset(search_cfg.model,
      ds, search_cfg.untrained_network_seed)`` (the untrained search network) or a trained
      student.
    mesh: as for :func:`make_search_fn` (the operators are ``search_cfg.operators``).
    memory_bytes: usable bytes per device for sizing the batch (see :func:`images_per_call`).
    on_batch: called with each batch's results (host arrays) as they come, e.g. for progress.

  Returns:
    The :class:`~decouple_jax.search.evolve.SearchResult`, NumPy arrays: ``targets`` per layer
    (N, *S_l), ``best_loss`` and ``target_loss`` (N, L), ``init_loss`` (N,), ``curves`` per
    layer (N, G_l).
  """
  model, variables = network
  return make_search_fn(model, variables, search_cfg, mesh).search(
      images, labels, indices, memory_bytes=memory_bytes, on_batch=on_batch)


def search_in_batches(search_fn: Callable[..., evolve.SearchResult], batch: int,
                      images: np.ndarray, labels: np.ndarray, indices: np.ndarray, *,
                      on_batch: Callable[[evolve.SearchResult], None] | None = None
                      ) -> evolve.SearchResult:
  """Searches N images in calls of ``batch`` images each, the last padded by repeating its
  last image (whose extra results are dropped), so every call has one shape.

  Args:
    search_fn: e.g. a :class:`SearchFn`.
    batch: images per call (:func:`images_per_call`).
    images: (N, H, W, C) normalised images; labels (N,); indices (N,) dataset indices.
    on_batch: called with each batch's results (host arrays) as they come, e.g. to show
      progress.

  Returns:
    The :class:`~decouple_jax.search.evolve.SearchResult` of the N images, as NumPy arrays.
  """
  n = len(images)
  parts = []
  for start in range(0, n, batch):
    pos = np.minimum(np.arange(start, start + batch), n - 1)
    result = search_fn(images[pos], labels[pos], indices[pos])
    parts.append(jax.tree.map(lambda a, k=min(batch, n - start): np.asarray(a)[:k], result))
    if on_batch is not None:
      on_batch(parts[-1])
  return jax.tree.map(lambda *a: np.concatenate(a), *parts)
