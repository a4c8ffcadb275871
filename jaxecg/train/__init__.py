"""Training: YAML experiment configs, optax optimisers, the data-parallel loop, Orbax checkpoints.

Entry points: :func:`jaxecg.train.config.load_config` and
:func:`jaxecg.train.loop.train` (the ``jaxecg train`` command is
:mod:`jaxecg.train.cli`).
"""
