"""Writes a small synthetic Human3.6M in the original's exact layout (docs/DESIGN.md#h36m-on-disk) and, by default,
converts it to shards:

    python data_prep/make_synthetic_h36m.py --root data/synthetic

gives ``data/synthetic/hm36/{annot,images,HM36_train_cache,HM36_validmin_cache}`` (16 train
folders x 40 frames + 4 validmin folders x 16 frames of 320 x 320 px, a few seconds: the set
``main.py``'s default config trains on, so neither replaces the other's) and
``data/synthetic/records/hm36_{train,validmin}``. Deterministic by --seed; idempotent. Other
parameters (or --force) regenerate the set: the generator's earlier outputs are removed first
(only in a folder it wrote, marked by hm36/synthetic.json; a foreign hm36/ is refused, exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kinpose_jax.data import DataError, convert  # noqa: E402
from kinpose_jax.synthetic import h36m as synthetic  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", default="data/synthetic", help="data root; hm36/ is written inside")
    d = synthetic.DEFAULTS  # the set configs/synthetic.py (main.py's default) trains on
    p.add_argument("--train_folders", type=int, default=d["train_folders"],
                   help="sequence folders of the train set (subjects 1-8)")
    p.add_argument("--frames_per_folder", type=int, default=d["frames_per_folder"])
    p.add_argument("--valid_folders", type=int, default=d["valid_folders"],
                   help="folders of the validmin set (subjects 9, 11)")
    p.add_argument("--valid_frames_per_folder", type=int, default=d["valid_frames_per_folder"])
    p.add_argument("--image_size", type=int, default=d["image_size"], help="image width = height, px")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--force", action="store_true", help="regenerate even if an identical set exists (earlier outputs are removed)")
    p.add_argument("--no_convert", action="store_true", help="only write the original's layout, no shards")
    args = p.parse_args(argv)
    try:
        synthetic.generate(args.root, train_folders=args.train_folders, frames_per_folder=args.frames_per_folder,
                           valid_folders=args.valid_folders, valid_frames_per_folder=args.valid_frames_per_folder,
                           image_size=args.image_size, seed=args.seed, force=args.force)
        if not args.no_convert:
            for image_set in ("train", "validmin"):
                convert.convert_h36m(args.root, image_set)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
