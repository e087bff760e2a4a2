"""From a training config to ready pipelines: generate the synthetic set if asked, convert the
seed-layout data to shards if not done yet, then build :class:`~kinpose_jax.data.pipeline.DataPipeline`.

    data = setup.create(config, global_batch_size)          # config: configs/default.py fields
    data.steps_per_epoch; it = data.train_iterator(); for batch in data.eval_batches(): ...

Multi-process runs: process 0 prepares, the others wait for ``dataset_info.json`` to appear.
"""

from __future__ import annotations

import os
import time

from kinpose_jax.data import convert, pipeline, records


def _records_dir(config) -> str:
    return config.data.records_dir or os.path.join(config.data.root, "records")


def _needed(config, train: bool) -> list[tuple[str, str]]:
    d = config.data
    sets = [("h36m", d.eval_set)]
    if train:
        sets.insert(0, ("h36m", d.train_set))
        if d.mpii_fraction > 0:
            sets.append(("mpii", "train"))
    return sets


def ensure_dataset(config, train: bool = True, process_index: int | None = None, timeout_s: float = 3600.0,
                   log=print) -> None:
    """Makes sure the shards the config needs exist (idempotent, cheap when done).

    With ``config.data.synthetic`` the synthetic Human3.6M is generated under ``config.data.root``
    first (``synthetic_train_folders`` x ``synthetic_frames_per_folder`` frames of
    ``synthetic_image_size`` px). Missing shards are converted from ``root/hm36`` (``root/mpii``),
    in ``config.data.record_layout``; shards converted with another layout or other crop options
    are converted again to match the config.
    """
    if process_index is None:
        import jax

        process_index = jax.process_index()
    out = _records_dir(config)
    needed = _needed(config, train)
    infos = [os.path.join(pipeline.dataset_dir(out, kind, s), records.INFO_FILE) for kind, s in needed]
    if process_index != 0:
        start = time.monotonic()
        while not all(os.path.exists(p) for p in infos):
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"process {process_index}: data not prepared by process 0 after {timeout_s} s: "
                                   f"{[p for p in infos if not os.path.exists(p)]}")
            time.sleep(2.0)
        return
    d = config.data
    if d.synthetic:
        from kinpose_jax.data import synthetic

        synthetic.generate(d.root, train_folders=d.synthetic_train_folders,
                           frames_per_folder=d.synthetic_frames_per_folder, image_size=d.synthetic_image_size,
                           log=log)
    layout = d.get("record_layout", "full")
    if layout not in ("full", "crop"):
        raise ValueError(f"config.data.record_layout must be 'full' or 'crop', got {layout!r}")
    crop = None
    if layout == "crop":
        crop = convert.crop_layout(int(d.patch_size), float(d.scale_factor), float(d.rotation_factor),
                                   float(d.rotation_prob))
    for kind, image_set in needed:
        progress = bool(config.get("progress_bar", True))
        if kind == "h36m":
            convert.convert_h36m(d.root, image_set, out, progress=progress, log=log, crop=crop)
        else:
            convert.convert_mpii(d.root, image_set, out, progress=progress, log=log, crop=crop)


def create(config, global_batch_size: int, train: bool = True) -> pipeline.DataPipeline:
    """Prepares the data (:func:`ensure_dataset`) and returns the pipelines for ``config``."""
    ensure_dataset(config, train)
    return pipeline.DataPipeline(pipeline.config_from_ml_collections(config, global_batch_size), train=train)
