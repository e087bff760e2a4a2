"""Synthetic generator -> converter: layout, determinism, idempotence, resuming, labels against
the renders, and every kind of bad input giving a clear error or a counted skip."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from kinpose_jax import geometry
from kinpose_jax.data import (DataError, convert, h36m_cache, h36m_layout, image_checks, matlab_meta, record_checks,
                              records)
from kinpose_jax.synthetic import h36m as synthetic, render
from tests.test_data_fixtures import SMALL, synthetic_root
from tests.tiny_problem import crop_layout

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

QUIET = dict(progress=False, log=lambda *_: None)


def test_layout_matches_the_seed():
    hm36 = os.path.join(synthetic_root(), "hm36")
    folders = sorted(os.listdir(os.path.join(hm36, "annot")))
    assert folders == ["s_01_act_02_subact_01_ca_01", "s_05_act_02_subact_01_ca_02", "s_09_act_02_subact_01_ca_01"]
    for f in folders:
        meta = matlab_meta.parse_matlab_meta(os.path.join(hm36, "annot", f, "matlab_meta.txt"))
        assert meta.image_size == (SMALL["image_size"], SMALL["image_size"])
        for k in range(meta.num_frames):
            assert os.path.exists(os.path.join(hm36, "images", f, f"{f}_{k + 1:06d}.jpg"))
    train = h36m_cache.load_cache(os.path.join(hm36, "HM36_train_cache",
                                                "HM36_train_w256xh256_keypoint_db_sample8.pkl"))
    valid = h36m_cache.load_cache(h36m_layout.find_cache(hm36, "validmin"))
    assert len(train) == 16 and len(valid) == 6
    assert set(train[0]) == set(h36m_cache.H36M_CACHE_KEYS)
    for i, rec in enumerate(train + valid):
        record_checks.validate_h36m_record(rec, i, "synthetic")
    # the person fills a reasonable part of the 2000 mm box: skeleton ~ 4 m of bones
    assert 3600 < np.mean([r["bone_len"] for r in train]) < 4700


def test_generator_is_deterministic_and_idempotent(tmp_path):
    kw = dict(SMALL, train_folders=1, frames_per_folder=3, valid_folders=1, valid_frames_per_folder=2)
    a, b, c = (str(tmp_path / n) for n in "abc")
    synthetic.generate(a, log=lambda *_: None, **kw)
    synthetic.generate(b, log=lambda *_: None, **kw)
    synthetic.generate(c, log=lambda *_: None, **dict(kw, seed=kw["seed"] + 1))
    rel = os.path.join("hm36", "images", "s_01_act_02_subact_01_ca_01", "s_01_act_02_subact_01_ca_01_000002.jpg")
    meta = os.path.join("hm36", "annot", "s_01_act_02_subact_01_ca_01", "matlab_meta.txt")
    for p in (rel, meta):
        assert open(os.path.join(a, p), "rb").read() == open(os.path.join(b, p), "rb").read()
        assert open(os.path.join(a, p), "rb").read() != open(os.path.join(c, p), "rb").read()
    mtime = os.path.getmtime(os.path.join(a, rel))
    messages = []
    synthetic.generate(a, log=messages.append, **kw)
    assert "already" in messages[0] and os.path.getmtime(os.path.join(a, rel)) == mtime


def test_converted_records_match_the_cache_and_the_annotations(tmp_path):
    root = synthetic_root()
    src = h36m_cache.load_cache(h36m_layout.find_cache(os.path.join(root, "hm36"), "train"))
    shards = records.ShardedRecords(os.path.join(root, "records", "hm36_train"))
    assert len(shards) == len(src)
    info = shards.info
    assert info["num_records"] == 16 and info["num_shards"] == 4 and info["num_skipped"] == 0
    assert info["max_reprojection_error_px"] < 1e-6 and set(info["cameras"]) == {
        "s_01_act_02_subact_01_ca_01", "s_05_act_02_subact_01_ca_02"}
    for i in range(len(src)):
        rec = shards[i]
        assert rec["index"] == i and rec["source_index"] == i and rec["dataset"] == "h36m"
        np.testing.assert_array_equal(rec["joints_img"], src[i]["joints_3d"])
        np.testing.assert_array_equal(rec["joints_cam"], src[i]["joints_3d_cam"])
        np.testing.assert_array_equal(rec["center"], [src[i]["center_x"], src[i]["center_y"]])
        with open(src[i]["image"], "rb") as f:
            assert rec["image"] == f.read()  # the JPEG as stored, not re-encoded
    # the annotation path (no cache) yields the same labels
    convert.convert_h36m(root, "train", str(tmp_path), source="annotations", sample=-1, **QUIET)
    ann = records.ShardedRecords(str(tmp_path / "hm36_train"))
    by_path = {ann[i]["image_path"]: ann[i] for i in range(len(ann))}
    assert len(by_path) == len(shards)
    for i in range(len(shards)):
        a = shards[i]
        b = by_path[a["image_path"]]
        for key in ("joints_img", "joints_cam", "center", "box_size", "pelvis", "fl", "c_p", "bone_len"):
            np.testing.assert_allclose(a[key], b[key], atol=1e-9, err_msg=key)


def test_projected_joints_land_on_the_rendered_limbs():
    """Labels (from matlab_meta via the converter's camera code) against the renderer's own
    part map (drawn with cv2.projectPoints): each joint's pixel shows one of the parts the
    joint belongs to, or a part drawn over it whose primitive lies at most a body radius
    (150 mm, primitives are depth-sorted by their centres) behind the joint (occlusion)."""
    root = synthetic_root()
    shards = records.ShardedRecords(os.path.join(root, "records", "hm36_train"))
    direct = total = 0
    wrong_convention = 0
    for i in range(0, len(shards), 2):
        rec = shards[i]
        folder, name = rec["image_path"].split("/")
        frame = int(name.rsplit("_", 1)[1].split(".")[0]) - 1
        _, parts, zbuf = synthetic.render_frame_maps(root, folder, frame)
        h, w = parts.shape
        for j in range(17):
            u, v = np.round(rec["joints_img"][j, :2]).astype(int)
            assert 0 <= u < w and 0 <= v < h
            depth = rec["joints_cam"][j, 2]
            total += 1
            if parts[v, u] in render.JOINT_PARTS[j]:
                direct += 1
            else:
                assert parts[v, u] != 0 and zbuf[v, u] < depth + 150.0, (i, j, parts[v, u])
        # negative control: with the rotation *not* transposed after reading, labels miss the limbs
        meta = matlab_meta.parse_matlab_meta(os.path.join(root, "hm36", "annot", folder, "matlab_meta.txt"))
        world = meta.joints_world[frame, meta.joint_ids - 1]
        cam = (meta.rotation.T @ (world - meta.position).T).T
        uv = geometry.project(cam, meta.focal, meta.center)
        for j in range(17):
            u, v = np.round(uv[j]).astype(int)
            wrong_convention += int(0 <= u < w and 0 <= v < h and parts[v, u] in render.JOINT_PARTS[j])
    assert direct / total > 0.75, direct / total  # the rest are occluded by nearer limbs
    assert wrong_convention / total < 0.25, wrong_convention / total


def test_stored_jpegs_show_the_person_at_the_labels():
    """The JPEG bytes stored in the shards (not a fresh render) show the person: on the person's
    pixels (part map eroded by 2 px against anti-aliased edges and chroma subsampling) they match
    the fresh noise-free render of the same frame, far better than the render of another frame
    (negative control); and the pixels at the projected joint labels match the render too."""
    import cv2

    root = synthetic_root()
    shards = records.ShardedRecords(os.path.join(root, "records", "hm36_train"))
    same, other, at_joints, at_other_joints = [], [], [], []
    for i in range(0, len(shards), 3):
        rec = shards[i]
        folder, name = rec["image_path"].split("/")
        frame = int(name.rsplit("_", 1)[1].split(".")[0]) - 1
        stored = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR).astype(np.float64)
        fresh, parts, _ = synthetic.render_frame_maps(root, folder, frame)
        wrong = synthetic.render_frame_maps(root, folder, (frame + 3) % SMALL["frames_per_folder"])[0]
        assert stored.shape == fresh.shape
        inner = cv2.erode((parts > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert inner.sum() > 100
        same.append(np.abs(stored - fresh)[inner].mean())
        other.append(np.abs(stored - wrong)[inner].mean())
        u, v = np.round(rec["joints_img"][:17, :2]).T.astype(int)
        at_joints.append(np.abs(stored[v, u] - fresh[v, u]).mean())
        # the other frame's joints, looked up in this frame's stored image
        j = shards[(i + 3) % len(shards)]["joints_img"][:17, :2]
        uo, vo = np.clip(np.round(j), 0, stored.shape[1] - 1).T.astype(int)
        at_other_joints.append(np.abs(stored[vo, uo] - fresh[vo, uo]).mean())
    assert max(same) < 20.0, same  # JPEG (quality 90, 4:2:0) on a ~160 px image
    assert min(other) > 40.0, other
    assert np.mean(at_joints) < 20.0 and np.mean(at_other_joints) > 2 * np.mean(at_joints), (at_joints,
                                                                                              at_other_joints)


def test_convert_is_idempotent_and_resumes(tmp_path):
    root = synthetic_root()
    out = str(tmp_path)
    info = convert.convert_h36m(root, "train", out, records_per_shard=3, **QUIET)
    ds = os.path.join(out, "hm36_train")
    paths = records.shard_paths(ds)
    assert len(paths) == 6 and info["shard_counts"] == [3, 3, 3, 3, 3, 1]
    mtimes = {p: os.path.getmtime(p) for p in paths}
    before = [records.ShardedRecords(ds)[i] for i in range(16)]
    msgs = []
    convert.convert_h36m(root, "train", out, records_per_shard=3, progress=False, log=msgs.append)
    assert "up to date" in msgs[0]
    assert {p: os.path.getmtime(p) for p in paths} == mtimes
    # interrupted run: the last two shards and the info never got written
    os.remove(paths[-1])
    os.remove(paths[-2])
    os.remove(os.path.join(ds, records.INFO_FILE))
    msgs = []
    convert.convert_h36m(root, "train", out, records_per_shard=3, progress=False, log=msgs.append)
    assert "resuming, 4/6" in msgs[0]
    assert all(os.path.getmtime(p) == mtimes[p] for p in paths[:4])
    after = records.ShardedRecords(ds)
    for i in range(16):
        for key in ("joints_img", "image", "index", "source_index"):
            np.testing.assert_array_equal(before[i][key], after[i][key])
    # a changed option starts afresh (no stale shards left behind)
    convert.convert_h36m(root, "train", out, records_per_shard=8, **QUIET)
    assert len(records.shard_paths(ds)) == 2


def _bad_setup(tmp_path, n=6):
    """A cache of ``n`` train records with their images copied under tmp_path/images."""
    root = synthetic_root()
    src = h36m_cache.load_cache(h36m_layout.find_cache(os.path.join(root, "hm36"), "train"))[:n]
    images = tmp_path / "images"
    for rec in src:
        folder, name = rec["image"].split(os.sep)[-2:]
        os.makedirs(images / folder, exist_ok=True)
        shutil.copy(rec["image"], images / folder / name)
    return src, str(images)


def _image_file(images, rec):
    return os.path.join(images, *rec["image"].split(os.sep)[-2:])


BAD_CASES = {
    "truncated_jpeg": (lambda recs, images: _truncate(_image_file(images, recs[2])),
                       r"record 2 field 'image' .*JPEG data is truncated"),
    "missing_image": (lambda recs, images: os.remove(_image_file(images, recs[2])),
                      r"record 2 field 'image' .*image file not found"),
    "nan_joints": (lambda recs, images: recs[2]["joints_3d"].__setitem__((5, 0), np.nan),
                   r"record 2 field 'joints_3d': non-finite values"),
    "wrong_shape": (lambda recs, images: recs[2].__setitem__("joints_3d_cam", np.zeros((18, 2))),
                    r"record 2 field 'joints_3d_cam': shape \(18, 2\), expected \(18, 3\)"),
    "wrong_keys": (lambda recs, images: recs[2].pop("fl"), r"record 2: missing keys \['fl'\]"),
    # well-formed but implausible: the record's index and image are named
    "huge_box": (lambda recs, images: recs[2].update(width=1e9, height=1e9),
                 r"record 2 \(image .*_000003\.jpg\) fields 'width'/'height': box 1e\+09 x 1e\+09 px is more than "
                 r"10x the 160 x 160 px image"),
    "box_11x_image": (lambda recs, images: recs[2].update(width=160 * 11.0),
                      r"record 2 \(image .*\) fields 'width'/'height'.*more than 10x"),
    "zero_box": (lambda recs, images: recs[2].update(height=0.0),
                 r"record 2 field 'height': 0.0 must be > 0 \[image .*_000003\.jpg\]"),
    "box_off_image": (lambda recs, images: recs[2].update(center_x=-5000.0),
                      r"record 2 \(image .*\) fields 'center_x'/'center_y': .* does not overlap the 160 x 160 px"),
    "labels_shifted_300px": (lambda recs, images: recs[2]["joints_3d"].__setitem__((slice(None), 0),
                                                                                   recs[2]["joints_3d"][:, 0] + 300),
                             r"record 2 \(image .*\) field 'joints_3d': joint \d+ is 300.0 px from the projection .* "
                             r"the labels contradict the camera"),
    "focal_doubled": (lambda recs, images: _double_focal(recs[2]),
                      r"record 2 fields 'fl'/'c_p' \(image .*_000003\.jpg\): fl \[.*\] .* differ from fl .* of 5 other "
                      r"records of sequence folder s_01_act_02_subact_01_ca_01"),
    "path_with_dotdot": (lambda recs, images: recs[2].update(image=os.path.join(
        os.path.dirname(recs[2]["image"]), "x", "..", os.path.basename(recs[2]["image"]))),
        r"record 2 field 'image': image path .*/x/\.\./.*_000003\.jpg' has a '\.\.' component"),
    "no_sequence_folder": (lambda recs, images: _move_out_of_folder(recs[2], images),
                           r"record 2 field 'image' .*: folder 'hm36' is not a sequence folder"),
}


def _double_focal(rec):
    """The focal length doubled with labels that agree with it: only the camera's other records
    show it is wrong."""
    rec["fl"] = rec["fl"] * 2
    rec["joints_3d"][:, :2] = geometry.project(rec["joints_3d_cam"], rec["fl"], rec["c_p"])


def _move_out_of_folder(rec, images):
    name = os.path.basename(rec["image"])
    os.makedirs(os.path.join(images, "hm36"), exist_ok=True)
    shutil.copy(_image_file(images, rec), os.path.join(images, "hm36", name))
    rec["image"] = os.path.join("/elsewhere", "hm36", name)


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inputs_raise_or_are_counted(tmp_path, case):
    recs, images = _bad_setup(tmp_path)
    mutate, pattern = BAD_CASES[case]
    mutate(recs, images)
    cache = str(tmp_path / "cache.pkl")
    h36m_cache.write_cache(cache, recs)
    with pytest.raises(DataError, match=pattern):
        convert.convert_h36m(str(tmp_path), "train", str(tmp_path / "out"), cache=cache, image_root=images, **QUIET)
    info = convert.convert_h36m(str(tmp_path), "train", str(tmp_path / "out"), cache=cache, image_root=images,
                                on_error="skip", records_per_shard=4, **QUIET)
    assert info["num_records"] == 5 and info["num_skipped"] == 1
    assert info["skipped"][0]["source_index"] == 2 and "record 2" in info["skipped"][0]["error"]
    stored = json.load(open(tmp_path / "out" / "hm36_train" / records.INFO_FILE))
    assert stored["num_skipped"] == 1
    shards = records.ShardedRecords(str(tmp_path / "out" / "hm36_train"))
    assert [shards[i]["source_index"] for i in range(len(shards))] == [0, 1, 3, 4, 5]
    assert [shards[i]["index"] for i in range(len(shards))] == [0, 1, 2, 3, 4]


def test_empty_cache_and_missing_dataset(tmp_path):
    cache = str(tmp_path / "empty.pkl")
    h36m_cache.write_cache(cache, [])
    with pytest.raises(DataError, match="holds no records"):
        convert.convert_h36m(str(tmp_path), "train", str(tmp_path / "out"), cache=cache, **QUIET)
    with pytest.raises(DataError, match="found neither a cache for set .train. .* nor annotations"):
        convert.convert_h36m(str(tmp_path), "train", str(tmp_path / "out"), **QUIET)
    with pytest.raises(DataError, match="not a converted dataset"):
        records.ShardedRecords(str(tmp_path / "nothing"))


def test_mpii_cache_converts_to_h36m_layout(tmp_path):
    """An MPII-style cache (16 joints, 2D) made from synthetic frames: joints mapped to H36M-18,
    depth weights 0, the missing torso/nose weight 0."""
    from kinpose_jax import skeleton

    recs, images = _bad_setup(tmp_path, n=4)
    flat = tmp_path / "mpii_images"
    os.makedirs(flat)
    h36m_to_mpii = {m: h for h, m in enumerate(skeleton.MPII_TO_H36M) if m >= 0}
    mpii = []
    for rec in recs:
        name = os.path.basename(rec["image"])
        shutil.copy(_image_file(images, rec), flat / name)
        joints = np.zeros((16, 3))
        for m in range(16):
            joints[m, :2] = rec["joints_3d"][h36m_to_mpii[m], :2] if m in h36m_to_mpii else rec["joints_3d"][10, :2]
        vis = np.concatenate([np.ones((16, 2)), np.zeros((16, 1))], axis=1)
        mpii.append({"image": "/elsewhere/mpii/images/" + name, "center_x": rec["center_x"],
                     "center_y": rec["center_y"], "width": rec["width"], "height": rec["height"],
                     "flip_pairs": np.array(skeleton.MPII_FLIP_PAIRS), "joints_3d": joints, "joints_3d_vis": vis})
    cache = tmp_path / "mpii" / "mpii_train_cache" / "mpii_train.pkl"
    h36m_cache.write_cache(str(cache), mpii)
    info = convert.convert_mpii(str(tmp_path), "train", str(tmp_path / "out"), image_root=str(flat), **QUIET)
    assert info["num_records"] == 4 and info["dataset"] == "mpii"
    shards = records.ShardedRecords(str(tmp_path / "out" / "mpii_train"))
    for i, rec in enumerate(recs):
        got = shards[i]
        assert got["dataset"] == "mpii"
        mapped = [j for j in range(18) if skeleton.MPII_TO_H36M[j] >= 0]
        np.testing.assert_array_equal(got["joints_img"][mapped, :2], rec["joints_3d"][mapped, :2])
        assert np.all(got["joints_vis"][:, 2] == 0) and np.all(got["joints_vis"][[7, 9]] == 0)


def test_dataset_info_records_camera_extrinsics(tmp_path):
    """Rotation and position in dataset_info.json (read from annot/<folder>/matlab_meta.txt)
    equal the generator's own cameras; a cache without annotations records intrinsics only."""
    root = synthetic_root()
    info = records.load_info(os.path.join(root, "records", "hm36_train"))
    cams = synthetic.make_cameras(SMALL["seed"], SMALL["image_size"])
    assert info["cameras"] and "matlab_meta.txt" in info["camera_extrinsics"]
    for folder, cam in info["cameras"].items():
        truth = cams[h36m_layout.parse_folder_name(folder)[3] - 1]
        np.testing.assert_allclose(cam["rotation"], truth.rotation, atol=1e-11)
        np.testing.assert_allclose(cam["position"], truth.position, atol=1e-5)
        np.testing.assert_allclose(cam["fl"], truth.focal, atol=1e-5)
        np.testing.assert_allclose(cam["c_p"], truth.center, atol=1e-5)
    recs, images = _bad_setup(tmp_path, n=3)
    cache = str(tmp_path / "cache.pkl")
    h36m_cache.write_cache(cache, recs)
    info = convert.convert_h36m(str(tmp_path), "train", str(tmp_path / "out"), cache=cache, image_root=images,
                                **QUIET)
    assert info["cameras"] and all("rotation" not in c and "position" not in c for c in info["cameras"].values())
    assert "0 of 1 cameras" in info["camera_extrinsics"]


def _convert_cli():
    from tests import data_prep_scripts

    return data_prep_scripts.load("convert_h36m")


def test_skip_then_fix_images_needs_force(tmp_path, capsys):
    """With --on_error skip a missing image is left out; after restoring it a plain re-run is
    (documented as) a no-op, --force converts afresh and includes it."""
    recs, images = _bad_setup(tmp_path, n=4)
    cache = str(tmp_path / "cache.pkl")
    h36m_cache.write_cache(cache, recs)
    missing = _image_file(images, recs[1])
    kept = open(missing, "rb").read()
    os.remove(missing)
    cli = _convert_cli()
    argv = ["--root", str(tmp_path), "--sets", "train", "--cache", cache, "--image_root", images, "--out_dir",
            str(tmp_path / "out"), "--on_error", "skip", "--num_workers", "0", "--no_progress"]
    assert cli.main(argv) == 0
    info_path = tmp_path / "out" / "hm36_train" / records.INFO_FILE
    assert json.loads(info_path.read_text())["num_skipped"] == 1
    with open(missing, "wb") as f:
        f.write(kept)
    assert cli.main(argv) == 0
    assert json.loads(info_path.read_text())["num_records"] == 3  # image files are not part of the check
    assert cli.main(argv + ["--force"]) == 0
    info = json.loads(info_path.read_text())
    assert info["num_records"] == 4 and info["num_skipped"] == 0
    shards = records.ShardedRecords(str(tmp_path / "out" / "hm36_train"))
    assert [shards[i]["source_index"] for i in range(4)] == [0, 1, 2, 3]
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    assert "--force" in capsys.readouterr().out


def test_cli_crop_layout(tmp_path):
    """--layout crop: JPEG crops with their geometry, options recorded; a different crop option
    is a different conversion (not "up to date")."""
    cli = _convert_cli()
    out = str(tmp_path / "out")
    argv = ["--root", synthetic_root(), "--sets", "validmin", "--out_dir", out, "--num_workers", "0",
            "--no_progress", "--layout", "crop", "--crop_patch_size", "32", "--crop_rotation_factor", "0",
            "--crop_quality", "90"]
    assert cli.main(argv) == 0
    info = json.loads((tmp_path / "out" / "hm36_validmin" / records.INFO_FILE).read_text())
    assert info["layout"] == "crop"
    assert info["crop"] == dict(patch_size=32, scale_factor=0.25, rotation_factor=0.0, rotation_prob=0.6,
                                resample=True, quality=90)
    rec = records.ShardedRecords(os.path.join(out, "hm36_validmin"))[0]
    full = records.ShardedRecords(os.path.join(synthetic_root(), "records", "hm36_validmin"))[0]
    height, width = image_checks.check_image_bytes(rec["image"], "crop")
    size = np.round(rec["crop_size"] * rec["crop_scale"]).astype(int)
    assert (width, height) == tuple(size) and width < full["image_size"][0]
    for key in ("center", "box_size", "joints_img", "joints_cam", "image_size", "fl", "c_p", "image_path"):
        np.testing.assert_array_equal(rec[key], full[key])
    assert cli.main(argv[:-1] + ["80"]) == 0
    assert json.loads((tmp_path / "out" / "hm36_validmin" / records.INFO_FILE).read_text())["crop"]["quality"] == 80
    with pytest.raises(ValueError, match="quality"):
        crop_layout(quality=0)


def test_lens_distortion_sized_label_offsets_are_accepted_and_the_limits_are_options(tmp_path):
    """A few px between labels and pinhole projection (real caches: lens distortion) converts
    with the defaults; the limits are options (and part of the up-to-date check)."""
    recs, images = _bad_setup(tmp_path, n=4)
    rng = np.random.default_rng(0)
    for rec in recs:
        rec["joints_3d"][:, :2] += rng.uniform(-5, 5, size=(18, 2))
    recs[1]["joints_3d"][:, 0] += 300
    cache = str(tmp_path / "cache.pkl")
    h36m_cache.write_cache(cache, recs)
    out = str(tmp_path / "out")
    with pytest.raises(DataError, match="record 1 .* 3\\d\\d.\\d px from the projection"):
        convert.convert_h36m(str(tmp_path), "train", out, cache=cache, image_root=images, **QUIET)
    info = convert.convert_h36m(str(tmp_path), "train", out, cache=cache, image_root=images, max_reprojection_px=400,
                                **QUIET)
    assert info["num_records"] == 4 and 300 < info["max_reprojection_error_px"] < 306
    cli = _convert_cli()
    argv = ["--root", str(tmp_path), "--sets", "train", "--cache", cache, "--image_root", images, "--out_dir",
            str(tmp_path / "cli"), "--num_workers", "0", "--no_progress"]
    assert cli.main(argv) == 2
    assert cli.main(argv + ["--max_reprojection_px", "400", "--max_box_scale", "2"]) == 0
    with pytest.raises(SystemExit):
        cli.parse_args(argv + ["--max_box_scale", "0"])


def test_a_bad_matlab_meta_header_is_an_error_even_with_a_cache(tmp_path, capsys):
    """A missing header line is named by its real line number and the tag found there."""
    recs, images = _bad_setup(tmp_path, n=3)
    cache = str(tmp_path / "cache.pkl")
    h36m_cache.write_cache(cache, recs)
    folder = recs[0]["image"].split(os.sep)[-2]
    src = os.path.join(synthetic_root(), "hm36", "annot", folder, "matlab_meta.txt")
    lines = open(src).read().splitlines()
    assert lines[3].startswith("T ")
    annot = tmp_path / "hm36" / "annot" / folder
    os.makedirs(annot)
    (annot / "matlab_meta.txt").write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # no camera position line
    pattern = r"matlab_meta.txt line 4 has tag 'f' where the camera position line \(tag 'T'\) belongs"
    with pytest.raises(DataError, match=pattern):
        convert.convert_h36m(str(tmp_path), "train", str(tmp_path / "out"), cache=cache, image_root=images, **QUIET)
    cli = _convert_cli()
    assert cli.main(["--root", str(tmp_path), "--sets", "train", "--cache", cache, "--image_root", images,
                     "--out_dir", str(tmp_path / "out"), "--num_workers", "0", "--no_progress"]) == 2
    assert "line 4 has tag 'f'" in capsys.readouterr().err
    lines[4] = "f 1.0"  # the focal length line with one number: count and tag named
    (annot / "matlab_meta.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 5 \(focal length\): found 2 fields, expected 3 .*\[line tag 'f'\]"):
        convert.convert_h36m(str(tmp_path), "train", str(tmp_path / "out"), cache=cache, image_root=images, **QUIET)


def test_several_caches_error_gives_a_command_that_exists(tmp_path):
    folder = tmp_path / "hm36" / "HM36_train_cache"
    for n in (8, 200):
        h36m_cache.write_cache(str(folder / f"HM36_train_w256xh256_keypoint_db_sample{n}.pkl"), [{}])
    with pytest.raises(DataError) as info:
        convert.convert_h36m(str(tmp_path), "train", str(tmp_path / "out"), **QUIET)
    text = str(info.value)
    assert "several caches" in text and "python data_prep/convert_h36m.py --sets train --cache " in text, text
    args = _convert_cli().parse_args(text.split("convert_h36m.py ")[1].split())  # the command it gives parses
    assert args.cache.endswith("sample200.pkl") and args.sets == ["train"]
