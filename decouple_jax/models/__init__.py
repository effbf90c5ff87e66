"""The airbench network family with block taps, its initialisers, and a network for a data set."""

from decouple_jax.models.airbench import (AirbenchNet, LOGITS, build, identity_convs,
                                          tap_shapes)
from decouple_jax.models.for_dataset import init_for_dataset
from decouple_jax.models.init import (dirac_kaiming_uniform, init_model, init_whitening,
                                      is_identity_kernel, kaiming_uniform, whitening_kernel)

__all__ = [
    'AirbenchNet',
    'LOGITS',
    'build',
    'dirac_kaiming_uniform',
    'identity_convs',
    'init_for_dataset',
    'init_model',
    'init_whitening',
    'is_identity_kernel',
    'kaiming_uniform',
    'tap_shapes',
    'whitening_kernel',
]
