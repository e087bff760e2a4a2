"""Paths of workdirs, checkpoints and records that may be local or remote (``gs://bucket/...``,
any scheme etils.epath knows): :func:`path` gives an ``etils.epath.Path``, whose file operations
go to the right backend (``os.path`` / ``glob`` / ``open`` would treat ``gs://`` as a local
relative path)."""

from __future__ import annotations

import os

from etils import epath


def is_local(p: epath.PathLike) -> bool:
    """True for a path on this machine's file system (no ``scheme://`` prefix)."""
    return "://" not in os.fspath(p)


def path(p: epath.PathLike) -> epath.Path:
    """``p`` as an epath: local paths absolute (orbax wants absolute directories), remote ones as given."""
    return epath.Path(p).resolve() if is_local(p) else epath.Path(p)
