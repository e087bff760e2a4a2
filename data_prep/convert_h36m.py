"""Human3.6M (and MPII) caches of the original -> validated ArrayRecord shards for the grain pipeline.

One command from the original's downloadable caches (README "Prepare Human3.6M"):

    python data_prep/convert_h36m.py --root data --sets train validmin

reads ``data/hm36/HM36_<set>_cache/*.pkl`` (or parses ``data/hm36/annot/*/matlab_meta.txt`` when
a set has no cache), checks every record and image, and writes ``data/records/hm36_<set>/``
(shards + dataset_info.json). Re-running is a no-op when up to date and resumes an interrupted
run. ``--mpii train`` also converts ``data/mpii/mpii_train_cache/*.pkl`` for MPII mixing.
Exit status 2 with a message naming the record (index and image) and field on bad input (or use
--on_error skip: bad records are left out, counted and listed in dataset_info.json). Besides
keys, shapes, finite values and images, a record must be plausible: its box at most
--max_box_scale times the image and overlapping it, its joints_3d within --max_reprojection_px of
the projection of joints_3d_cam with its own fl/c_p, the fl/c_p of the other records of its
sequence folder, and an image path without '..' ending in <sequence folder>/<file>. A
matlab_meta.txt header that cannot be read is an error (file, line, tag). The up-to-date check covers
the cache (or annotations) and the options, not the image files: after fixing the images of
skipped records, re-run with --force to convert afresh.

``--layout crop`` stores, instead of each image file, a JPEG (``--crop_quality``) of only the region
that training augmentation up to ``--crop_scale_factor`` / ``--crop_rotation_factor`` can sample
for ``--crop_patch_size`` patches, at the resolution a scale-1 patch samples: far fewer pixels to
decode per sample. Training refuses augmentation beyond those options (re-convert, or use the
default full-image layout, which takes any augmentation and patch size).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.default import get_config  # noqa: E402
from kinpose_jax.data import DataError, convert, record_checks  # noqa: E402
from kinpose_jax.registry import RECORD_LAYOUTS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = get_config().data  # the training config's defaults
    p.add_argument("--root", default=d.root, help="data root holding hm36/ (and mpii/) in the original's layout")
    p.add_argument("--sets", nargs="+", default=[d.train_set, d.eval_set], help="Human3.6M sets to convert")
    p.add_argument("--out_dir", default="", help="output folder (default <root>/records)")
    p.add_argument("--cache", default="", help="cache pickle to read (only with a single --sets entry)")
    p.add_argument("--image_root", default="",
                   help="folder holding <folder>/<file>.jpg; cache image paths are re-rooted onto it "
                        "(default <root>/hm36/images)")
    p.add_argument("--source", default="auto", choices=["auto", "cache", "annotations"],
                   help="read the cache, parse annot/*/matlab_meta.txt, or the cache if present")
    p.add_argument("--sample", type=int, default=None,
                   help="frames per folder when parsing annotations (default: the set's: train 200, validmin 10, "
                        "valid 40, *full all)")
    p.add_argument("--mpii", nargs="*", default=[], help="MPII sets to convert too (e.g. train)")
    p.add_argument("--mpii_cache", default="", help="MPII cache pickle (only with a single --mpii entry)")
    p.add_argument("--mpii_image_root", default="", help="MPII images folder (default <root>/mpii/images)")
    p.add_argument("--records_per_shard", type=int, default=1000)
    p.add_argument("--max_box_scale", type=float, default=record_checks.MAX_BOX_SCALE,
                   help="refuse a record whose box side is more than this many times its image side")
    p.add_argument("--max_reprojection_px", type=float, default=record_checks.MAX_REPROJECTION_PX,
                   help="refuse a Human3.6M record whose joints_3d u,v lie more than this many px from the projection "
                        "of joints_3d_cam with its fl/c_p (real caches: a few px of lens distortion)")
    p.add_argument("--on_error", default="raise", choices=["raise", "skip"],
                   help="stop at the first bad record, or skip bad records (counted and listed in "
                        "dataset_info.json; after fixing their images re-run with --force)")
    p.add_argument("--force", action="store_true",
                   help="discard existing shards and convert afresh (the up-to-date check does not look at "
                        "image files)")
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes validating and reading images (0 = in this process)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--layout", default=d.record_layout, choices=RECORD_LAYOUTS,
                   help="full: the image files as they are; crop: patch-sized JPEG crops (module docstring)")
    p.add_argument("--crop_patch_size", type=int, default=d.patch_size, help="crop layout: training patch size, px")
    p.add_argument("--crop_scale_factor", type=float, default=d.scale_factor,
                   help="crop layout: largest data.scale_factor the crops cover")
    p.add_argument("--crop_rotation_factor", type=float, default=d.rotation_factor,
                   help="crop layout: data.rotation_factor the crops are cut for (0 = no rotation)")
    p.add_argument("--crop_rotation_prob", type=float, default=d.rotation_prob, help="crop layout: data.rotation_prob")
    p.add_argument("--crop_quality", type=int, default=95, help="crop layout: JPEG quality of the crops, 1-100")
    p.add_argument("--crop_no_resample", action="store_true",
                   help="crop layout: keep the image's resolution (larger crops; patches as from the image)")
    args = p.parse_args(argv)
    if args.cache and len(args.sets) != 1:
        p.error("--cache needs exactly one --sets entry")
    if args.mpii_cache and len(args.mpii) != 1:
        p.error("--mpii_cache needs exactly one --mpii entry")
    for name in ("max_box_scale", "max_reprojection_px"):
        if not getattr(args, name) > 0:
            p.error(f"--{name} must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common = dict(records_per_shard=args.records_per_shard, on_error=args.on_error, num_workers=args.num_workers,
                  progress=not args.no_progress, force=args.force, max_box_scale=args.max_box_scale,
                  max_reprojection_px=args.max_reprojection_px)
    if args.layout == "crop":
        common["crop"] = convert.crop_layout(args.crop_patch_size, args.crop_scale_factor, args.crop_rotation_factor,
                                             args.crop_rotation_prob, not args.crop_no_resample, args.crop_quality)
    try:
        for image_set in args.sets:
            convert.convert_h36m(args.root, image_set, args.out_dir or None, cache=args.cache or None,
                                 image_root=args.image_root or None, source=args.source, sample=args.sample, **common)
        for image_set in args.mpii:
            convert.convert_mpii(args.root, image_set, args.out_dir or None, cache=args.mpii_cache or None,
                                 image_root=args.mpii_image_root or None, **common)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
