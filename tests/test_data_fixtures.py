"""Shared, once-per-process test data for the data tests (no tests here): a tiny synthetic
Human3.6M converted to shards. Kept small so the data tests stay fast on 2 cores."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

SMALL = dict(train_folders=2, frames_per_folder=8, valid_folders=1, valid_frames_per_folder=6, image_size=160,
             seed=3)


@functools.lru_cache(maxsize=None)
def synthetic_root() -> str:
    """A generated + converted tiny synthetic set: ``<root>/hm36/...`` and ``<root>/records``."""
    from kinpose_jax.data import convert
    from kinpose_jax.synthetic import h36m as synthetic

    root = tempfile.mkdtemp(prefix="kinpose_data_test_")
    atexit.register(shutil.rmtree, root, True)
    synthetic.generate(root, log=lambda *_: None, **SMALL)
    for image_set in ("train", "validmin"):
        convert.convert_h36m(root, image_set, records_per_shard=5, progress=False, log=lambda *_: None)
    return root
