"""Synthetic generator: regenerating with other parameters leaves no stale outputs (and the
converter accepts the result), foreign data is never touched, and the pose geometry is
computed in float64 numpy (platform-independent) and matches the JAX forward kinematics."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kinpose_jax.data import DataError, convert, h36m_layout, records
from kinpose_jax.synthetic import h36m as synthetic

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

QUIET = dict(progress=False, log=lambda *_: None)
TINY = dict(train_folders=2, frames_per_folder=3, valid_folders=1, valid_frames_per_folder=2, image_size=64, seed=1)


def _listing(hm36, sub):
    path = os.path.join(hm36, sub)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_regenerate_with_other_params_then_convert(tmp_path):
    root = str(tmp_path)
    hm36 = os.path.join(root, "hm36")
    synthetic.generate(root, log=lambda *_: None, **TINY)
    info = convert.convert_h36m(root, "train", num_workers=0, **QUIET)
    assert info["num_records"] == 6
    assert _listing(hm36, "HM36_train_cache") == ["HM36_train_w256xh256_keypoint_db_sample3.pkl"]
    assert len(_listing(hm36, "annot")) == 3 and len(_listing(hm36, "images")) == 3
    # files the user put beside the set are not the generator's: they must survive
    (tmp_path / "hm36" / "notes.txt").write_text("mine")
    (tmp_path / "hm36" / "annot" / "README").write_text("mine too")

    smaller = dict(TINY, train_folders=1, frames_per_folder=2)
    messages = []
    synthetic.generate(root, log=messages.append, **smaller)
    assert any("removed" in m for m in messages)
    assert _listing(hm36, "HM36_train_cache") == ["HM36_train_w256xh256_keypoint_db_sample2.pkl"]
    annot = [f for f in _listing(hm36, "annot") if f != "README"]
    assert annot == ["s_01_act_02_subact_01_ca_01", "s_09_act_02_subact_01_ca_01"]
    assert _listing(hm36, "images") == annot
    assert len(_listing(hm36, os.path.join("images", annot[0]))) == 2
    assert (tmp_path / "hm36" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "hm36" / "annot" / "README").read_text() == "mine too"

    # conversion of both the cache and the annotation path sees only the new set
    info = convert.convert_h36m(root, "train", num_workers=0, **QUIET)
    assert info["num_records"] == 2
    shards = records.ShardedRecords(os.path.join(root, "records", "hm36_train"))
    assert sorted(shards[i]["image_path"] for i in range(len(shards))) == [
        "s_01_act_02_subact_01_ca_01/s_01_act_02_subact_01_ca_01_000001.jpg",
        "s_01_act_02_subact_01_ca_01/s_01_act_02_subact_01_ca_01_000002.jpg"]
    ann = convert.convert_h36m(root, "train", str(tmp_path / "ann"), source="annotations", sample=-1,
                               num_workers=0, **QUIET)
    assert ann["num_records"] == 2
    valid = convert.convert_h36m(root, "validmin", num_workers=0, **QUIET)
    assert valid["num_records"] == 2


def test_interrupted_generation_is_cleaned_up(tmp_path):
    root = str(tmp_path)
    hm36 = tmp_path / "hm36"
    synthetic.generate(root, log=lambda *_: None, **TINY)
    marker = hm36 / "synthetic.json"
    stored = json.loads(marker.read_text())
    # a run killed half-way: the marker says "incomplete", a folder of other parameters lingers
    marker.write_text(json.dumps({"params": stored["params"], "complete": False}))
    stale = hm36 / "images" / "s_07_act_09_subact_02_ca_04"
    stale.mkdir()
    (stale / "x.jpg").write_bytes(b"stale")
    synthetic.generate(root, log=lambda *_: None, **TINY)
    assert not stale.exists()
    assert json.loads(marker.read_text())["complete"] is True


def test_foreign_data_is_never_touched(tmp_path):
    hm36 = tmp_path / "hm36"
    folder = hm36 / "annot" / "s_01_act_02_subact_01_ca_01"
    folder.mkdir(parents=True)
    (folder / "matlab_meta.txt").write_text("real data")
    with pytest.raises(DataError, match="not written by the synthetic generator"):
        synthetic.generate(str(tmp_path), log=lambda *_: None, **TINY)
    assert (folder / "matlab_meta.txt").read_text() == "real data"
    assert not (hm36 / "synthetic.json").exists()
    with pytest.raises(DataError, match="not a synthetic set"):
        synthetic.remove_generated_outputs(str(hm36))
    assert (folder / "matlab_meta.txt").exists()
    # a marker that is not the generator's JSON is refused too
    (hm36 / "synthetic.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not the synthetic generator's marker"):
        synthetic.generate(str(tmp_path), log=lambda *_: None, **TINY)
    assert (folder / "matlab_meta.txt").read_text() == "real data"


def test_force_regenerates_identically(tmp_path):
    root = str(tmp_path)
    synthetic.generate(root, log=lambda *_: None, **TINY)
    meta = tmp_path / "hm36" / "annot" / "s_05_act_02_subact_01_ca_02" / "matlab_meta.txt"
    before = meta.read_bytes()
    synthetic.generate(root, log=lambda *_: None, force=True, **TINY)
    assert meta.read_bytes() == before
    cache = h36m_layout.find_cache(str(tmp_path / "hm36"), "train")
    assert cache.endswith("sample3.pkl")


def test_pose_geometry_is_float64_and_matches_float32_fk():
    """The generator's forward kinematics runs in float64 on the CPU (the same numbers on every
    platform) and agrees with the library's float32 forward kinematics to float32 rounding."""
    import jax.numpy as jnp

    from kinpose_jax import kinematics

    tree = kinematics.presets.h36m18()
    angles, _ = synthetic.sample_pose_params(np.random.default_rng(4), 32, tree)
    scales = np.random.default_rng(5).uniform(0.9, 1.1, 32)
    got = synthetic.forward_kinematics_cpu64(tree, angles, scales)
    assert got.dtype == np.float64 and got.shape == (32, 18, 3)
    ref = np.asarray(kinematics.forward_kinematics(tree, jnp.asarray(angles, jnp.float32),
                                                   scale=jnp.asarray(scales, jnp.float32)).joints, np.float64)
    np.testing.assert_allclose(got, ref, atol=0.02)  # mm; float32 rounding of ~1 m coordinates
    # independent facts: zero angles give the rest pose, whose bone lengths are the tree's offsets
    rest = synthetic.forward_kinematics_cpu64(tree, np.zeros((1, tree.num_dofs)), np.array([2.0]))[0]
    knee, ankle = rest[2], rest[3]
    np.testing.assert_allclose(np.linalg.norm(ankle - knee),
                               2.0 * np.linalg.norm(np.asarray(tree.offsets)[tree.names.index(tree.joint_names[3])]),
                               rtol=1e-12)
    np.testing.assert_allclose(rest[17], rest[[11, 14]].mean(0), atol=1e-9)  # thorax = mean of shoulders
    # world joints come out as float64 numpy
    world = synthetic.poses_to_world(tree, angles, scales, np.zeros((32, 2)))
    assert isinstance(world, np.ndarray) and world.dtype == np.float64
    np.testing.assert_allclose(world[:, [3, 6], 2].min(axis=1), 90.0, atol=1e-9)


def test_cli_refuses_a_foreign_folder(tmp_path, capsys):
    from tests import data_prep_scripts

    cli = data_prep_scripts.load("make_synthetic_h36m")
    (tmp_path / "hm36" / "images").mkdir(parents=True)
    assert cli.main(["--root", str(tmp_path), "--no_convert"]) == 2
    assert "not written by the synthetic generator" in capsys.readouterr().err
    assert os.listdir(tmp_path / "hm36") == ["images"]


def test_one_set_of_synthetic_defaults(monkeypatch):
    """The README's `make_synthetic_h36m.py --root data/synthetic` writes the set main.py's default
    config trains on (else each would delete and regenerate the other's)."""
    import inspect
    import sys

    from tests import data_prep_scripts

    sys.path.insert(0, os.path.dirname(data_prep_scripts.DATA_PREP))
    from configs import synthetic as synthetic_config

    d = synthetic.DEFAULTS
    config = synthetic_config.get_config().data
    assert (config.synthetic_train_folders, config.synthetic_frames_per_folder, config.synthetic_image_size) == (
        d["train_folders"], d["frames_per_folder"], d["image_size"])
    assert config.root == "data/synthetic"
    sig = inspect.signature(synthetic.generate).parameters
    assert {k: sig[k].default for k in d} == d
    cli = data_prep_scripts.load("make_synthetic_h36m")
    parser_defaults = {}

    def fake_generate(root, **kwargs):
        parser_defaults.update(kwargs, root=root)
        return {}

    monkeypatch.setattr(cli.synthetic, "generate", fake_generate)
    assert cli.main(["--no_convert"]) == 0
    assert parser_defaults.pop("root") == config.root
    assert {k: parser_defaults[k] for k in d} == d
