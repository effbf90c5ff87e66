"""The paper's analyses (PAPER.md section 6): search compute scaling, target diversity, accuracy
vs search compute, and representations over training.

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
