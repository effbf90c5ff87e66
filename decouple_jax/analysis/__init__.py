"""The paper's analyses (its sections 3.2, 4.4, 4.5; docs/method.md section 7): search compute
scaling, target diversity, accuracy vs search compute, and representations over training.

The measures are in :mod:`~decouple_jax.analysis.diversity`, the experiments in
:mod:`~decouple_jax.analysis.scaling` and :mod:`~decouple_jax.analysis.trajectories`, the figures
in :mod:`~decouple_jax.analysis.plots`; :mod:`~decouple_jax.analysis.run` runs them for an
experiment.
"""

from decouple_jax.analysis.diversity import class_collision_entropy
from decouple_jax.analysis.diversity import collision_entropy
from decouple_jax.analysis.diversity import cosine_distance
from decouple_jax.analysis.diversity import effective_number
from decouple_jax.analysis.run import ANALYSES
from decouple_jax.analysis.run import run_analysis
from decouple_jax.analysis.run import training_experiment

__all__ = [
    'ANALYSES',
    'class_collision_entropy',
    'collision_entropy',
    'cosine_distance',
    'effective_number',
    'run_analysis',
    'training_experiment',
]
