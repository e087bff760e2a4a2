"""The original's caches (or ``matlab_meta.txt`` annotations) -> validated ArrayRecord shards.

Every record is validated (keys, shapes, finite values, joint set, image present, complete and
decodable); a bad record raises :class:`~kinpose_jax.data.DataError` naming the record and field,
or — with ``on_error="skip"`` — is left out, counted and listed in ``dataset_info.json``.
Images are stored as the original file bytes (no re-encoding), or — with a ``crop`` layout
(:func:`crop_layout`) — as a JPEG of just the region any augmentation draw can sample, at the
resolution a scale-1 patch samples (``augment.crop_geometry``), with its geometry per record.

Idempotent and resumable: shards are written one at a time (temporary file, then rename) and
recorded in ``.progress.json``; a re-run with the same source and options skips finished shards,
and returns at once when ``dataset_info.json`` already matches. A changed source (different
hash) or changed options start the directory afresh; ``force=True`` always does (needed after
fixing images that an ``on_error="skip"`` run left out: image files are not part of the check).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import time
from typing import Any, Callable, Sequence

import numpy as np

from kinpose_jax import geometry, skeleton
from kinpose_jax.data import (DataError, h36m_cache, h36m_layout, image_checks, matlab_meta, record_checks,
                              records)

PROGRESS_FILE = ".progress.json"
#: The plausibility limits of :func:`prepare_record` by default (see ``convert_records``).
DEFAULT_LIMITS = dict(max_box_scale=record_checks.MAX_BOX_SCALE, max_reprojection_px=record_checks.MAX_REPROJECTION_PX)


def crop_layout(patch_size: int, scale_factor: float, rotation_factor: float, rotation_prob: float,
                resample: bool = True, quality: int = 95) -> dict:
    """The ``crop`` option of :func:`convert_records`: crops valid for training at ``patch_size``
    with augmentation scale/rotation up to these (the ``config.data`` fields of these names), stored as JPEG of
    ``quality`` (1-100), resampled to the scale-1 patch's resolution unless ``resample`` is False."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"crop JPEG quality must be in [1, 100], got {quality}")
    return dict(patch_size=int(patch_size), scale_factor=float(scale_factor), rotation_factor=float(rotation_factor),
                rotation_prob=float(rotation_prob), resample=bool(resample), quality=int(quality))


def crop_layout_for(data_config, **overrides) -> dict:
    """:func:`crop_layout` for ``config.data`` (its patch_size and scale / rotation augmentation);
    ``overrides`` (:func:`crop_layout`'s arguments) win."""
    values = dict(patch_size=data_config.patch_size, scale_factor=data_config.scale_factor,
                  rotation_factor=data_config.rotation_factor, rotation_prob=data_config.rotation_prob)
    return crop_layout(**{**values, **overrides})


def _crop_record(data: bytes, rec: dict, crop: dict) -> tuple[bytes, dict]:
    """The stored crop of one image (JPEG bytes) and its geometry fields."""
    import cv2

    from kinpose_jax.data import augment

    # the crop's extent depends on scale and rotation only (flips and gains sample the same region)
    aug = augment.AugmentConfig(scale_factor=crop["scale_factor"], rotation_factor=crop["rotation_factor"],
                                rotation_prob=crop["rotation_prob"], flip_prob=0.0, color_factor=0.0)
    size = (crop["patch_size"], crop["patch_size"])
    geom = augment.crop_geometry(rec["center"], rec["box_size"], size, aug, crop["resample"])
    image = augment.decode_image(data)
    ok, enc = cv2.imencode(".jpg", augment.cut_crop(image, geom), [cv2.IMWRITE_JPEG_QUALITY, crop["quality"]])
    if not ok:
        raise DataError("cannot encode the crop as JPEG")
    return enc.tobytes(), {"crop_origin": np.array(geom.origin, np.int64), "crop_size": np.array(geom.size, np.int64),
                           "crop_scale": np.array(geom.scale, np.float64)}


def _sha256_files(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(os.path.dirname(p)).encode() + b"/" + os.path.basename(p).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- per record
def prepare_record(task: tuple) -> tuple:
    """Validates one raw cache record and reads its image (runs in worker processes).

    ``task`` = (kind "h36m"|"mpii", raw record dict, source index, source description, image
    root, path components kept when re-rooting, :func:`~kinpose_jax.data.record_checks.check_plausible`
    limits, crop layout or None). Returns ("ok", source_index, record dict — the
    :mod:`~kinpose_jax.data.records` fields except ``index``) or ("error", source_index, message
    naming the record, its image and the field)."""
    kind, raw, source_index, source, image_root, keep, limits, crop = task
    try:
        validate = record_checks.validate_h36m_record if kind == "h36m" else record_checks.validate_mpii_record
        rec = validate(raw, source_index, source)
        try:
            path = h36m_layout.reroot_image_path(rec["image"], image_root, keep)
        except DataError as err:
            raise DataError(f"{source} record {source_index} field 'image': {err}") from None
        where = f"{source} record {source_index} field 'image' ({path})"
        if kind == "h36m" and not h36m_layout.is_folder_name(os.path.basename(os.path.dirname(path))):
            raise DataError(f"{where}: folder {os.path.basename(os.path.dirname(path))!r} is not a sequence folder "
                            f"s_SS_act_AA_subact_BB_ca_CC (cache path {rec['image']!r}; expected .../<folder>/<file>)")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise DataError(f"{where}: image file not found (cache path {rec['image']!r} re-rooted onto "
                            f"{image_root!r}; pass --image_root)") from None
        except OSError as err:
            raise DataError(f"{where}: cannot read the image: {err}") from err
        height, width = image_checks.check_image_bytes(data, where)
        record_checks.check_plausible(rec, (width, height), f"{source} record {source_index} (image {path})",
                                    max_box_scale=limits["max_box_scale"],
                                    max_reprojection_px=limits["max_reprojection_px"] if kind == "h36m" else None)
        out = {k: v for k, v in rec.items() if k != "image"}
        if crop is not None:
            data, geometry = _crop_record(data, rec, crop)
            out.update(geometry)
        out.update(image=data, image_path="/".join(os.path.normpath(path).split(os.sep)[-keep:]),
                   image_size=np.array([width, height], np.int64), source_index=int(source_index), dataset=kind)
        return ("ok", source_index, out)
    except DataError as err:
        message = str(err)
        image = raw.get("image") if isinstance(raw, dict) else None
        if isinstance(image, (str, bytes)) and "(image " not in message and "field 'image'" not in message:
            message += f" [image {image.decode() if isinstance(image, bytes) else image}]"
        return ("error", source_index, message)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)


class _Runner:
    """Maps :func:`prepare_record` over tasks in order, in-process or in a spawn pool."""

    def __init__(self, num_workers: int):
        self.pool = None
        self.num_workers = num_workers
        if num_workers > 0:
            self.pool = multiprocessing.get_context("spawn").Pool(num_workers, initializer=_worker_init)

    def map(self, tasks: list) -> list:
        if self.pool is None:
            return [prepare_record(t) for t in tasks]
        return self.pool.map(prepare_record, tasks, chunksize=max(1, len(tasks) // (8 * self.num_workers)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


# ---------------------------------------------------------------------------------------- driver
def _remove_outputs(dataset_dir: str) -> None:
    for p in records.shard_paths(dataset_dir):
        os.remove(p)
    for f in os.listdir(dataset_dir):
        if f.endswith(".tmp") or f in (records.INFO_FILE, PROGRESS_FILE):
            os.remove(os.path.join(dataset_dir, f))


def _camera_extrinsics(cams: dict[str, dict], annot_dir: str | None) -> list[str]:
    """Adds ``rotation`` ([3][3], world -> camera: ``X_cam = R (X_world - T)``) and ``position``
    ([3] world mm) to each folder's camera entry from ``annot_dir/<folder>/matlab_meta.txt``
    (header only) where that file exists; a cache alone does not hold them. A header that cannot
    be read raises DataError (file, line, tag); intrinsics disagreeing with the records are
    returned as messages (recorded in dataset_info.json)."""
    problems: list[str] = []
    if not annot_dir or not os.path.isdir(annot_dir):
        return problems
    for folder, cam in cams.items():
        path = os.path.join(annot_dir, folder, "matlab_meta.txt")
        if not os.path.exists(path):
            continue
        meta = matlab_meta.read_meta_camera(path)
        same = np.allclose(meta["focal"], cam["fl"], atol=1e-3) and np.allclose(meta["center"], cam["c_p"], atol=1e-3)
        if not same:
            problems.append(f"{path}: intrinsics {meta['focal']} {meta['center']} differ from the records' fl "
                            f"{cam['fl']} c_p {cam['c_p']}; extrinsics not recorded for {folder}")
            continue
        cam["rotation"], cam["position"] = meta["rotation"], meta["position"]
    return problems


def _folder_of(raw: Any) -> str | None:
    """The sequence folder (second-to-last path component) of a raw record's image path, or None."""
    image = raw.get("image") if isinstance(raw, dict) else None
    if isinstance(image, bytes):
        image = image.decode(errors="replace")
    parts = [p for p in re.split(r"[\\/]+", image) if p] if isinstance(image, str) else []
    return parts[-2] if len(parts) >= 2 else None


def _check_headers(raw_records: Sequence[dict], annot_dir: str | None) -> None:
    """Reads the ``matlab_meta.txt`` header of every sequence folder the records use (where the
    file exists): a bad header is a DataError naming the file, line and tag, before any work."""
    if not annot_dir or not os.path.isdir(annot_dir):
        return
    for folder in sorted({f for f in map(_folder_of, raw_records) if f is not None}):
        path = os.path.join(annot_dir, folder, "matlab_meta.txt")
        if os.path.exists(path):
            matlab_meta.read_meta_camera(path)


def _camera_disagreements(raw_records: Sequence[dict], source: str) -> dict[int, str]:
    """Human3.6M records whose ``fl`` / ``c_p`` differ from those most records of their sequence
    folder (one camera) share, with messages naming the record, its image and both values.
    Records whose fields cannot be read are left to their own validation."""
    groups: dict[str, list[tuple[int, tuple]]] = {}
    for i, r in enumerate(raw_records):
        folder = _folder_of(r)
        try:
            cam = tuple(np.round(np.concatenate([np.asarray(r["fl"], np.float64).reshape(2),
                                                 np.asarray(r["c_p"], np.float64).reshape(2)]), 3).tolist())
        except (KeyError, TypeError, ValueError):
            continue
        if folder is not None:
            groups.setdefault(folder, []).append((i, cam))
    out = {}
    for folder, items in groups.items():
        counts: dict[tuple, int] = {}
        for _, cam in items:
            counts[cam] = counts.get(cam, 0) + 1
        common = max(counts, key=counts.get)
        for i, cam in items:
            if cam != common:
                out[i] = (f"{source} record {i} fields 'fl'/'c_p' (image {raw_records[i]['image']}): "
                          f"fl {list(cam[:2])} "
                          f"c_p {list(cam[2:])} differ from fl {list(common[:2])} c_p {list(common[2:])} of "
                          f"{counts[common]} other records of sequence folder {folder} (one camera films a sequence)")
    return out


def _summaries(kind: str, per_record: list[dict], annot_dir: str | None = None) -> dict:
    """Camera data and label statistics for dataset_info.json.

    ``cameras`` maps each sequence folder to ``fl`` [2], ``c_p`` [2] px, ``image_size`` [2] (W, H)
    and, where ``annot_dir/<folder>/matlab_meta.txt`` exists, ``rotation`` [3][3] (world ->
    camera) and ``position`` [3] (world mm)."""
    out: dict[str, Any] = {}
    if kind == "h36m" and per_record:
        cams: dict[str, dict] = {}
        reproj, depth = 0.0, 0.0
        for r in per_record:
            folder = r["image_path"].split("/")[0]
            cams.setdefault(folder, {"fl": r["fl"].tolist(), "c_p": r["c_p"].tolist(),
                                     "image_size": r["image_size"].tolist()})
            uv = geometry.project(r["joints_cam"], r["fl"], r["c_p"])
            reproj = max(reproj, float(np.abs(uv - r["joints_img"][:, :2]).max()))
            depth = max(depth, float(np.abs(r["joints_cam"][:, 2] - r["pelvis"][2] - r["joints_img"][:, 2]).max()))
        problems = _camera_extrinsics(cams, annot_dir)
        out["cameras"] = cams
        out["camera_extrinsics"] = (f"rotation/position of {sum('rotation' in c for c in cams.values())} of "
                                    f"{len(cams)} cameras from {annot_dir}/<folder>/matlab_meta.txt"
                                    if annot_dir else "unknown (the cache holds intrinsics only)")
        if problems:
            out["camera_extrinsics_problems"] = problems
        out["max_reprojection_error_px"] = reproj  # cache u,v vs projection of joints_3d_cam
        out["max_depth_error_mm"] = depth  # cache depth vs joints_3d_cam z - pelvis z
        out["mean_bone_len_mm"] = float(np.mean([float(r["bone_len"]) for r in per_record]))
    if per_record:
        sizes = np.array([r["image_size"] for r in per_record])
        out["image_size_min"], out["image_size_max"] = sizes.min(0).tolist(), sizes.max(0).tolist()
        out["box_size_mean_px"] = np.mean([r["box_size"] for r in per_record], axis=0).tolist()
    return out


def convert_records(
    kind: str,
    raw_records: Sequence[dict],
    dataset_dir: str,
    *,
    source: str,
    source_hash: str,
    image_root: str,
    records_per_shard: int = 1000,
    on_error: str = "raise",
    num_workers: int = 0,
    progress: bool = True,
    force: bool = False,
    annot_dir: str | None = None,
    max_box_scale: float = record_checks.MAX_BOX_SCALE,
    max_reprojection_px: float = record_checks.MAX_REPROJECTION_PX,
    crop: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Validates ``raw_records`` (seed cache dicts of ``kind`` "h36m" or "mpii") and writes them to
    ``dataset_dir``. Returns the dataset_info dict. See the module docstring for resuming.

    ``force``: discard existing shards and progress and convert afresh. Needed after fixing
    image files that an ``on_error="skip"`` run left out: the up-to-date check covers the source
    (cache hash) and the options, not the image files. ``annot_dir``: ``hm36/annot`` whose
    ``matlab_meta.txt`` headers give the cameras' rotation and position for dataset_info.json
    (a header that cannot be read is an error). ``max_box_scale``, ``max_reprojection_px``:
    plausibility limits (:func:`~kinpose_jax.data.record_checks.check_plausible`); besides, every
    Human3.6M record must have the ``fl`` / ``c_p`` of the other records of its sequence folder.
    ``crop``: :func:`crop_layout` to store patch-sized crops (None: the original image files)."""
    if kind not in ("h36m", "mpii"):
        raise ValueError(f"kind must be 'h36m' or 'mpii', got {kind!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if not raw_records:
        raise DataError(f"{source} holds no records")
    keep = 2 if kind == "h36m" else 1
    image_root = os.path.abspath(image_root)
    if not (max_box_scale > 0 and max_reprojection_px > 0):
        raise ValueError(f"max_box_scale and max_reprojection_px must be > 0, got {max_box_scale}, "
                         f"{max_reprojection_px}")
    limits = dict(max_box_scale=float(max_box_scale), max_reprojection_px=float(max_reprojection_px))
    options = dict(format_version=records.FORMAT_VERSION, kind=kind, source_hash=source_hash, image_root=image_root,
                   records_per_shard=records_per_shard, on_error=on_error, num_source_records=len(raw_records),
                   **limits)
    if crop is not None:
        options["crop"] = crop
    fingerprint = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
    name = os.path.basename(os.path.normpath(dataset_dir))
    os.makedirs(dataset_dir, exist_ok=True)
    info_path = os.path.join(dataset_dir, records.INFO_FILE)
    progress_path = os.path.join(dataset_dir, PROGRESS_FILE)

    if force:
        _remove_outputs(dataset_dir)
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("fingerprint") == fingerprint and len(records.shard_paths(dataset_dir)) == info["num_shards"]:
            log(f"{dataset_dir}: up to date ({info['num_records']} records, {info['num_skipped']} skipped)")
            return info

    state = {"fingerprint": fingerprint, "shards": {}}
    if os.path.exists(progress_path):
        with open(progress_path) as f:
            old = json.load(f)
        if old.get("fingerprint") == fingerprint:
            state = old
    if state["fingerprint"] != fingerprint or not state["shards"]:
        _remove_outputs(dataset_dir)
        state = {"fingerprint": fingerprint, "shards": {}}

    n = len(raw_records)
    num_shards = math.ceil(n / records_per_shard)
    done = {int(k): v for k, v in state["shards"].items()
            if os.path.exists(os.path.join(dataset_dir, records.shard_name(name, int(k), num_shards)))}
    if done:
        log(f"{dataset_dir}: resuming, {len(done)}/{num_shards} shards already written")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=sum(min(records_per_shard, n - k * records_per_shard) for k in done),
                   desc=f"converting {name}", unit="rec", dynamic_ncols=True)
    camera_errors = {}
    if kind == "h36m":
        _check_headers(raw_records, annot_dir)
        camera_errors = _camera_disagreements(raw_records, source)
    runner = _Runner(num_workers)
    summaries: list[dict] = []
    t0 = time.perf_counter()
    try:
        for k in range(num_shards):
            lo, hi = k * records_per_shard, min(n, (k + 1) * records_per_shard)
            if k in done:
                continue
            start_index = sum(done[j]["count"] for j in range(k))
            tasks = [(kind, raw_records[i], i, source, image_root, keep, limits, crop) for i in range(lo, hi)]
            payloads, skipped = [], []
            for status, src_index, value in runner.map(tasks):
                if status == "ok" and src_index in camera_errors:
                    status, value = "error", camera_errors[src_index]
                if status == "error":
                    if on_error == "raise":
                        raise DataError(value)
                    skipped.append({"source_index": int(src_index), "error": value})
                    continue
                value["index"] = start_index + len(payloads)
                summaries.append({key: value[key] for key in ("image_path", "image_size", "fl", "c_p", "joints_cam",
                                                              "joints_img", "pelvis", "bone_len", "box_size")})
                payloads.append(records.encode_record(value))
            records.write_shard(os.path.join(dataset_dir, records.shard_name(name, k, num_shards)), payloads)
            done[k] = {"count": len(payloads), "skipped": skipped}
            state["shards"] = {str(j): v for j, v in done.items()}
            records.write_json(progress_path, state)
            if bar is not None:
                bar.update(hi - lo)
    finally:
        runner.close()
        if bar is not None:
            bar.close()

    if len(summaries) != sum(v["count"] for v in done.values()):  # resumed: re-read the finished shards' labels
        summaries = _read_summaries(dataset_dir)
    skipped = [s for k in sorted(done) for s in done[k]["skipped"]]
    count = sum(v["count"] for v in done.values())
    if count == 0:
        raise DataError(f"{source}: every record was skipped ({len(skipped)}); first error: {skipped[0]['error']}")
    info = {
        "format_version": records.FORMAT_VERSION, "fingerprint": fingerprint, "name": name, "dataset": kind,
        "source": source, "source_sha256": source_hash, "image_root": image_root,
        "num_records": count, "num_source_records": n, "num_skipped": len(skipped), "skipped": skipped,
        "num_shards": num_shards, "shard_counts": [done[k]["count"] for k in range(num_shards)],
        "records_per_shard": records_per_shard,
        "layout": "full" if crop is None else "crop",  # records hold the image files, or crops (fields crop_*)
        **({} if crop is None else {"crop": crop}),
        "joint_set": {"name": "h36m18", "joints": list(skeleton.H36M_JOINT_NAMES),
                      "flip_pairs": [list(p) for p in skeleton.H36M_FLIP_PAIRS],
                      "parent_ids": list(skeleton.H36M_PARENT_IDS)},
        "source_joint_set": "h36m18" if kind == "h36m" else "mpii16 (mapped to h36m18, depth weight 0)",
        "box_mm": skeleton.BOX_MM,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    info.update(_summaries(kind, summaries, annot_dir))
    records.write_json(info_path, info)
    log(f"{dataset_dir}: wrote {count} records in {num_shards} shards"
        + (f", skipped {len(skipped)} bad records (listed in {records.INFO_FILE})" if skipped else ""))
    return info


def _read_summaries(dataset_dir: str) -> list[dict]:
    from array_record.python.array_record_module import ArrayRecordReader

    out = []
    for path in records.shard_paths(dataset_dir):
        reader = ArrayRecordReader(path)
        try:
            for i in range(reader.num_records()):
                out.append(records.decode_record(reader.read([i])[0]))
        finally:
            reader.close()
    return out


# ---------------------------------------------------------------------------------------- entry points
def dataset_dir_for(out_dir: str, kind: str, image_set: str) -> str:
    """``<out_dir>/hm36_<set>`` or ``<out_dir>/mpii_<set>``."""
    return os.path.join(out_dir, f"{'hm36' if kind == 'h36m' else 'mpii'}_{image_set}")


def convert_h36m(
    root: str,
    image_set: str,
    out_dir: str | None = None,
    *,
    cache: str | None = None,
    image_root: str | None = None,
    source: str = "auto",
    sample: int | None = None,
    **kwargs,
) -> dict:
    """Converts Human3.6M set ``image_set`` (train, validmin, valid, ...) under ``root/hm36``.

    Args:
      root: data root holding ``hm36/`` in the original's layout (docs/DESIGN.md#h36m-on-disk).
      out_dir: where ``hm36_<set>/`` is written (default ``root/records``).
      cache: the cache pickle (default: the one in ``hm36/HM36_<set>_cache/``).
      image_root: folder holding ``<folder>/<file>.jpg`` (default ``root/hm36/images``); cache
        image paths are re-rooted onto it on their last two components.
      source: "cache", "annotations" (parse ``annot/*/matlab_meta.txt``) or "auto" (the cache if
        one exists, else the annotations).
      sample: frames per folder when parsing annotations (default: the set's, docs/DESIGN.md#h36m-on-disk).
      **kwargs: :func:`convert_records` options (records_per_shard, on_error, num_workers, progress,
        force). With ``on_error="skip"``, re-running after fixing the skipped images needs
        ``force=True`` (the up-to-date check does not look at image files).
    """
    hm36 = os.path.join(root, "hm36")
    out_dir = out_dir or os.path.join(root, "records")
    image_root = image_root or os.path.join(hm36, "images")
    if source not in ("auto", "cache", "annotations"):
        raise ValueError(f"source must be auto, cache or annotations, got {source!r}")
    if cache is None and source != "annotations":
        cache = h36m_layout.find_cache(hm36, image_set)
        if cache is None and source == "cache":
            raise DataError(f"no cache for set {image_set!r} under {hm36}/HM36_{image_set}_cache")
    if cache is not None and source != "annotations":
        raw = h36m_cache.load_cache(cache)
        desc, digest = f"cache {cache}", _sha256_files([cache])
    else:
        if not os.path.isdir(os.path.join(hm36, "annot")):
            raise DataError(f"found neither a cache for set {image_set!r} ({hm36}/HM36_{image_set}_cache/*.pkl) nor "
                            f"annotations ({hm36}/annot/*/matlab_meta.txt); check the data root")
        subjects = h36m_layout.subjects_of_set(image_set)
        n = sample if sample is not None else h36m_layout.SET_SAMPLES.get(image_set, -1)
        raw = matlab_meta.records_from_annotations(hm36, subjects, n)
        annot = os.path.join(hm36, "annot")
        metas = [os.path.join(annot, f, "matlab_meta.txt") for f in h36m_layout.set_folders(annot, subjects)]
        desc = f"annotations {annot} (set {image_set}, {n} frames per folder)"
        digest = hashlib.sha256((_sha256_files(metas) + f"|sample={n}").encode()).hexdigest()
    kwargs.setdefault("annot_dir", os.path.join(hm36, "annot"))
    return convert_records("h36m", raw, dataset_dir_for(out_dir, "h36m", image_set), source=desc,
                           source_hash=digest, image_root=image_root, **kwargs)


def find_mpii_cache(mpii_dir: str, image_set: str) -> str:
    """The single ``*.pkl`` in ``mpii/mpii_<set>_cache/``."""
    folder = os.path.join(mpii_dir, f"mpii_{image_set}_cache")
    found = sorted(f for f in os.listdir(folder) if f.endswith(".pkl")) if os.path.isdir(folder) else []
    if len(found) != 1:
        raise DataError(f"expected one MPII cache (*.pkl) in {folder}, found {found}; keep only the one to use "
                        f"there, or convert one explicitly: python data_prep/convert_h36m.py --mpii {image_set} "
                        f"--mpii_cache FILE")
    return os.path.join(folder, found[0])


def convert_mpii(root: str, image_set: str = "train", out_dir: str | None = None, *, cache: str | None = None,
                 image_root: str | None = None, **kwargs) -> dict:
    """Converts an MPII cache (``root/mpii/mpii_<set>_cache/*.pkl``) to ``<out_dir>/mpii_<set>/``;
    joints are mapped to H36M-18 (docs/DESIGN.md#mpii-coco) with depth weight 0. Image paths are re-rooted onto
    ``image_root`` (default ``root/mpii/images``) on their file name."""
    mpii = os.path.join(root, "mpii")
    out_dir = out_dir or os.path.join(root, "records")
    cache = cache or find_mpii_cache(mpii, image_set)
    raw = h36m_cache.load_cache(cache)
    return convert_records("mpii", raw, dataset_dir_for(out_dir, "mpii", image_set), source=f"cache {cache}",
                           source_hash=_sha256_files([cache]), image_root=image_root or os.path.join(mpii, "images"),
                           **kwargs)
