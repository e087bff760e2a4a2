"""The optional TFDS builder (data_prep/tfds_h36m.py): builds ArrayRecord files without
TensorFlow and reads back the same labels and JPEG bytes as the converter's shards.
Skipped when tensorflow-datasets (the ``tfds`` extra) is not installed."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

from kinpose_jax.data import records
from tests.test_data_fixtures import synthetic_root

tfds = pytest.importorskip("tensorflow_datasets")


def _load_builder_module():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_prep", "tfds_h36m.py")
    spec = importlib.util.spec_from_file_location("tfds_h36m", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tfds_builder_matches_shards(tmp_path):
    root = synthetic_root()
    module = _load_builder_module()
    builder = module.H36mSeed(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    source = tfds.data_source("h36m_seed", data_dir=str(tmp_path), split="validmin")
    shards = records.ShardedRecords(os.path.join(root, "records", "hm36_validmin"))
    assert len(source) == len(shards) == 6
    by_path = {shards[i]["image_path"]: shards[i] for i in range(len(shards))}
    for i in range(len(source)):
        ex = source[i]
        path = ex["image_path"].decode() if isinstance(ex["image_path"], bytes) else ex["image_path"]
        ref = by_path[path]
        assert ex["image"] == ref["image"]
        for key in ("joints_img", "joints_vis", "joints_cam", "center", "box_size", "pelvis", "fl", "c_p"):
            np.testing.assert_array_equal(np.asarray(ex[key]), ref[key])
    if importlib.util.find_spec("tensorflow") is None:
        assert "tensorflow" not in sys.modules
