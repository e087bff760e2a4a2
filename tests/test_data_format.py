"""The original's formats: caches written by old Python/numpy, matlab_meta.txt, record validation errors."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest

from kinpose_jax import skeleton
from kinpose_jax.data import DataError, h36m_cache, h36m_layout, image_checks, matlab_meta, record_checks


def _record(rng=None) -> dict:
    rng = rng or np.random.default_rng(0)
    cam = rng.uniform(-500, 500, (18, 3)) + [0, 0, 5000]
    return {
        "image": "/old/machine/hm36/images/s_01_act_02_subact_01_ca_01/s_01_act_02_subact_01_ca_01_000001.jpg",
        "center_x": 500.0, "center_y": 480.0, "width": 450.0, "height": 452.0,
        "flip_pairs": np.array(skeleton.H36M_FLIP_PAIRS), "parent_ids": np.array(skeleton.H36M_PARENT_IDS),
        "joints_3d": rng.uniform(0, 900, (18, 3)), "joints_3d_vis": np.ones((18, 3)), "joints_3d_cam": cam,
        "pelvis": cam[0].copy(), "fl": np.array([1145.0, 1144.0]), "c_p": np.array([512.0, 515.0]),
        "bone_len": 4100.0,
    }


def _old_pickle(obj, protocol: int) -> bytes:
    """A pickle as numpy 1.x wrote it: arrays reference ``numpy.core.multiarray``."""
    blob = pickle.dumps(obj, protocol=protocol)
    assert b"numpy._core" in blob
    return blob.replace(b"numpy._core", b"numpy.core")


@pytest.mark.parametrize("protocol", [2, 3])
def test_loads_caches_written_with_numpy1(tmp_path, protocol):
    recs = [_record(np.random.default_rng(i)) for i in range(3)]
    path = tmp_path / "cache.pkl"
    path.write_bytes(_old_pickle(recs, protocol))
    loaded = h36m_cache.load_cache(str(path))
    assert len(loaded) == 3
    for a, b in zip(recs, loaded):
        np.testing.assert_array_equal(a["joints_3d_cam"], b["joints_3d_cam"])
        assert a["image"] == b["image"]
        out = record_checks.validate_h36m_record(b, 0, "cache")
        np.testing.assert_array_equal(out["joints_img"], a["joints_3d"])


class _Numpy1Pickler(pickle._Pickler):
    """The pure-Python pickler, writing numpy's functions under their numpy 1.x module names
    (``numpy.core.multiarray``) as Python 3.6 + numpy 1.x did: protocol 4 frames and
    STACK_GLOBAL opcodes, or protocol 2 GLOBAL lines."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if not module.startswith("numpy._core"):
            return super().save_global(obj, name)
        module, name = module.replace("numpy._core", "numpy.core", 1), name or obj.__qualname__
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)


class _Python2Pickler(_Numpy1Pickler):
    """Protocol 2 as Python 2.7's cPickle wrote it: ``str`` (bytes) values — array buffers
    included — as BINSTRING / SHORT_BINSTRING, which Python 3 can only read with latin1."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _dump(pickler_cls, obj, protocol):
    import io

    buf = io.BytesIO()
    pickler_cls(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _seed_record(i: int) -> dict:
    """A record typed as the original's cache builder made it: numpy float64 scalars for the box and
    bone length, float64 arrays, Python lists for the joint metadata."""
    rng = np.random.default_rng(100 + i)
    cam = rng.uniform(-500, 500, (18, 3)) + [0, 0, 5000]
    return {
        "image": f"/old/machine/hm36/images/s_01_act_02_subact_01_ca_01/s_01_act_02_subact_01_ca_01_{i + 1:06d}.jpg",
        "center_x": np.float64(rng.uniform(400, 600)), "center_y": np.float64(rng.uniform(400, 600)),
        "width": np.float64(rng.uniform(300, 500)), "height": np.float64(rng.uniform(300, 500)),
        "flip_pairs": [list(p) for p in skeleton.H36M_FLIP_PAIRS], "parent_ids": list(skeleton.H36M_PARENT_IDS),
        "joints_3d": rng.uniform(0, 900, (18, 3)), "joints_3d_vis": np.ones((18, 3)), "joints_3d_cam": cam,
        "pelvis": cam[0].copy(), "fl": np.array([1145.04, 1143.78]), "c_p": np.array([512.54, 515.45]),
        "bone_len": np.float64(rng.uniform(3900, 4300)),
    }


def _check_loaded(recs, loaded):
    assert len(loaded) == len(recs)
    for i, (a, b) in enumerate(zip(recs, loaded)):
        assert b["image"] == a["image"] and isinstance(b["image"], str)
        for key in ("center_x", "center_y", "width", "height", "bone_len"):
            assert isinstance(b[key], np.float64) and float(b[key]) == float(a[key]), key
        for key in ("joints_3d", "joints_3d_vis", "joints_3d_cam", "pelvis", "fl", "c_p"):
            assert b[key].dtype == np.float64
            np.testing.assert_array_equal(b[key], a[key])
        out = record_checks.validate_h36m_record(b, i, "old cache")
        np.testing.assert_array_equal(out["center"], [float(a["center_x"]), float(a["center_y"])])
        np.testing.assert_array_equal(out["box_size"], [float(a["width"]), float(a["height"])])
        assert float(out["bone_len"]) == float(a["bone_len"])
        np.testing.assert_array_equal(out["joints_cam"], a["joints_3d_cam"])


def test_loads_python36_numpy1_protocol4_cache(tmp_path):
    """The original's real format: pickle.HIGHEST_PROTOCOL on Python 3.6 (protocol 4, framed),
    numpy 1.x module paths, numpy float64 scalars (``numpy.core.multiarray.scalar``)."""
    import pickletools

    recs = [_seed_record(i) for i in range(3)]
    blob = _dump(_Numpy1Pickler, recs, 4)
    ops = {op.name for op, _, _ in pickletools.genops(blob)}
    assert blob[:2] == b"\x80\x04" and {"FRAME", "STACK_GLOBAL"} <= ops
    assert b"numpy.core.multiarray" in blob and b"numpy._core" not in blob
    assert blob.count(b"scalar") >= 1
    path = tmp_path / "HM36_train_w256xh256_keypoint_db_sample200.pkl"
    path.write_bytes(blob)
    _check_loaded(recs, h36m_cache.load_cache(str(path)))


def test_loads_python2_latin1_cache(tmp_path):
    """A Python 2.7 protocol-2 cache: array buffers and numpy scalars stored as byte strings,
    which need ``encoding='latin1'`` (an ASCII decode fails)."""
    import pickletools

    recs = [_seed_record(i) for i in range(2)]
    blob = _dump(_Python2Pickler, recs, 2)
    ops = {op.name for op, _, _ in pickletools.genops(blob)}
    assert blob[:2] == b"\x80\x02" and "GLOBAL" in ops and not ops & {"BINUNICODE", "SHORT_BINUNICODE"}
    assert b"numpy.core.multiarray" in blob
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(blob.replace(b"numpy.core", b"numpy._core"), encoding="ASCII")
    path = tmp_path / "py2.pkl"
    path.write_bytes(blob)
    _check_loaded(recs, h36m_cache.load_cache(str(path)))


def test_cache_refuses_code_and_reports_bad_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(DataError, match="refusing to load"):
        h36m_cache.load_cache(str(evil))
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(pickle.dumps([]))
    with pytest.raises(DataError, match="holds no records"):
        h36m_cache.load_cache(str(empty))
    notlist = tmp_path / "dict.pkl"
    notlist.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataError, match="expected a list of dicts"):
        h36m_cache.load_cache(str(notlist))
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a readable pickle"):
        h36m_cache.load_cache(str(garbage))
    with pytest.raises(DataError, match="cannot read cache"):
        h36m_cache.load_cache(str(tmp_path / "missing.pkl"))


@pytest.mark.parametrize("mutate, pattern", [
    (lambda r: r.pop("joints_3d_cam"), r"record 7: missing keys \['joints_3d_cam'\]"),
    (lambda r: r.__setitem__("joints_3d", np.zeros((17, 3))), r"record 7 field 'joints_3d': shape \(17, 3\), "
                                                               r"expected \(18, 3\)"),
    (lambda r: r["joints_3d"].__setitem__((4, 1), np.nan), r"record 7 field 'joints_3d': non-finite"),
    (lambda r: r.__setitem__("pelvis", np.zeros(2)), r"record 7 field 'pelvis': shape"),
    (lambda r: r.__setitem__("width", -3.0), r"record 7 field 'width'.*must be > 0"),
    (lambda r: r.__setitem__("center_x", float("inf")), r"record 7 field 'center_x': non-finite"),
    (lambda r: r.__setitem__("flip_pairs", np.array([[0, 1]])), r"record 7 field 'flip_pairs'"),
    (lambda r: r.__setitem__("joints_3d_vis", np.full((18, 3), 2.0)), r"record 7 field 'joints_3d_vis'.*\[0, 1\]"),
    (lambda r: r.__setitem__("fl", np.array([0.0, 1.0])), r"record 7 field 'fl'.*must be > 0"),
    (lambda r: r.__setitem__("image", 42), r"record 7 field 'image'"),
])
def test_validation_names_record_and_field(mutate, pattern):
    rec = _record()
    mutate(rec)
    with pytest.raises(DataError, match=pattern):
        record_checks.validate_h36m_record(rec, 7, "cache X")


def test_mpii_record_maps_to_h36m_with_zero_depth_weight():
    rng = np.random.default_rng(1)
    joints = np.concatenate([rng.uniform(0, 500, (16, 2)), np.zeros((16, 1))], axis=1)
    vis = np.concatenate([np.ones((16, 2)), np.zeros((16, 1))], axis=1)
    vis[9] = 0  # head top unlabelled
    rec = {"image": "a/b.jpg", "center_x": 1.0, "center_y": 2.0, "width": 3.0, "height": 4.0,
           "flip_pairs": np.array(skeleton.MPII_FLIP_PAIRS), "joints_3d": joints, "joints_3d_vis": vis}
    out = record_checks.validate_mpii_record(rec, 0, "mpii")
    for h36m_j, mpii_j in enumerate(skeleton.MPII_TO_H36M):
        if mpii_j < 0:
            assert np.all(out["joints_vis"][h36m_j] == 0)
        else:
            np.testing.assert_array_equal(out["joints_img"][h36m_j, :2], joints[mpii_j, :2])
            np.testing.assert_array_equal(out["joints_vis"][h36m_j, :2], vis[mpii_j, :2])
    assert np.all(out["joints_vis"][:, 2] == 0)
    assert out["joints_img"].shape == (18, 3)
    rec["joints_3d"] = joints[:15]
    with pytest.raises(DataError, match=r"record 0 field 'joints_3d': shape \(15, 3\), expected \(16, 3\)"):
        record_checks.validate_mpii_record(rec, 0, "mpii")


def _meta(num_frames=3) -> matlab_meta.MetaSequence:
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    return matlab_meta.MetaSequence(
        image_size=(1000, 1002), rotation=q, position=np.array([1000.0, -4000.0, 1500.0]),
        focal=np.array([1145.5, 1144.2]), center=np.array([512.3, 515.1]), radial=np.array([-0.2, 0.2, -0.003]),
        tangential=np.array([-0.001, 0.002]), joint_ids=np.asarray(matlab_meta.H36M_32_TO_17_ONE_BASED),
        joints_world=rng.uniform(-1000, 1000, (num_frames, 32, 3)))


def test_matlab_meta_roundtrip_and_camera_convention(tmp_path):
    meta = _meta()
    path = tmp_path / "matlab_meta.txt"
    path.write_text(matlab_meta.format_matlab_meta(meta))
    lines = path.read_text().splitlines()
    # line 2 holds R transposed, row-major (docs/DESIGN.md#matlab-meta): its first three numbers are R's first column
    np.testing.assert_allclose([float(v) for v in lines[2].split()[1:4]], meta.rotation[:, 0], atol=1e-6)
    got = matlab_meta.parse_matlab_meta(str(path))
    np.testing.assert_allclose(got.rotation, meta.rotation, atol=1e-6)
    np.testing.assert_allclose(got.joints_world, meta.joints_world, atol=1e-6)
    assert got.image_size == (1000, 1002) and got.num_frames == 3
    # an independent projection of frame 1's left wrist (mocap joint 20, one-based)
    p = meta.joints_world[1, 19]
    cam = meta.rotation @ (p - meta.position)
    rec = matlab_meta.meta_frame_record(got, 1, "x.jpg")
    np.testing.assert_allclose(rec["joints_3d_cam"][13], cam, atol=1e-3)
    np.testing.assert_allclose(rec["joints_3d"][13, :2], cam[:2] / cam[2] * meta.focal + meta.center, atol=1e-3)
    np.testing.assert_allclose(rec["joints_3d_cam"][17], rec["joints_3d_cam"][[11, 14]].mean(0))  # thorax
    assert rec["joints_3d"][0, 2] == 0.0
    # the 2000 mm box around the pelvis: its width in px is 2000 * fx / depth
    z = rec["pelvis"][2]
    np.testing.assert_allclose(rec["width"], 2000 * meta.focal[0] / z, rtol=1e-9)
    np.testing.assert_allclose([rec["center_x"], rec["center_y"]], rec["joints_3d"][0, :2], atol=1e-9)


def test_matlab_meta_errors_name_the_line(tmp_path):
    text = matlab_meta.format_matlab_meta(_meta(3)).splitlines()
    bad = tmp_path / "m.txt"
    bad.write_text("\n".join(text[:-1]) + "\n")
    with pytest.raises(DataError, match="2 frame lines, but line 1 announces 3"):
        matlab_meta.parse_matlab_meta(str(bad))
    broken = list(text)
    broken[10] = broken[10].rsplit(" ", 1)[0] + " nan_or_text"
    bad.write_text("\n".join(broken))
    with pytest.raises(DataError, match=r"line 11 \(frame 1 joints\)"):
        matlab_meta.parse_matlab_meta(str(bad))


@pytest.mark.parametrize("line, edit, expected, found", [
    (0, lambda ln: ln + " 7", 1, 2),                      # frame count followed by a stray number
    (1, lambda ln: ln + " 3", 3, 4),                      # image size with a third number
    (2, lambda ln: ln + " 0.5", 10, 11),                  # rotation with 10 numbers
    (2, lambda ln: ln.split(" ", 1)[1], 10, 9),           # rotation without its tag
    (3, lambda ln: ln + " 1.0 2.0", 4, 6),                # camera position
    (4, lambda ln: ln + " 1.0", 3, 4),                    # focal length fx fy + 1
    (8, lambda ln: ln + " 21", 18, 19),                   # 18 joint indices
    (10, lambda ln: ln + " 12.5", 97, 98),                # frame 1 with 97 numbers
    (11, lambda ln: " ".join(ln.split()[:-3]), 97, 94),  # frame 2 with 93 numbers
])
def test_matlab_meta_lines_need_exactly_their_fields(tmp_path, line, edit, expected, found):
    """Extra (or missing) numbers on any line are an error naming file, line and counts — a
    line with extra numbers must never be read by keeping its last N numbers."""
    text = matlab_meta.format_matlab_meta(_meta(3)).splitlines()
    text[line] = edit(text[line])
    path = tmp_path / "matlab_meta.txt"
    path.write_text("\n".join(text) + "\n")
    pattern = re.escape(str(path)) + rf" line {line + 1} \(.*\): found {found} fields, expected {expected}"
    with pytest.raises(DataError, match=pattern):
        matlab_meta.parse_matlab_meta(str(path))


def test_matlab_meta_line_numbers_count_blank_lines(tmp_path):
    text = matlab_meta.format_matlab_meta(_meta(2)).splitlines()
    text.insert(3, "")  # a blank line before the camera position: file line numbers shift by one
    text[4] += " 9"
    path = tmp_path / "matlab_meta.txt"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"line 5 \(camera position\): found 5 fields, expected 4"):
        matlab_meta.parse_matlab_meta(str(path))
    with pytest.raises(DataError, match=r"line 5 \(camera position\)"):
        matlab_meta.read_meta_camera(str(path))


def test_read_meta_camera_reads_the_header():
    meta = _meta(2)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "matlab_meta.txt")
        with open(path, "w") as f:
            f.write(matlab_meta.format_matlab_meta(meta))
        cam = matlab_meta.read_meta_camera(path)
    np.testing.assert_allclose(cam["rotation"], meta.rotation, atol=1e-11)
    np.testing.assert_allclose(cam["position"], meta.position, atol=1e-6)
    np.testing.assert_allclose(cam["focal"], meta.focal, atol=1e-6)
    np.testing.assert_allclose(cam["center"], meta.center, atol=1e-6)
    assert cam["image_size"] == [1000, 1002]


def test_names_and_rerooting():
    assert h36m_layout.folder_name(9, 2, 1, 4) == "s_09_act_02_subact_01_ca_04"
    assert h36m_layout.parse_folder_name("s_11_act_16_subact_02_ca_03") == (11, 16, 2, 3)
    with pytest.raises(DataError):
        h36m_layout.parse_folder_name("s_11_act_16")
    assert h36m_layout.image_name("f", 0) == "f_000001.jpg"
    folder = "s_09_act_12_subact_02_ca_01"
    assert h36m_layout.parse_image_path(f"{folder}/{folder}_000123.jpg") == (folder, 122)
    with pytest.raises(DataError, match="abc.jpg"):
        h36m_layout.parse_image_path(f"{folder}/abc.jpg")
    windows = r"D:\data\hm36\images\fold\f_000001.jpg"
    assert h36m_layout.reroot_image_path(windows, "/new", 2) == "/new/fold/f_000001.jpg"
    assert h36m_layout.reroot_image_path("/x/mpii/images/abc.jpg", "/m", 1) == "/m/abc.jpg"
    np.testing.assert_array_equal(h36m_layout.sample_frames(10, 5), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(h36m_layout.sample_frames(3, -1), [0, 1, 2])


def test_image_checks():
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full((20, 30, 3), 90, np.uint8))
    data = buf.tobytes()
    assert image_checks.check_image_bytes(data, "img") == (20, 30)
    with pytest.raises(DataError, match="img: JPEG data is truncated"):
        image_checks.check_image_bytes(data[: len(data) // 2], "img")
    with pytest.raises(DataError, match="img: empty image file"):
        image_checks.check_image_bytes(b"", "img")
    with pytest.raises(DataError, match="img: image data cannot be decoded"):
        image_checks.check_image_bytes(b"\x89PNG garbage" * 10, "img")


def _jpeg(shape=(24, 32), progressive=False, seed=0):
    import cv2

    img = np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    return cv2.imencode(".jpg", img, flags)[1].tobytes()


def _with_exif_thumbnail(main: bytes, thumb: bytes) -> bytes:
    """``main`` with an APP1 Exif segment (little-endian TIFF header, empty IFD) whose payload
    ends with a complete JPEG thumbnail — with its own SOI, SOS and EOI markers."""
    payload = b"Exif\x00\x00" + b"II*\x00" + (8).to_bytes(4, "little") + b"\x00\x00" + b"\x00" * 4 + thumb
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return main[:2] + segment + main[2:]


def test_jpeg_completeness_trailing_bytes_and_thumbnails():
    for progressive in (False, True):
        data = _jpeg(progressive=progressive)
        assert image_checks.jpeg_is_complete(data)
        # cut anywhere before the final end-of-image marker: truncated
        assert not any(image_checks.jpeg_is_complete(data[:k]) for k in range(len(data) - 1))
        with pytest.raises(DataError, match="JPEG data is truncated"):
            image_checks.check_image_bytes(data[:-1], "img")
        # bytes after the end-of-image marker (padding, junk, even marker-like bytes): complete
        for tail in (b"\x00" * 7, b"some trailing junk", b"\xff\xd8\xff\xda\x00\x05junk", b"\xff"):
            assert image_checks.check_image_bytes(data + tail, "img") == (24, 32)
    # an EXIF thumbnail carries its own EOI: the main image cut mid-scan is still truncated
    thumb = _jpeg((8, 8), seed=1)
    main = _jpeg(seed=2)
    full = _with_exif_thumbnail(main, thumb)
    assert image_checks.check_image_bytes(full, "img") == (24, 32)
    assert b"\xff\xd9" in full[: len(full) // 2]  # the thumbnail's EOI lies in the first half
    cut = full[: len(full) - len(main) // 3]
    assert not image_checks.jpeg_is_complete(cut)
    with pytest.raises(DataError, match="img: JPEG data is truncated"):
        image_checks.check_image_bytes(cut, "img")
    with pytest.raises(DataError, match="img: JPEG data is truncated"):
        image_checks.check_image_bytes(cut + b"junk", "img")


def test_a_large_jpeg_missing_only_its_end_marker_is_truncated():
    """The last two bytes (the end-of-image marker) of a 1000 x 1000 baseline JPEG lost: OpenCV still
    decodes it and Pillow's ``Image.load()`` accepts it, so only the marker walk catches it."""
    import cv2

    img = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    assert cv2.imdecode(np.frombuffer(data[:-2], np.uint8), cv2.IMREAD_COLOR) is not None
    assert image_checks.check_image_bytes(data, "img") == (1000, 1000)
    with pytest.raises(DataError, match="img: JPEG data is truncated"):
        image_checks.check_image_bytes(data[:-2], "img")
