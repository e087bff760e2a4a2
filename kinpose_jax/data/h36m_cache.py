"""The original's cache pickles (docs/DESIGN.md#cache-format): a list of dicts per set, read safely (no code
runs; Python 2 / numpy 1.x pickles included) and written the same way."""

from __future__ import annotations

import os
import pickle

from kinpose_jax.data import DataError


H36M_CACHE_KEYS: tuple[str, ...] = (
    "image", "center_x", "center_y", "width", "height", "flip_pairs", "parent_ids", "joints_3d",
    "joints_3d_vis", "joints_3d_cam", "pelvis", "fl", "c_p", "bone_len",
)
MPII_CACHE_KEYS: tuple[str, ...] = (
    "image", "center_x", "center_y", "width", "height", "flip_pairs", "joints_3d", "joints_3d_vis",
)


class _CacheUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays/scalars (no code runs), and maps
    numpy 1.x module paths (``numpy.core``) onto numpy 2's (``numpy._core``)."""

    _ALLOWED = {
        ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"), ("builtins", "slice"),
        ("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str):
        module = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric",
                  "__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a cache holds only lists, dicts "
                                         f"and numpy arrays)")
        return super().find_class(module, name)


def load_cache(path: str) -> list[dict]:
    """Loads a cache of the original: a pickled list of dicts (docs/DESIGN.md#cache-format), including caches written by
    Python 2.7/3.6 with numpy 1.x. Raises DataError naming the file if it is missing, not a
    pickle, not a list of dicts, or empty."""
    data, errors = None, []
    try:
        with open(path, "rb") as f:
            for encoding in ("ASCII", "latin1"):  # latin1: Python 2 pickles of numpy arrays
                f.seek(0)
                try:
                    data = _CacheUnpickler(f, encoding=encoding).load()
                    break
                except UnicodeDecodeError as err:
                    errors.append(err)
                except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
                    raise DataError(f"cache {path} is not a readable pickle: {type(err).__name__}: {err}") from err
    except OSError as err:
        raise DataError(f"cannot read cache {path}: {err}") from err
    if data is None:
        raise DataError(f"cache {path} could not be decoded: {errors[-1]}")
    if not isinstance(data, (list, tuple)):
        raise DataError(f"cache {path} holds a {type(data).__name__}, expected a list of dicts (one per frame)")
    if not data:
        raise DataError(f"cache {path} holds no records (empty list)")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"cache {path} record {i}: a {type(rec).__name__}, expected a dict")
    return list(data)


def write_cache(path: str, records: list[dict]) -> None:
    """Pickles ``records`` like the original's caches (a list of dicts, protocol 3), atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(records, f, protocol=3)
    os.replace(tmp, path)
