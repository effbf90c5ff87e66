"""The airbench network family with block taps, and its initialisers."""

from decouple_jax.models.airbench import (AirbenchNet, LOGITS, NUM_TAPS, build, identity_convs,
                                          tap_shapes)
from decouple_jax.models.init import (dirac_kaiming_uniform, init_for_dataset, init_model,
                                      init_whitening, is_identity_kernel, kaiming_uniform,
                                      whitening_kernel)
