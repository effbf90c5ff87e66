"""decouple_jax: "Decoupling Search and Learning in Neural Net Training" (arXiv 2509.10973) in
JAX, as composable search primitives, a learner, and the paper's experiments.

The public modules are those in ``__all__`` (``from decouple_jax import config, data, search``);
README.md's "The library in one screen" shows them at work. Importing this package imports
none of them.
"""

__all__ = [
    'analysis',       # the paper's figures: search scaling, diversity, trajectories
    'cli',            # what launch scripts share (flags, one-line errors); not the library's
    'config',         # typed, frozen configs
    'config_files',   # configs/<x>.py:variant loaded by path
    'data',           # data sets: sources, loading, splits, fetching, augmentation
    'distributed',    # runs of several processes
    'ensemble',       # ensembles of students on K searches, of student seeds, of SGD seeds
    'feedback',       # search and learning in a loop
    'learn',          # the trainer, the SGD baseline, the student
    'locks',          # one writer per directory
    'memory',         # what fits a device
    'models',         # the airbench network family with taps
    'report',         # results.json -> table.md
    'reproduce',      # search + students + SGD over seeds
    'runlog',         # run records: metrics, atomic JSON, progress bars
    'search',         # the layer-wise evolutionary search of targets
]
