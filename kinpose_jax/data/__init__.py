"""Human3.6M / MPII data: caches of the original -> validated ArrayRecord shards -> grain input pipeline.

Modules (one job each):

* :mod:`~kinpose_jax.data.h36m_layout` — the original's folder layout (docs/DESIGN.md#h36m-on-disk): splits,
  folder, image and cache file names, image path re-rooting.
* :mod:`~kinpose_jax.data.h36m_cache` — the original's cache pickles, read safely and written.
* :mod:`~kinpose_jax.data.matlab_meta` — ``matlab_meta.txt`` parsing and records built from it.
* :mod:`~kinpose_jax.data.record_checks` — validation and plausibility of every record read.
* :mod:`~kinpose_jax.data.image_checks` — complete, decodable images (truncated JPEG files refused).
* :mod:`~kinpose_jax.data.records` — the record codec and ArrayRecord shard writing/reading,
  ``dataset_info.json``.
* :mod:`~kinpose_jax.data.convert` — caches (or annotation files) -> shards, resumable.
* :mod:`~kinpose_jax.data.augment` — docs/DESIGN.md#training-sample: augmentation draws, the patch affine, the warp,
  pixel normalization, joint targets, and decoding predictions back to image space.
* :mod:`~kinpose_jax.data.pipeline` — grain pipelines for training and evaluation.
* :mod:`~kinpose_jax.data.setup` — what ``main.py`` runs before training: conversion by process 0.

The synthetic Human3.6M generator is :mod:`kinpose_jax.synthetic`.

Nothing here imports TensorFlow or torch.
"""


class DataError(ValueError):
    """Bad input data. The message names the file, the record and the field at fault and
    what was expected."""
