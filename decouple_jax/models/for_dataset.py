"""A network of the family for a data set: built from its config, its stem whitened on the
data set's own images.

The initialisers themselves (:mod:`decouple_jax.models.init`) are pure functions of arrays; this
is where a config and a :class:`decouple_jax.data.Dataset` meet them.
"""

from __future__ import annotations

import jax
import numpy as np

from decouple_jax import data
from decouple_jax.models.airbench import AirbenchNet, build
from decouple_jax.models.init import init_model


def init_for_dataset(model_cfg, ds: data.Dataset, seed: int,
                     **overrides) -> tuple[AirbenchNet, dict]:
  """(model, variables) of ``model_cfg`` for data set ``ds``, deterministic in ``seed``.

  The whitening stem is set from ds's first ``model_cfg.whiten_images`` training images;
  ``overrides`` go to :func:`decouple_jax.models.build` (e.g. ``detach_head=True``).
  """
  model = build(model_cfg, ds.num_classes, ds.image_shape[-1], **overrides)
  whiten = np.asarray(data.normalize(ds.train_images[:model_cfg.whiten_images], ds.mean, ds.std))
  variables = init_model(model, jax.random.key(seed), whiten, model_cfg.whiten_eps)
  return model, variables
