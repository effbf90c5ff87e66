"""Layer-wise evolutionary search of per-image targets (paper section 3.1; docs/method.md
section 3).

Fitness is a LOSS everywhere: cross-entropy against the label, lower is better, NaN -> +inf.
"""

from decouple_jax.search import fast
from decouple_jax.search import gradient
from decouple_jax.search import layer
from decouple_jax.search import mutation
from decouple_jax.search import operators
from decouple_jax.search import registry
from decouple_jax.search import store_ids
from decouple_jax.search.evolve import Population
from decouple_jax.search.evolve import SearchResult
from decouple_jax.search.evolve import search_layer
from decouple_jax.search.evolve import generation_step
from decouple_jax.search.evolve import generation_step_with_draws
from decouple_jax.search.evolve import search_batch
from decouple_jax.search.evolve import search_image
from decouple_jax.search.mutation import Draws
from decouple_jax.search.mutation import draw_generation
from decouple_jax.search.registry import register
from decouple_jax.search.sharding import make_mesh
from decouple_jax.search.sharding import images_per_call
from decouple_jax.search.sharding import make_search_fn
from decouple_jax.search.sharding import search_images
from decouple_jax.search.sharding import search_in_batches
from decouple_jax.search.driver import run_search
from decouple_jax.search.driver import search_summary
from decouple_jax.search.target_store import StoreError
from decouple_jax.search.target_store import StoreSpec
from decouple_jax.search.target_store import TargetStore
from decouple_jax.search.target_store import indices_hash

__all__ = [
    'Draws',
    'Population',
    'SearchResult',
    'StoreError',
    'StoreSpec',
    'TargetStore',
    'draw_generation',
    'fast',
    'generation_step',
    'generation_step_with_draws',
    'gradient',
    'images_per_call',
    'indices_hash',
    'layer',
    'make_mesh',
    'make_search_fn',
    'mutation',
    'operators',
    'register',
    'registry',
    'run_search',
    'search_batch',
    'search_image',
    'search_images',
    'search_in_batches',
    'search_layer',
    'search_summary',
    'store_ids',
]
