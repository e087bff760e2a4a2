"""The training driver: the pieces ``main.py`` runs, built on the pure-functional core.

* :mod:`~kinpose_jax.training.train` — train state, the jitted data-parallel step, the loop.
* :mod:`~kinpose_jax.training.parallel` — the device mesh, batch sharding and host <-> device moves.
* :mod:`~kinpose_jax.training.checkpointing` — orbax checkpoints: save, restore, damaged-checkpoint skips.
* :mod:`~kinpose_jax.training.evaluation` — the jitted evaluation step, error tables by action/subject/camera.
* :mod:`~kinpose_jax.training.reporting` — metrics.jsonl, TensorBoard, markdown reports and plots.
"""
