"""The optional TFDS builder (data_prep/tfds_h36m.py): builds ArrayRecord files without
TensorFlow and reads back the same labels and JPEG bytes as the converter's shards.
Skipped when tensorflow-datasets (the ``tfds`` extra) is not installed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import numpy as np
import pytest

from kinpose_jax.data import records
from tests.test_data_fixtures import synthetic_root

tfds = pytest.importorskip("tensorflow_datasets")


def _load_builder_module():
    from tests import data_prep_scripts

    return data_prep_scripts.load("tfds_h36m")


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


def test_tfds_builder_image_root(tmp_path):
    """Caches whose images live elsewhere: --image_root re-roots them, as convert_h36m does; without
    it the missing default folder is a clear error."""
    from kinpose_jax.data import DataError

    src = os.path.join(synthetic_root(), "hm36")
    root = tmp_path / "root"
    for image_set in ("train", "validmin"):
        shutil.copytree(os.path.join(src, f"HM36_{image_set}_cache"), root / "hm36" / f"HM36_{image_set}_cache")
    elsewhere = tmp_path / "moved_images"
    shutil.copytree(os.path.join(src, "images"), elsewhere)
    module = _load_builder_module()
    with pytest.raises(DataError, match="does not exist .pass --image_root"):
        module.H36mSeed(data_dir=str(tmp_path / "a"), file_format="array_record").download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    module.main(["--root", str(root), "--data_dir", str(tmp_path / "b"), "--image_root", str(elsewhere)])
    source = tfds.data_source("h36m_seed", data_dir=str(tmp_path / "b"), split="validmin")
    shards = records.ShardedRecords(os.path.join(synthetic_root(), "records", "hm36_validmin"))
    by_path = {shards[i]["image_path"]: shards[i]["image"] for i in range(len(shards))}
    assert len(source) == 6
    for i in range(len(source)):
        path = source[i]["image_path"]
        assert source[i]["image"] == by_path[path.decode() if isinstance(path, bytes) else path]
