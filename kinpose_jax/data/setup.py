"""From a training config to ready pipelines: generate the synthetic set if asked, convert the
original-layout data to shards if not done yet, then build :class:`~kinpose_jax.data.pipeline.DataPipeline`.

    data = setup.create(config, global_batch_size)          # config: configs/default.py fields
    data.steps_per_epoch; it = data.train_iterator(); for batch in data.eval_batches(): ...

Multi-process runs: process 0 prepares while the others wait at a JAX collective (no file
polling); process 0's success or failure is broadcast there, so the others raise instead of
waiting when it failed, and every process then checks that it sees the prepared ``dataset_info.json``.
"""

from __future__ import annotations

import os

from kinpose_jax.data import DataError, convert, pipeline, records
from kinpose_jax.registry import RECORD_LAYOUTS


def _needed(config, train: bool) -> list[tuple[str, str]]:
    d = config.data
    sets = [("h36m", d.eval_set)]
    if train:
        sets.insert(0, ("h36m", d.train_set))
        if d.mpii_fraction > 0:
            sets.append(("mpii", pipeline.MPII_SET))
    return sets


def ensure_dataset(config, train: bool = True, process_index: int | None = None, log=print) -> None:
    """Makes sure the shards the config needs exist (idempotent, cheap when done).

    With ``config.data.synthetic`` the synthetic Human3.6M is generated under ``config.data.root``
    first (``synthetic_train_folders`` x ``synthetic_frames_per_folder`` frames of
    ``synthetic_image_size`` px). Missing shards are converted from ``root/hm36`` (``root/mpii``),
    in ``config.data.record_layout``; shards converted with another layout or other crop options
    are converted again to match the config.

    Only process 0 prepares; every process of a multi-process run must call this (they meet in
    :func:`_process0_failed`). Process 0 re-raises its own error; the others raise DataError
    saying that process 0 failed. DataError names each ``dataset_info.json`` a process does not
    see afterwards (``records_dir`` must be storage shared by all processes).
    """
    if process_index is None:
        import jax

        process_index = jax.process_index()
    out = pipeline.records_dir(config)
    records.require_local(out)
    needed = _needed(config, train)
    error = None
    if process_index == 0:
        try:
            _prepare(config, needed, out, log)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the others learn of it
            error = err
    failed = _process0_failed(error is not None)
    if error is not None:
        raise error
    if failed:
        raise DataError(f"process {process_index}: process 0 failed to prepare the data in {out} "
                        f"(its output names the error)")
    infos = [os.path.join(pipeline.dataset_dir(out, kind, s), records.INFO_FILE) for kind, s in needed]
    missing = [p for p in infos if not os.path.exists(p)]
    if missing:
        raise DataError(f"process {process_index}: {missing} not found after process 0 prepared the data in {out}; "
                        f"data.records_dir (data.root) must be storage every process sees")


def _process0_failed(failed: bool) -> bool:
    """Every process meets here (a collective over all devices: the others wait until process 0
    arrives, after preparing); returns process 0's ``failed``. Single-process: ``failed``."""
    import jax

    if jax.process_count() == 1:
        return failed
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))


def _prepare(config, needed: list[tuple[str, str]], out: str, log) -> None:
    """Process 0's part of :func:`ensure_dataset`: generate (synthetic) and convert."""
    d = config.data
    if d.synthetic:
        from kinpose_jax.synthetic import h36m as synthetic

        synthetic.generate(d.root, train_folders=d.synthetic_train_folders,
                           frames_per_folder=d.synthetic_frames_per_folder, image_size=d.synthetic_image_size,
                           log=log)
    if d.record_layout not in RECORD_LAYOUTS:
        raise ValueError(f"config.data.record_layout must be one of {RECORD_LAYOUTS}, got {d.record_layout!r}")
    crop = None
    if d.record_layout == "crop":
        crop = convert.crop_layout_for(d)
    for kind, image_set in needed:
        progress = bool(config.progress_bar)
        if kind == "h36m":
            convert.convert_h36m(d.root, image_set, out, progress=progress, log=log, crop=crop)
        else:
            convert.convert_mpii(d.root, image_set, out, progress=progress, log=log, crop=crop)


def create(config, global_batch_size: int, train: bool = True) -> pipeline.DataPipeline:
    """Prepares the data (:func:`ensure_dataset`) and returns the pipelines for ``config``."""
    ensure_dataset(config, train)
    return pipeline.DataPipeline(pipeline.PipelineConfig.from_config(config, global_batch_size), train=train)
