"""Input-pipeline throughput per CPU core: the grain pipeline over full-image records and over
patch-sized (crop-layout) records vs a PyTorch DataLoader running the original-style per-sample OpenCV
pipeline, in the same run, same worker count, same augmentations; plus where a sample's time goes.

    python benchmarks/input_pipeline.py [--workers 2] [--image_size 1000] [--batches 20] [--quick]
        [--out benchmarks/results/input_pipeline.json]
    python benchmarks/input_pipeline.py --table benchmarks/results/input_pipeline.json  # README table

Data: a synthetic Human3.6M (original layout, generated once into --data, default
/tmp/kinpose_bench_data) with --image_size px frames (1000 ~ real Human3.6M's 1000 x 1002),
converted twice to ArrayRecord shards: ``records/`` (full layout: the JPEG files) and
``records_crop/`` (crop layout, ``convert.crop_layout`` for --patch and the pipeline's
augmentation: JPEG crops of the region any draw samples, at a scale-1 patch's resolution).

* grain_full / grain_crop: ``kinpose_jax.data.pipeline.make_train_iterator`` — records from the
  shards, decode, augmentation (docs/DESIGN.md#augmentation), warp, batched in the workers as uint8
  patches + colour gains (the pixel normalization runs on the device in training, not timed here).
* torch: ``torch.utils.data.DataLoader(shuffle=True, drop_last=True)`` over the original's cache (list
  of dicts) with a ``Dataset.__getitem__`` written in the original's style: ``cv2.imread`` of the file,
  python ``random`` / ``np.random`` draws, three-point ``cv2.getAffineTransform``, per-channel and
  per-joint Python loops, CHW float32 tensors (normalized on the host).

All use OpenCV with one thread per worker process. Throughput is measured after --warmup batches
(worker start-up excluded), in --rounds rounds cycling through the three pipelines (fresh workers
every round; median round reported, all rounds in the JSON). Per core = images/s divided by the
cores the pipeline used, counted as its worker processes, ``min(workers, cpu_count)`` (1 when
--workers 0: it runs in this process). Bytes per image leaving the workers = the nbytes of one
batch's arrays / batch size. The split (decode / warp / transfer per image) is timed
single-threaded in this process over the records: ``cv2.imdecode`` of the full JPEG and of the
crop; ``augment.make_sample`` on the decoded image / crop with each record's training draw (the
``cv2.warpAffine`` to the patch, BGR->RGB, labels); ``jax.device_put`` of a uint8 image batch to
JAX's default device (until ready), divided by the batch size. The projection of cores for 1,000
and 8,000 images/s is the arithmetic target / measured per-core rate. Prints the ratios against
the baselines measured in the same run and a markdown table (README's input-path section); writes
JSON; never asserts anything about speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402
from kinpose_jax import skeleton  # noqa: E402
from kinpose_jax.data import augment, convert, h36m_cache, h36m_layout, pipeline, records  # noqa: E402
from kinpose_jax.synthetic import h36m as synthetic  # noqa: E402

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


# ------------------------------------------------------------------ the original-style torch dataset
def _rotate_2d(pt, rad):
    sn, cs = np.sin(rad), np.cos(rad)
    return np.array([pt[0] * cs - pt[1] * sn, pt[0] * sn + pt[1] * cs], dtype=np.float32)


def _trans(cx, cy, w, h, pw, ph, scale, rot):
    rad = np.pi * rot / 180
    c = np.array([cx, cy], np.float32)
    src = np.zeros((3, 2), np.float32)
    src[0], src[1], src[2] = c, c + _rotate_2d([0, h * scale * 0.5], rad), c + _rotate_2d([w * scale * 0.5, 0], rad)
    dst = np.array([[pw * 0.5, ph * 0.5], [pw * 0.5, ph], [pw, ph * 0.5]], np.float32)
    return cv2.getAffineTransform(src, dst)


class SeedStyleDataset:
    """``torch.utils.data.Dataset`` doing what the original's ``get_single_patch_sample`` does."""

    def __init__(self, db, patch, cfg):
        self.db, self.patch, self.cfg = db, patch, cfg

    def __len__(self):
        return len(self.db)

    def __getitem__(self, index):
        import torch

        rec = self.db[index]
        img = cv2.imread(rec["image"], cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if not isinstance(img, np.ndarray):
            raise IOError(f"failed to read {rec['image']}")
        c = self.cfg
        scale = np.clip(np.random.randn(), -1.0, 1.0) * c.scale_factor + 1.0
        rot = np.clip(np.random.randn(), -2.0, 2.0) * c.rotation_factor if random.random() <= c.rotation_prob else 0
        flip = random.random() <= c.flip_prob
        gains = [random.uniform(1 - c.color_factor, 1 + c.color_factor) for _ in range(3)]
        h, w, ch = img.shape
        cx = rec["center_x"]
        joints, vis = rec["joints_3d"].copy(), rec["joints_3d_vis"].copy()
        if flip:
            img = img[:, ::-1, :]
            cx = w - cx - 1
            joints[:, 0] = w - joints[:, 0] - 1
            for a, b in rec["flip_pairs"]:
                joints[a, :], joints[b, :] = joints[b, :], joints[a, :].copy()
                vis[a, :], vis[b, :] = vis[b, :], vis[a, :].copy()
        trans = _trans(cx, rec["center_y"], rec["width"], rec["height"], self.patch, self.patch, scale, rot)
        patch = cv2.warpAffine(img, trans, (self.patch, self.patch), flags=cv2.INTER_LINEAR)[:, :, ::-1]
        tensor = np.transpose(patch.copy(), (2, 0, 1)).astype(np.float32)
        for n in range(ch):
            tensor[n] = np.clip(tensor[n] * gains[n], 0, 255)
            tensor[n] = (tensor[n] - MEAN[n]) / STD[n]
        for j in range(len(joints)):
            joints[j, 0:2] = trans @ np.array([joints[j, 0], joints[j, 1], 1.0])
            joints[j, 2] = joints[j, 2] / (2000.0 * scale) * self.patch
        label = joints.copy()
        label[:, 0] = label[:, 0] / self.patch - 0.5
        label[:, 1] = label[:, 1] / self.patch - 0.5
        label[:, 2] = label[:, 2] / self.patch
        return torch.from_numpy(tensor), torch.from_numpy(label.reshape(-1).astype(np.float32)), \
            torch.from_numpy(vis.reshape(-1).astype(np.float32))


def _torch_worker_init(worker_id):
    cv2.setNumThreads(1)
    np.random.seed(1000 + worker_id)
    random.seed(1000 + worker_id)


# ------------------------------------------------------------------ timing
def measure(iterator, warmup: int, batches: int, batch_size: int) -> dict:
    """images/s over ``batches`` after ``warmup``, and bytes per image of a batch's arrays."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    t1 = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    t2 = time.perf_counter()
    arrays = batch.values() if isinstance(batch, dict) else batch
    return {"images_per_s": batches * batch_size / (t2 - t1), "warmup_s": t1 - t0, "seconds": t2 - t1,
            "batches": batches, "bytes_per_image": sum(np.asarray(a).nbytes for a in arrays) // batch_size}


def cores_used(workers: int) -> int:
    """Cores a pipeline with ``workers`` worker processes uses: min(workers, cpu_count), 1 in-process."""
    return max(1, min(workers, os.cpu_count() or 1))


def _per_image_ms(fn, items, repeats: int) -> float:
    """Median over ``repeats`` passes of the mean milliseconds of ``fn(item)`` over ``items``."""
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        passes.append((time.perf_counter() - t0) * 1e3 / len(items))
    return statistics.median(passes)


def split_times(full_dir: str, crop_dir: str, aug_cfg, patch: int, batch: int, n: int, repeats: int) -> dict:
    """Single-threaded ms per image: JPEG decode (full image, crop), warp (``augment.make_sample``
    with each record's training draw), host->device transfer of a uint8 batch (``jax.device_put``)."""
    full_src, crop_src = records.ShardedRecords(full_dir), records.ShardedRecords(crop_dir)
    n = min(n, len(full_src))
    full = [full_src[i] for i in range(n)]
    crop = [crop_src[i] for i in range(n)]
    draws = [augment.draw_augmentation(augment.record_rng(0, 0, pipeline.H36M, i), aug_cfg) for i in range(n)]
    full_img = [augment.decode_image(r["image"]) for r in full]
    crop_img = [augment.decode_image(r["image"]) for r in crop]
    crops = [pipeline._record_crop(r, img, "benchmark") for r, img in zip(crop, crop_img)]
    size = (patch, patch)

    def sample(args):
        rec, img, aug, geom = args
        augment.make_sample(img, rec["center"], rec["box_size"], rec["joints_img"], rec["joints_vis"], aug, size,
                            skeleton.H36M_FLIP_PAIRS, crop=geom, image_width=int(rec["image_size"][0]))

    import jax

    images = np.random.default_rng(0).integers(0, 256, (batch, patch, patch, 3), dtype=np.uint8)
    device = jax.devices()[0]
    jax.device_put(images, device).block_until_ready()  # first transfer: allocation, not timed
    transfer = _per_image_ms(lambda _: jax.device_put(images, device).block_until_ready(), [0], repeats * 5) / batch
    return {
        "records": n, "repeats": repeats,
        "decode_full_ms": _per_image_ms(augment.decode_image, [r["image"] for r in full], repeats),
        "decode_crop_ms": _per_image_ms(augment.decode_image, [r["image"] for r in crop], repeats),
        "warp_full_ms": _per_image_ms(sample, list(zip(full, full_img, draws, [None] * n)), repeats),
        "warp_crop_ms": _per_image_ms(sample, list(zip(crop, crop_img, draws, crops)), repeats),
        "transfer_ms": transfer, "transfer_device": str(device), "transfer_batch": batch,
        "stored_bytes_full": int(np.mean([len(r["image"]) for r in full])),
        "stored_bytes_crop": int(np.mean([len(r["image"]) for r in crop])),
        "decoded_pixels_full": int(np.mean([i.shape[0] * i.shape[1] for i in full_img])),
        "decoded_pixels_crop": int(np.mean([i.shape[0] * i.shape[1] for i in crop_img])),
    }


def projection(per_core: float) -> dict:
    """Cores needed for 1,000 and 8,000 images/s at ``per_core`` images/s per core, as arithmetic."""
    return {str(t): {"cores": t / per_core, "arithmetic": f"{t} / {per_core:.1f} = {t / per_core:.1f} cores"}
            for t in (1000, 8000)}


def markdown_table(result: dict) -> str:
    """The README's input-path table of ``result`` (a run of :func:`main`)."""
    rows = ["| pipeline | images/s | per core | bytes/image leaving the workers | cores for 1,000 / 8,000 images/s |",
            "|---|---:|---:|---:|---:|"]
    for key, name in (("grain_full", "grain, full-image records"), ("grain_crop", "grain, patch-sized records"),
                      ("torch_seed_style", "original-style torch DataLoader")):
        r = result[key]
        rows.append(f"| {name} | {r['images_per_s']:.0f} | {r['images_per_s_per_core']:.0f} | "
                    f"{r['bytes_per_image']:,} | {r['projection']['1000']['cores']:.1f} / "
                    f"{r['projection']['8000']['cores']:.1f} |")
    s = result["split"]
    rows.append("")
    rows.append(f"Per image, single-threaded: decode {s['decode_full_ms']:.2f} ms (full {result['image_size']} px "
                f"JPEG) vs {s['decode_crop_ms']:.2f} ms (crop), warp {s['warp_full_ms']:.2f} / "
                f"{s['warp_crop_ms']:.2f} ms, transfer {s['transfer_ms'] * 1e3:.1f} us ({s['transfer_device']}). "
                f"Patch-sized records: {result['ratio_crop_over_full_per_core']:.1f}x the full-image path and "
                f"{result['ratio_crop_over_torch_per_core']:.1f}x the torch baseline per core "
                f"({result['cores_used']} cores = min({result['workers']} workers, {result['cpu_count']} CPUs)).")
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/tmp/kinpose_bench_data")
    p.add_argument("--image_size", type=int, default=1000)
    p.add_argument("--folders", type=int, default=8)
    p.add_argument("--frames", type=int, default=32, help="frames per folder")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--read_threads", type=int, default=1, help="grain reader threads per process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=20, help="batches per timed round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per pipeline, cycling (median reported)")
    p.add_argument("--split_records", type=int, default=64, help="records the decode/warp split is timed on")
    p.add_argument("--split_repeats", type=int, default=5, help="passes of the split timing (median reported)")
    p.add_argument("--quick", action="store_true", help="small images, 64 px patches, few batches (smoke test)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs",
                                                  "input_pipeline.json"),
                   help="JSON output (benchmarks/results/ holds the published numbers: pass it to update them)")
    p.add_argument("--table", default="", help="only print the markdown table of this JSON (a finished run)")
    args = p.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            result = json.load(f)
        print(markdown_table(result))
        return result
    if args.quick:
        args.image_size, args.folders, args.frames, args.batches, args.warmup, args.batch = 320, 2, 16, 4, 1, 8
        args.rounds, args.split_records, args.split_repeats, args.patch = 1, 8, 1, 64  # crops smaller than images
    cv2.setNumThreads(1)
    root = os.path.join(args.data, f"s{args.image_size}_f{args.folders}x{args.frames}")
    synthetic.generate(root, train_folders=args.folders, frames_per_folder=args.frames, valid_folders=1,
                       valid_frames_per_folder=4, image_size=args.image_size)
    config = default.get_config()
    aug_cfg = augment.AugmentConfig.from_config(config.data)
    full_dir, crop_dir = os.path.join(root, "records"), os.path.join(root, "records_crop")
    convert.convert_h36m(root, "train", full_dir, progress=False)
    convert.convert_h36m(root, "train", crop_dir, progress=False, crop=convert.crop_layout(
        args.patch, aug_cfg.scale_factor, aug_cfg.rotation_factor, aug_cfg.rotation_prob))

    base = dict(patch_size=args.patch, seed=0, worker_count=args.workers, read_threads=args.read_threads,
                process_index=0, process_count=1)
    grain_cfgs = {"grain_full": pipeline.PipelineConfig.from_config(config, args.batch, records_dir=full_dir, **base),
                  "grain_crop": pipeline.PipelineConfig.from_config(config, args.batch, records_dir=crop_dir, **base)}
    import torch

    torch.set_num_threads(1)
    db = h36m_cache.load_cache(h36m_layout.find_cache(os.path.join(root, "hm36"), "train"))
    for rec in db:
        rec["image"] = h36m_layout.reroot_image_path(rec["image"], os.path.join(root, "hm36", "images"), 2)
        rec["flip_pairs"] = np.asarray(skeleton.H36M_FLIP_PAIRS)

    def torch_iterator():
        loader = torch.utils.data.DataLoader(SeedStyleDataset(db, args.patch, aug_cfg), batch_size=args.batch,
                                             shuffle=True, drop_last=True, num_workers=args.workers,
                                             worker_init_fn=_torch_worker_init, persistent_workers=args.workers > 0)
        while True:
            yield from loader

    # Rounds cycle through the three pipelines, each round with fresh iterators/workers (closed
    # afterwards, so none prefetches while another is timed); the median round is reported.
    names = ("grain_full", "grain_crop", "torch_seed_style")
    rounds = {k: [] for k in names}
    for _ in range(args.rounds):
        for name in names:
            it = torch_iterator() if name == "torch_seed_style" else pipeline.make_train_iterator(grain_cfgs[name])
            try:
                rounds[name].append(measure(it, args.warmup, args.batches, args.batch))
            finally:
                it.close()  # grain: stops the workers; torch: ends the generator, the DataLoader goes away
                del it
                gc.collect()

    cores = cores_used(args.workers)
    res = {}
    for name in names:
        r = sorted(rounds[name], key=lambda x: x["images_per_s"])[len(rounds[name]) // 2]
        r["rounds_images_per_s"] = [x["images_per_s"] for x in rounds[name]]
        r["images_per_s_per_core"] = r["images_per_s"] / cores
        r["projection"] = projection(r["images_per_s_per_core"])
        res[name] = r
    # after the worker rounds: JAX starts its threads in this process only now
    split = split_times(os.path.join(full_dir, "hm36_train"), os.path.join(crop_dir, "hm36_train"), aug_cfg,
                        args.patch, args.batch, args.split_records, args.split_repeats)
    import jax

    per_core = {k: res[k]["images_per_s_per_core"] for k in names}
    result = {
        "benchmark": "input_pipeline", "image_size": args.image_size, "patch": args.patch, "batch": args.batch,
        "workers": args.workers, "cores_used": cores,
        "cores_counted_as": "worker processes: min(workers, cpu_count), 1 when workers = 0",
        "rounds": args.rounds, "batches_per_round": args.batches, "grain_read_threads": args.read_threads,
        "records": len(db), "crop_layout": records.load_info(os.path.join(crop_dir, "hm36_train"))["crop"],
        **res, "split": split,
        "ratio_crop_over_full_per_core": per_core["grain_crop"] / per_core["grain_full"],
        "ratio_crop_over_torch_per_core": per_core["grain_crop"] / per_core["torch_seed_style"],
        "ratio_full_over_torch_per_core": per_core["grain_full"] / per_core["torch_seed_style"],
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "jax": jax.__version__, "opencv": cv2.__version__, "quick": bool(args.quick),
    }
    print(f"images {args.image_size}px -> patch {args.patch}, batch {args.batch}, {args.workers} workers "
          f"({os.cpu_count()} CPUs; per core = / {cores})")
    for name, what in (("grain_full", "uint8 patch"), ("grain_crop", "uint8 patch"),
                       ("torch_seed_style", "float32 patch")):
        r = res[name]
        print(f"  {name:17s}: {r['images_per_s']:8.1f} images/s, {r['images_per_s_per_core']:7.1f} per core, "
              f"{r['bytes_per_image']:,} bytes/image ({what}); cores for 1,000 / 8,000 images/s: "
              f"{r['projection']['1000']['arithmetic']} / {r['projection']['8000']['arithmetic']}")
    print(f"  per image (1 thread): decode full {split['decode_full_ms']:.2f} ms, crop {split['decode_crop_ms']:.2f} ms;"
          f" warp full {split['warp_full_ms']:.2f} ms, crop {split['warp_crop_ms']:.2f} ms; transfer "
          f"{split['transfer_ms'] * 1e3:.1f} us ({split['transfer_device']})")
    print(f"  per core: crop / full {result['ratio_crop_over_full_per_core']:.2f}, crop / torch "
          f"{result['ratio_crop_over_torch_per_core']:.2f}, full / torch {result['ratio_full_over_torch_per_core']:.2f}")
    print("\n" + markdown_table(result) + "\n")
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
