"""Input-pipeline throughput: the grain pipeline vs a PyTorch DataLoader running the seed-style
per-sample OpenCV pipeline, in the same run, same worker count, same augmentations.

    python benchmarks/input_pipeline.py [--workers 2] [--image_size 1000] [--batches 30] [--quick]

Data: a synthetic Human3.6M (seed layout, generated once into --data, default
/tmp/kinpose_bench_data) with --image_size px frames (1000 ~ real Human3.6M's 1000 x 1002),
converted to ArrayRecord shards.

* grain: ``kinpose_jax.data.pipeline.make_train_iterator`` — records from the shards (JPEG bytes),
  decode, augmentation (docs/DESIGN.md#augmentation), warp, batched in the workers as uint8 patches
  + colour gains (the pixel normalization runs on the device in training, not timed here).
* torch: ``torch.utils.data.DataLoader(shuffle=True, drop_last=True)`` over the seed's cache (list
  of dicts) with a ``Dataset.__getitem__`` written in the seed's style: ``cv2.imread`` of the file,
  python ``random`` / ``np.random`` draws, three-point ``cv2.getAffineTransform``, per-channel and
  per-joint Python loops, CHW float32 tensors (normalized on the host).

Both use OpenCV with one thread per worker process. Throughput is measured after --warmup
batches (worker start-up excluded), in --rounds rounds alternating between the two pipelines
(fresh workers every round; median round reported, all rounds in the JSON). Prints images/s and the ratio, writes JSON; never asserts
anything about speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kinpose_jax import skeleton  # noqa: E402
from kinpose_jax.data import convert, h36m_format, pipeline, synthetic  # noqa: E402

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


# ------------------------------------------------------------------ the seed-style torch dataset
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
    """``torch.utils.data.Dataset`` doing what the seed's ``get_single_patch_sample`` does."""

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
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per pipeline (median reported)")
    p.add_argument("--quick", action="store_true", help="small images and few batches (smoke test)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs",
                                                  "input_pipeline.json"),
                   help="JSON output (benchmarks/results/ holds the published numbers: pass it to update them)")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.folders, args.frames, args.batches, args.warmup, args.batch = 320, 2, 16, 4, 1, 8
        args.rounds = 1
    cv2.setNumThreads(1)
    root = os.path.join(args.data, f"s{args.image_size}_f{args.folders}x{args.frames}")
    synthetic.generate(root, train_folders=args.folders, frames_per_folder=args.frames, valid_folders=1,
                       valid_frames_per_folder=4, image_size=args.image_size)
    convert.convert_h36m(root, "train", progress=False)

    cfg = pipeline.PipelineConfig(records_dir=os.path.join(root, "records"), patch_size=args.patch,
                                  global_batch_size=args.batch, seed=0, worker_count=args.workers,
                                  read_threads=args.read_threads, process_index=0, process_count=1)
    import torch

    torch.set_num_threads(1)
    db = h36m_format.load_cache(h36m_format.find_cache(os.path.join(root, "hm36"), "train"))
    for rec in db:
        rec["image"] = h36m_format.reroot_image_path(rec["image"], os.path.join(root, "hm36", "images"), 2)
        rec["flip_pairs"] = np.asarray(skeleton.H36M_FLIP_PAIRS)

    def torch_iterator():
        loader = torch.utils.data.DataLoader(SeedStyleDataset(db, args.patch, cfg.aug), batch_size=args.batch,
                                             shuffle=True, drop_last=True, num_workers=args.workers,
                                             worker_init_fn=_torch_worker_init, persistent_workers=args.workers > 0)
        while True:
            yield from loader

    # Rounds alternate between the two pipelines, each round with fresh iterators/workers (closed
    # afterwards, so neither prefetches while the other is timed); the median round is reported.
    rounds = {"grain": [], "torch": []}
    for _ in range(args.rounds):
        grain_it = pipeline.make_train_iterator(cfg)
        try:
            rounds["grain"].append(measure(grain_it, args.warmup, args.batches, args.batch))
        finally:
            grain_it.close()
        torch_it = torch_iterator()
        try:
            rounds["torch"].append(measure(torch_it, args.warmup, args.batches, args.batch))
        finally:
            torch_it.close()  # ends the generator: the DataLoader and its workers go away
            del torch_it
            gc.collect()

    def median(results):
        return sorted(results, key=lambda x: x["images_per_s"])[len(results) // 2]

    grain_res, torch_res = median(rounds["grain"]), median(rounds["torch"])
    grain_res["rounds_images_per_s"] = [x["images_per_s"] for x in rounds["grain"]]
    torch_res["rounds_images_per_s"] = [x["images_per_s"] for x in rounds["torch"]]
    ratio = grain_res["images_per_s"] / torch_res["images_per_s"]
    result = {
        "benchmark": "input_pipeline", "image_size": args.image_size, "patch": args.patch, "batch": args.batch,
        "workers": args.workers, "rounds": args.rounds, "batches_per_round": args.batches,
        "grain_read_threads": args.read_threads, "records": len(db),
        "grain": grain_res, "torch_seed_style": torch_res, "ratio_grain_over_torch": ratio,
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "opencv": cv2.__version__, "quick": bool(args.quick),
    }
    print(f"images {args.image_size}px -> patch {args.patch}, batch {args.batch}, {args.workers} workers "
          f"({os.cpu_count()} CPUs)")
    print(f"  grain pipeline        : {grain_res['images_per_s']:8.1f} images/s, "
          f"{grain_res['bytes_per_image']:,} bytes/image (uint8 patch)")
    print(f"  torch seed-style      : {torch_res['images_per_s']:8.1f} images/s, "
          f"{torch_res['bytes_per_image']:,} bytes/image (float32 patch)")
    print(f"  ratio grain / torch   : {ratio:8.2f}")
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
