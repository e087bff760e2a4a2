"""The record codec and ArrayRecord shards.

A dataset directory (e.g. ``<records_dir>/hm36_train/``) holds

* ``<name>.array_record-KKKKK-of-NNNNN`` shards, one serialized record per entry, and
* ``dataset_info.json``: counts, joint set, cameras, the source's hash, skipped records.

A serialized record is a msgpack map (see :func:`encode_record`); numpy arrays are stored with
their dtype and shape, the image as the original file's bytes (never re-encoded). Fields:

=================  ===========  ===================================================================
``image``          bytes        the image file as stored on disk (JPEG)
``image_path``     str          path relative to the image root (``<folder>/<file>.jpg``)
``image_size``     [2] int      image width, height px
``index``          int          position of the record in the dataset (after skips)
``source_index``   int          position of the record in the source cache / annotations
``dataset``        str          ``"h36m"`` or ``"mpii"``
``center``         [2] f64      box centre (u, v) px
``box_size``       [2] f64      box width, height px
``joints_img``     [18,3] f64   u px, v px, depth - pelvis depth mm (H36M-18 order)
``joints_vis``     [18,3] f64   0/1 loss weights
``joints_cam``     [18,3] f64   camera mm (zeros for MPII)
``pelvis``         [3] f64      camera mm (zeros for MPII)
``fl``, ``c_p``    [2] f64      focal length, principal point px (zeros for MPII)
``bone_len``       [] f64       total skeleton length mm (0 for MPII)
``crop_origin``    [2] int      crop layout only (``dataset_info.json`` ``layout: crop``): ``image``
                                is a JPEG crop; :class:`~kinpose_jax.data.augment.Crop` origin px,
``crop_size``      [2] int      region size px before resampling,
``crop_scale``     [2] f64      crop px per image px; every other field stays the whole image's
=================  ===========  ===================================================================
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Sequence

import msgpack
import numpy as np

from kinpose_jax.data import DataError

FORMAT_VERSION = 1
INFO_FILE = "dataset_info.json"
_ND = "__nd__"


def _default(obj):
    if isinstance(obj, np.ndarray):
        arr = obj if obj.flags.c_contiguous else obj.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        return {_ND: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize a {type(obj).__name__} in a record")


def _hook(obj):
    if obj.get(_ND) is True:
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(tuple(obj["shape"]))
    return obj


def encode_record(record: dict[str, Any]) -> bytes:
    """Serializes a dict of bytes / str / int / float / numpy arrays (msgpack)."""
    return msgpack.packb(record, default=_default, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_record` (arrays come back read-only)."""
    return msgpack.unpackb(data, object_hook=_hook, raw=False)


# ---------------------------------------------------------------------------------------- paths
def shard_name(name: str, k: int, n: int) -> str:
    return f"{name}.array_record-{k:05d}-of-{n:05d}"


def shard_paths(dataset_dir: str) -> list[str]:
    """The complete shards of a dataset directory, in order."""
    pattern = re.compile(r".*\.array_record-(\d{5})-of-(\d{5})$")
    paths = [p for p in glob.glob(os.path.join(dataset_dir, "*.array_record-*-of-*")) if pattern.match(p)]
    return sorted(paths, key=lambda p: int(pattern.match(p).group(1)))


def require_local(path: str) -> None:
    """DataError unless ``path`` is on this machine's file system: array_record (and so grain's
    ``ArrayRecordDataSource``) opens shards as local files only (google/array_record#120); a bucket
    is read through a local mount (e.g. gcsfuse) or a copy."""
    from kinpose_jax import storage

    if not storage.is_local(path):
        raise DataError(f"{path}: records must be on a local file system (array_record reads local files only); "
                        f"copy them to local disk or mount the bucket (e.g. gcsfuse) and give that path")


def load_info(dataset_dir: str) -> dict:
    """``dataset_info.json`` of a converted dataset; DataError (with the fix) if absent."""
    path = os.path.join(dataset_dir, INFO_FILE)
    if not os.path.exists(path):
        raise DataError(f"{dataset_dir} is not a converted dataset (no {INFO_FILE}); run "
                        f"data_prep/convert_h36m.py first (README 'Prepare Human3.6M')")
    with open(path) as f:
        info = json.load(f)
    if info.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {info.get('format_version')}, this code reads {FORMAT_VERSION}; "
                        f"re-run the converter")
    return info


# ---------------------------------------------------------------------------------------- writing
def write_shard(path: str, payloads: Sequence[bytes]) -> None:
    """Writes one ArrayRecord shard atomically (``path + '.tmp'`` then rename).

    ``group_size:1`` keeps every record independently addressable (fast random access)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for p in payloads:
            writer.write(p)
    finally:
        writer.close()
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- reading
class ShardedRecords:
    """Random access to the decoded records of one converted dataset directory.

    ``len(src)`` records; ``src[i]`` -> the record dict (:func:`decode_record`). Picklable (the
    underlying grain ``ArrayRecordDataSource`` re-opens its files in each worker process).
    ``dataset_dir`` must be local (:func:`require_local`)."""

    def __init__(self, dataset_dir: str):
        import grain

        require_local(dataset_dir)
        self.dataset_dir = dataset_dir
        self.info = load_info(dataset_dir)
        paths = shard_paths(dataset_dir)
        if len(paths) != self.info["num_shards"]:
            raise DataError(f"{dataset_dir}: {len(paths)} shard files, dataset_info.json lists "
                            f"{self.info['num_shards']}; re-run the converter")
        self._source = grain.sources.ArrayRecordDataSource(paths)
        if len(self._source) != self.info["num_records"]:
            raise DataError(f"{dataset_dir}: shards hold {len(self._source)} records, dataset_info.json says "
                            f"{self.info['num_records']}; re-run the converter")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return decode_record(self._source[int(index)])

    def raw(self, index: int) -> bytes:
        return self._source[int(index)]

    def __repr__(self) -> str:
        return f"ShardedRecords({self.dataset_dir!r}, {len(self)} records)"
