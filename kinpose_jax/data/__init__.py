"""Human3.6M / MPII data: caches of the original -> validated ArrayRecord shards -> grain input pipeline.

Modules (one job each):

* :mod:`~kinpose_jax.data.h36m_format` — the original's on-disk formats (docs/DESIGN.md#h36m-on-disk): cache pickles,
  ``matlab_meta.txt``, folder names, image path re-rooting, record validation.
* :mod:`~kinpose_jax.data.records` — the record codec and ArrayRecord shard writing/reading,
  ``dataset_info.json``.
* :mod:`~kinpose_jax.data.convert` — caches (or annotation files) -> shards, resumable.
* :mod:`~kinpose_jax.data.augment` — docs/DESIGN.md#training-sample: augmentation draws, the patch affine, the warp,
  pixel normalization, joint targets, and decoding predictions back to image space.
* :mod:`~kinpose_jax.data.pipeline` — grain pipelines for training and evaluation.
* :mod:`~kinpose_jax.data.synthetic` / :mod:`~kinpose_jax.data.render` — a synthetic
  Human3.6M written in the original's exact layout.

Nothing here imports TensorFlow or torch.
"""


class DataError(ValueError):
    """Bad input data. The message names the file, the record and the field at fault and
    what was expected."""
