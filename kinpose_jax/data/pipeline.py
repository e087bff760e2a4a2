"""grain input pipelines over converted shards: training (augmented, shuffled, endless) and
evaluation (no augmentation, one pass, padded to full batches with a validity mask).

Structure: ``MapDataset.range`` over this process's stream positions -> ``.map`` (plan the
position: epoch, dataset, record; read it; sample (docs/DESIGN.md#training-sample) with a per-record RNG) -> ``.batch``
(per-process batch) -> ``.to_iter_dataset`` (reader threads) -> ``.mp_prefetch`` (worker
processes). Everything is a pure function of (seed, position), so

* the same seed gives the same batches, whatever the worker or thread count;
* the iterator's ``get_state()`` / ``set_state()`` (or grain's orbax ``PyGrainCheckpointHandler``)
  resume exactly where a run stopped (same number of workers required: ``worker_count = -1``
  derives it from the machine, so resume on the same kind of machine or set it explicitly);
* a global batch is the same whatever the number of processes: process ``p`` of ``P`` gets
  rows ``[p * B/P, (p+1) * B/P)`` of every global batch of ``B`` (feed them to
  ``jax.make_array_from_process_local_data`` along a batch-sharded mesh axis).

Epochs (training). Human3.6M only: an epoch is a fresh permutation of the records, cut to
``steps_per_epoch = len // B`` full batches (the ``len % B`` left-over records differ per epoch).
Mixed with MPII (``mpii_fraction = f > 0``), as the original does (``mpii_hm36`` datasets): every
epoch holds *all* MPII records plus ``round(n_mpii * (1 - f) / f)`` Human3.6M records drawn
without replacement from a fresh permutation (f = 0.5 is the original: as many H36M as MPII
records), the union shuffled; a batch therefore holds a fraction f of MPII in expectation.

Batch layout (numpy, leading axis = per-process batch ``B/P``):

* ``image`` [B, P, P, 3] uint8 RGB (NHWC), the warped (and flipped) patch; ``gains`` [B, 3] float32
  the colour augmentation's per-channel gains (1 in evaluation): the device applies both with
  :func:`~kinpose_jax.data.augment.normalize_pixels` (docs/DESIGN.md#pixel-normalization);
  ``joints`` [B, 18, 3] float32 normalized targets (docs/DESIGN.md#normalized-units);
  ``joints_vis`` [B, 18, 3] float32 loss weights; ``valid`` [B] float32 (1 = real sample,
  0 = evaluation padding, always 1 in training). :data:`MODEL_KEYS` are the fields the jitted
  train step / predict function read.
* evaluation adds ``center`` [B, 2] px, ``box_size`` [B, 2] (width, height) px, ``fl`` [B, 2],
  ``c_p`` [B, 2] px, ``pelvis`` [B, 3] mm, ``joints_cam`` [B, 18, 3] mm, ``image_index`` [B] int32
  (record index; -1 for padding), ``sequence`` [B, 4] int32 (subject, action, subaction, camera of
  the image's folder ``s_SS_act_AA_subact_BB_ca_CC``) and ``frame`` [B] int32 (zero-based frame in
  that folder); both -1 for padding.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Iterator

import numpy as np

from kinpose_jax import skeleton
from kinpose_jax.data import DataError, records
from kinpose_jax.data import augment as aug_lib
from kinpose_jax.data import h36m_layout, image_checks

H36M, MPII = 0, 1  # dataset ids (part of the per-record RNG key)
TRAIN_KEYS = ("image", "gains", "joints", "joints_vis", "valid")
#: the batch fields fed to the devices (train step, evaluation predict)
MODEL_KEYS = ("image", "gains", "joints", "joints_vis")
#: ``worker_count = -1`` (auto) starts at most this many worker processes per local device
MAX_WORKERS_PER_DEVICE = 16
EVAL_KEYS = TRAIN_KEYS + ("center", "box_size", "fl", "c_p", "pelvis", "joints_cam", "image_index",
                         "sequence", "frame")


#: The MPII set mixed into training (``mpii_<set>`` records) when ``mpii_fraction > 0``.
MPII_SET = "train"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipelines read. Units: px, mm, degrees. Built from the training config by
    :meth:`from_config` (configs/default.py defines the fields and their defaults; no defaults here).

    Attributes:
      records_dir: folder holding ``hm36_<set>/`` (and ``mpii_<set>/``) from the converter.
      train_set / eval_set: Human3.6M set names (``hm36_<set>`` directories).
      mpii_fraction: expected fraction of MPII samples (set :data:`MPII_SET`) per training batch
        (0 = H36M only, 0.5 = the original's mixing); must be < 1.
      patch_size: square network input, px.
      global_batch_size: images per step over all processes.
      seed: data order and augmentation seed.
      augment: augmentation (docs/DESIGN.md#augmentation) in training (evaluation never augments).
      aug: augmentation parameters (:class:`~kinpose_jax.data.augment.AugmentConfig`).
      worker_count: grain worker processes (0 = in this process; -1 = auto,
        :func:`auto_worker_count`).
      worker_buffer_size: batches each worker prepares ahead.
      read_threads: threads per process (each worker, or this process when ``worker_count`` is 0)
        preparing samples concurrently.
      box_mm: side of the 3D box (mm) the patch shows (docs/DESIGN.md#normalized-units).
      process_index / process_count: this host's slice of every global batch (None = from JAX;
        not config fields).
    """

    records_dir: str
    train_set: str
    eval_set: str
    mpii_fraction: float
    patch_size: int
    global_batch_size: int
    seed: int
    augment: bool
    aug: aug_lib.AugmentConfig
    worker_count: int
    worker_buffer_size: int
    read_threads: int
    box_mm: float
    process_index: int | None = None
    process_count: int | None = None

    @classmethod
    def from_config(cls, config, global_batch_size: int, **overrides) -> PipelineConfig:
        """From the training ConfigDict (every field of configs/default.py: ``config.seed``, the
        ``config.data`` fields and ``config.model.box_mm``); ``overrides`` win (e.g.
        ``worker_count=0``, ``aug=...``, ``process_index=0, process_count=2``)."""
        d = config.data
        values = dict(
            records_dir=records_dir(config), train_set=str(d.train_set), eval_set=str(d.eval_set),
            mpii_fraction=float(d.mpii_fraction), patch_size=int(d.patch_size),
            global_batch_size=int(global_batch_size), seed=int(config.seed), augment=bool(d.augment),
            aug=aug_lib.AugmentConfig.from_config(d), worker_count=int(d.worker_count),
            worker_buffer_size=int(d.worker_buffer_size), read_threads=int(d.read_threads),
            box_mm=float(config.model.box_mm),
        )
        return cls(**dict(values, **overrides))

    def process(self) -> tuple[int, int]:
        """(index, count) of this process."""
        if self.process_index is not None and self.process_count is not None:
            return self.process_index, self.process_count
        import jax

        return jax.process_index(), jax.process_count()

    def workers(self) -> int:
        """The number of worker processes (``worker_count``, -1 resolved by :func:`auto_worker_count`)."""
        if self.worker_count == -1:
            return auto_worker_count()
        if self.worker_count < 0:
            raise ValueError(f"worker_count must be >= 0 or -1 (auto), got {self.worker_count}")
        return self.worker_count

    def local_batch_size(self) -> int:
        _, count = self.process()
        if self.global_batch_size < 1 or self.global_batch_size % count:
            raise ValueError(f"global_batch_size {self.global_batch_size} must be a positive multiple of the "
                             f"{count} processes")
        return self.global_batch_size // count


def records_dir(config) -> str:
    """The shard folder of a training config: ``config.data.records_dir``, or ``<root>/records``."""
    return config.data.records_dir or os.path.join(config.data.root, "records")


def auto_worker_count(cpu_count: int | None = None, local_devices: int | None = None) -> int:
    """Worker processes for ``worker_count = -1``: one per CPU of this process but one (kept for
    the training loop), at most :data:`MAX_WORKERS_PER_DEVICE` per local device; 0 (in-process)
    on a single CPU. Defaults: the CPUs this process may run on, ``jax.local_device_count()``."""
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if local_devices is None:
        import jax

        local_devices = jax.local_device_count()
    return max(0, min(cpu_count - 1, MAX_WORKERS_PER_DEVICE * local_devices))


def dataset_dir(records_dir: str, kind: str, image_set: str) -> str:
    return os.path.join(records_dir, f"{'hm36' if kind == 'h36m' else 'mpii'}_{image_set}")


# ---------------------------------------------------------------------------------------- plans
def _permutation(seed: int, epoch: int, salt: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, salt, 7]).permutation(n)


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """Which record each global stream position reads (pure; see the module docstring)."""

    num_h36m: int
    num_mpii: int
    mpii_fraction: float
    seed: int
    global_batch_size: int

    @property
    def h36m_per_epoch(self) -> int:
        if self.mpii_fraction <= 0 or self.num_mpii == 0:
            return self.num_h36m
        return max(1, int(round(self.num_mpii * (1.0 - self.mpii_fraction) / self.mpii_fraction)))

    @property
    def mpii_per_epoch(self) -> int:
        return self.num_mpii if self.mpii_fraction > 0 else 0

    @property
    def steps_per_epoch(self) -> int:
        return (self.h36m_per_epoch + self.mpii_per_epoch) // self.global_batch_size

    def epoch_entries(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch * B, 3] int64 rows (dataset id, record index, draw) of one epoch."""
        k = self.h36m_per_epoch
        reps = math.ceil(k / self.num_h36m)
        h_idx = np.concatenate([_permutation(self.seed, epoch, 100 + r, self.num_h36m) for r in range(reps)])[:k]
        rows = [np.stack([np.full(k, H36M), h_idx, np.arange(k) // self.num_h36m], axis=1)]
        if self.mpii_per_epoch:
            rows.append(np.stack([np.full(self.num_mpii, MPII), np.arange(self.num_mpii),
                                  np.zeros(self.num_mpii, np.int64)], axis=1))
        entries = np.concatenate(rows).astype(np.int64)
        order = _permutation(self.seed, epoch, 1, len(entries))
        return entries[order][: self.steps_per_epoch * self.global_batch_size]


def _global_position(local: int, local_batch: int, global_batch: int, process_index: int) -> int:
    """Position in the global stream of this process's ``local``-th element."""
    return (local // local_batch) * global_batch + process_index * local_batch + local % local_batch


# ---------------------------------------------------------------------------------------- transforms
class _Sources:
    """Lazily opened record sources (picklable: reopened in each worker process)."""

    def __init__(self, dirs: dict[int, str]):
        self.dirs = dirs
        self._open: dict[int, records.ShardedRecords] = {}

    def __getstate__(self):
        return {"dirs": self.dirs, "_open": {}}

    def get(self, dataset_id: int) -> records.ShardedRecords:
        src = self._open.get(dataset_id)
        if src is None:
            src = self._open[dataset_id] = records.ShardedRecords(self.dirs[dataset_id])
        return src


def _record_crop(rec: dict, image: np.ndarray, where: str) -> aug_lib.Crop | None:
    """The stored crop's geometry (crop-layout records; None for whole images), checked against
    the decoded crop's size."""
    if "crop_origin" not in rec:
        return None
    crop = aug_lib.Crop(tuple(int(v) for v in rec["crop_origin"]), tuple(int(v) for v in rec["crop_size"]),
                        tuple(float(v) for v in rec["crop_scale"]))
    if (image.shape[1], image.shape[0]) != crop.resampled_size():
        raise DataError(f"{where} field image: the stored crop is {image.shape[1]}x{image.shape[0]} px, its recorded "
                        f"geometry (crop_size {crop.size}, crop_scale {crop.scale}) needs "
                        f"{crop.resampled_size()[0]}x{crop.resampled_size()[1]} px")
    return crop


def _sample(rec: dict, aug: aug_lib.Augmentation, cfg: PipelineConfig, where: str) -> dict[str, np.ndarray]:
    if "crop_origin" in rec and not image_checks.jpeg_is_complete(rec["image"]):
        raise DataError(f"{where} field image: the stored JPEG crop is truncated ({len(rec['image'])} bytes)")
    try:
        image = aug_lib.decode_image(rec["image"])
    except ValueError as err:
        raise DataError(f"{where}: {err}") from err
    crop = _record_crop(rec, image, where)
    size = (cfg.patch_size, cfg.patch_size)
    return aug_lib.make_sample(image, rec["center"], rec["box_size"], rec["joints_img"], rec["joints_vis"], aug, size,
                               skeleton.H36M_FLIP_PAIRS, cfg.box_mm, crop=crop, image_width=int(rec["image_size"][0]))


def check_crop_layout(info: dict, cfg: PipelineConfig, path: str, training: bool = True) -> None:
    """Refuses, for a crop-layout dataset (``dataset_info.json`` ``layout: crop``), a patch size
    above the one its resampled crops were cut for (the patch would be upsampled from them), and
    in ``training`` augmentation that could sample outside the stored crops; whole-image
    datasets take any."""
    spec = info.get("crop")
    if info.get("layout", "full") != "crop":
        return
    if spec.get("resample", True) and cfg.patch_size > spec["patch_size"]:
        raise ValueError(f"{path} holds crops resampled for {spec['patch_size']} px patches; this config has "
                         f"data.patch_size={cfg.patch_size}, which would upsample them. Lower data.patch_size or "
                         f"re-convert with matching crop options (crop patch size >= {cfg.patch_size}) or the "
                         f"full-image layout.")
    if not (training and cfg.augment):
        return
    rotates = cfg.aug.rotation_factor != 0.0 and cfg.aug.rotation_prob > 0.0
    stored_rotates = spec["rotation_factor"] != 0.0 and spec["rotation_prob"] > 0.0
    problems = []
    if cfg.aug.scale_factor > spec["scale_factor"]:
        problems.append(f"data.scale_factor={cfg.aug.scale_factor} > {spec['scale_factor']}")
    if rotates and not stored_rotates:
        problems.append(f"rotations (data.rotation_factor={cfg.aug.rotation_factor}, data.rotation_prob="
                        f"{cfg.aug.rotation_prob}) but the crops were cut for none")
    if problems:
        raise ValueError(f"{path} holds patch-sized crops that cover augmentation up to scale_factor "
                         f"{spec['scale_factor']}, rotation_factor {spec['rotation_factor']} (rotation_prob "
                         f"{spec['rotation_prob']}); this config has {'; '.join(problems)}. Lower those options or "
                         f"re-convert with matching crop options (or the full-image layout).")


class TrainTransform:
    """Local stream position -> one augmented training sample (dict of numpy arrays)."""

    def __init__(self, cfg: PipelineConfig, plan: TrainPlan, sources: _Sources):
        self.cfg, self.plan, self.sources = cfg, plan, sources
        self.local_batch = cfg.local_batch_size()
        self.process_index = cfg.process()[0]
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_epoch_cache"] = None
        return state

    def entry(self, local: int) -> tuple[int, int, int, int]:
        """(epoch, dataset id, record index, draw) of local stream position ``local``."""
        pos = _global_position(local, self.local_batch, self.cfg.global_batch_size, self.process_index)
        per_epoch = self.plan.steps_per_epoch * self.cfg.global_batch_size
        epoch, k = divmod(pos, per_epoch)
        cache = self._epoch_cache
        if cache is None or cache[0] != epoch:
            cache = (epoch, self.plan.epoch_entries(epoch))
            self._epoch_cache = cache
        dataset_id, index, draw = (int(v) for v in cache[1][k])
        return epoch, dataset_id, index, draw

    def __call__(self, local: int) -> dict[str, np.ndarray]:
        epoch, dataset_id, index, draw = self.entry(local)
        rec = self.sources.get(dataset_id)[index]
        if self.cfg.augment:
            aug = aug_lib.draw_augmentation(aug_lib.record_rng(self.cfg.seed, epoch, dataset_id, index, draw),
                                            self.cfg.aug)
        else:
            aug = aug_lib.NO_AUGMENTATION
        name = self.sources.dirs[dataset_id]
        out = _sample(rec, aug, self.cfg, f"{name} record {index}")
        return {"image": out["image"], "gains": out["gains"], "joints": out["joints"], "joints_vis": out["joints_vis"],
                "valid": np.float32(1.0)}


class EvalTransform:
    """Local position -> one un-augmented evaluation sample with camera data; padding positions
    (beyond the dataset) repeat record 0 with ``valid`` 0 and ``image_index``, ``sequence``, ``frame`` -1."""

    def __init__(self, cfg: PipelineConfig, sources: _Sources, num_records: int):
        self.cfg, self.sources, self.num_records = cfg, sources, num_records
        self.local_batch = cfg.local_batch_size()
        self.process_index = cfg.process()[0]

    def __call__(self, local: int) -> dict[str, np.ndarray]:
        pos = _global_position(local, self.local_batch, self.cfg.global_batch_size, self.process_index)
        valid = pos < self.num_records
        index = pos if valid else 0
        rec = self.sources.get(H36M)[index]
        out = _sample(rec, aug_lib.NO_AUGMENTATION, self.cfg, f"{self.sources.dirs[H36M]} record {index}")
        f32 = lambda k: np.asarray(rec[k], np.float32)  # noqa: E731
        where = f"{self.sources.dirs[H36M]} record {index} field image_path"
        try:
            folder, frame = h36m_layout.parse_image_path(rec["image_path"])
            sequence = h36m_layout.parse_folder_name(folder)
        except DataError as err:
            raise DataError(f"{where}: {err}") from err
        return {
            "image": out["image"], "gains": out["gains"], "joints": out["joints"], "joints_vis": out["joints_vis"] * np.float32(valid),
            "valid": np.float32(valid), "center": f32("center"), "box_size": f32("box_size"), "fl": f32("fl"),
            "c_p": f32("c_p"), "pelvis": f32("pelvis"), "joints_cam": f32("joints_cam"),
            "image_index": np.int32(rec["index"] if valid else -1),
            "sequence": np.asarray(sequence if valid else (-1,) * 4, np.int32),
            "frame": np.int32(frame if valid else -1),
        }


# ---------------------------------------------------------------------------------------- iterators
def _ensure_absl_flags() -> None:
    """grain's worker processes read absl flags; mark them parsed outside ``absl.app.run``."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _single_threaded_opencv() -> None:
    """One OpenCV thread in every process that decodes and warps (workers, or this process when
    ``worker_count`` is 0): parallelism comes from the processes and ``read_threads``."""
    import cv2

    cv2.setNumThreads(1)


#: Seconds between a worker's checks that the process that started it is still alive.
PARENT_CHECK_S = 1.0


def _exit_with_parent() -> None:
    """Ends this worker process once the process that started it is gone: a trainer killed with
    SIGKILL cannot stop its grain workers, which would otherwise live on holding their memory.
    A daemon thread polls ``os.getppid()``, which changes when the parent dies and the worker is
    re-parented."""
    import threading
    import time

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="kinpose-exit-with-parent", daemon=True).start()


def _worker_init(worker_index: int, worker_count: int) -> None:
    _single_threaded_opencv()
    _exit_with_parent()


def _to_iterator(ds, cfg: PipelineConfig):
    import grain

    ds = ds.batch(cfg.local_batch_size(), drop_remainder=True)
    threads = max(0, int(cfg.read_threads))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 1)))
    workers = cfg.workers()
    if workers == 0:
        _single_threaded_opencv()
    else:
        _ensure_absl_flags()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=cfg.worker_buffer_size),
                            worker_init_fn=_worker_init)
    return iter(ds)


def _h36m_source(cfg: PipelineConfig, image_set: str) -> str:
    path = dataset_dir(cfg.records_dir, "h36m", image_set)
    records.load_info(path)  # clear error if not converted
    return path


def train_plan(cfg: PipelineConfig) -> tuple[TrainPlan, _Sources]:
    if not 0.0 <= cfg.mpii_fraction < 1.0:
        raise ValueError(f"mpii_fraction must be in [0, 1), got {cfg.mpii_fraction}")
    dirs = {H36M: _h36m_source(cfg, cfg.train_set)}
    num_mpii = 0
    if cfg.mpii_fraction > 0:
        dirs[MPII] = dataset_dir(cfg.records_dir, "mpii", MPII_SET)
        num_mpii = records.load_info(dirs[MPII])["num_records"]
    for path in dirs.values():
        check_crop_layout(records.load_info(path), cfg, path)
    num_h36m = records.load_info(dirs[H36M])["num_records"]
    plan = TrainPlan(num_h36m, num_mpii, cfg.mpii_fraction, cfg.seed, cfg.global_batch_size)
    if plan.steps_per_epoch < 1:
        raise ValueError(f"an epoch of {plan.h36m_per_epoch + plan.mpii_per_epoch} samples is shorter than one global "
                         f"batch of {cfg.global_batch_size}")
    return plan, _Sources(dirs)


def make_train_dataset(cfg: PipelineConfig, num_epochs: int | None = None):
    """The training ``MapDataset`` of per-process batches (before iteration), and its plan."""
    import grain

    plan, sources = train_plan(cfg)
    local = cfg.local_batch_size()
    length = sys.maxsize if num_epochs is None else num_epochs * plan.steps_per_epoch * local
    return grain.MapDataset.range(length).map(TrainTransform(cfg, plan, sources)), plan


def make_train_iterator(cfg: PipelineConfig, num_epochs: int | None = None):
    """Endless (or ``num_epochs``) iterator of training batches (module docstring). The returned
    grain ``DatasetIterator`` has ``get_state()`` / ``set_state()`` for exact resumption."""
    ds, _ = make_train_dataset(cfg, num_epochs)
    return _to_iterator(ds, cfg)


def eval_num_batches(num_records: int, global_batch_size: int) -> int:
    return math.ceil(num_records / global_batch_size)


def make_eval_iterator(cfg: PipelineConfig, image_set: str | None = None, num_batches: int | None = None,
                       repeat: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """One pass over ``image_set`` (default ``cfg.eval_set``) without augmentation, in record
    order, the last batch padded (``valid`` 0): every record appears exactly once as valid.

    ``num_batches``: only the pass's first batches (default all); ``repeat``: those batches
    again and again, endlessly (one iterator, one worker pool, for many passes)."""
    import grain

    path = _h36m_source(cfg, image_set or cfg.eval_set)
    info = records.load_info(path)
    check_crop_layout(info, cfg, path, training=False)
    n = info["num_records"]
    sources = _Sources({H36M: path})
    total = eval_num_batches(n, cfg.global_batch_size)
    num_batches = total if num_batches is None else num_batches
    if not 1 <= num_batches <= total:
        raise ValueError(f"num_batches must be in [1, {total}] (the evaluation batches of {path}), got {num_batches}")
    ds = grain.MapDataset.range(num_batches * cfg.local_batch_size()).map(EvalTransform(cfg, sources, n))
    if repeat:
        ds = ds.repeat()
    return _to_iterator(ds, cfg)


class DataPipeline:
    """What a training driver needs: ``steps_per_epoch``, ``train_iterator()`` (checkpointable),
    ``eval_batches()`` (one pass per call), ``num_eval_records``; ``close()`` when done."""

    def __init__(self, cfg: PipelineConfig, train: bool = True):
        self.cfg = cfg
        self.plan = train_plan(cfg)[0] if train else None
        eval_path = _h36m_source(cfg, cfg.eval_set)
        info = records.load_info(eval_path)
        check_crop_layout(info, cfg, eval_path, training=False)  # fail before training, not at the first evaluation
        self.num_eval_records = info["num_records"]
        self._eval = None  # (batches per pass, the repeating iterator, a pass is being read)

    @property
    def steps_per_epoch(self) -> int:
        if self.plan is None:
            raise ValueError("this pipeline was built for evaluation only")
        return self.plan.steps_per_epoch

    @property
    def eval_steps(self) -> int:
        return eval_num_batches(self.num_eval_records, self.cfg.global_batch_size)

    def train_iterator(self):
        return make_train_iterator(self.cfg)

    def eval_batches(self, max_batches: int = -1) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the evaluation set: its first ``max_batches`` batches (-1: all).

        Every pass reads the same iterator (made at the first pass, with its grain worker
        processes; :func:`make_eval_iterator` with ``repeat``), which cycles through the pass's
        batches: the workers start once per pipeline, not once per evaluation. A pass left
        before its end, or a pass of another length, replaces that iterator by a new one."""
        n = self.eval_steps if max_batches < 0 else min(max_batches, self.eval_steps)
        if self._eval is not None and (self._eval[0] != n or self._eval[2]):
            self.close()
        if self._eval is None:
            self._eval = [n, make_eval_iterator(self.cfg, num_batches=n, repeat=True), False]
        entry = self._eval
        entry[2], done = True, 0
        try:
            while done < n:
                batch = next(entry[1])
                done += 1
                entry[2] = done < n  # after the last batch the next pass starts at the cycle's first
                yield batch
        finally:
            if done < n and self._eval is entry:
                self.close()

    def close(self) -> None:
        """Ends the evaluation iterator (its worker processes), if any."""
        entry, self._eval = self._eval, None
        if entry is not None:
            close = getattr(entry[1], "close", None)
            if close is not None:
                close()
