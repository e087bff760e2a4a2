"""TFDS builder for Human3.6M in the original's layout (``tfds build``, ArrayRecord format).

Optional: for users who prefer TensorFlow Datasets. The training path never needs it (it reads
the shards of ``data_prep/convert_h36m.py``); TensorFlow itself is not required to build or to
read (``tfds.data_source``). Install with ``pip install -e '.[tfds]'``.

    python data_prep/tfds_h36m.py --root data/synthetic --data_dir /tmp/tfds [--image_root DIR]
    # or: tfds build data_prep/tfds_h36m.py --file_format=array_record \
    #        --manual_dir=data/synthetic --data_dir=/tmp/tfds

``--image_root`` (as in ``convert_h36m.py``): the folder holding ``<folder>/<file>.jpg``; cache
image paths are re-rooted onto it on their last two components (default ``<root>/hm36/images``;
``tfds build`` always uses the default).

Features per frame: ``image`` (the JPEG bytes as stored), ``image_path``, and the validated
labels of :mod:`kinpose_jax.data.record_checks` (float64): center, box_size, joints_img,
joints_vis, joints_cam, pelvis, fl, c_p, bone_len. Splits: ``train`` and ``validmin`` (the original's
caches, or annotations when no cache exists). Records are validated as in the converter; a bad
record raises :class:`kinpose_jax.data.DataError`.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kinpose_jax.data import DataError, h36m_cache, h36m_layout, matlab_meta  # noqa: E402
from kinpose_jax.data.convert import DEFAULT_LIMITS, prepare_record  # noqa: E402

LABELS = {"center": (2,), "box_size": (2,), "joints_img": (18, 3), "joints_vis": (18, 3), "joints_cam": (18, 3),
          "pelvis": (3,), "fl": (2,), "c_p": (2,), "bone_len": ()}


class H36mSeed(tfds.core.GeneratorBasedBuilder):
    """Human3.6M frames with the original's labels (docs/DESIGN.md#cache-format)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The original's caches / annotations, JPEG bytes as stored."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the data root holding hm36/ (docs/DESIGN.md#h36m-on-disk) as --manual_dir."

    def __init__(self, *, image_root: str | None = None, **kwargs):
        """``image_root``: folder holding ``<folder>/<file>.jpg`` (default ``<manual_dir>/hm36/images``);
        other arguments go to ``tfds.core.GeneratorBasedBuilder``."""
        self._image_root = image_root
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # float64 kept exactly (tf.train.Example float lists would round to float32)
        feats = {k: tfds.features.Tensor(shape=s, dtype=np.float64, encoding=tfds.features.Encoding.BYTES)
                 for k, s in LABELS.items()}
        feats["image"] = tfds.features.Tensor(shape=(), dtype=np.object_)
        feats["image_path"] = tfds.features.Text()
        feats["image_size"] = tfds.features.Tensor(shape=(2,), dtype=np.int64)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(feats),
                                     description=__doc__, homepage="http://vision.imar.ro/human3.6m/")

    def _split_generators(self, dl_manager):
        root = str(dl_manager.manual_dir)
        return {s: self._generate_examples(root, s) for s in ("train", "validmin")}

    def _generate_examples(self, root, image_set):
        hm36 = os.path.join(root, "hm36")
        cache = h36m_layout.find_cache(hm36, image_set)
        if cache is not None:
            raw, source = h36m_cache.load_cache(cache), f"cache {cache}"
        else:
            raw = matlab_meta.records_from_annotations(hm36, h36m_layout.subjects_of_set(image_set),
                                                       h36m_layout.SET_SAMPLES.get(image_set, -1))
            source = f"annotations of {image_set}"
        image_root = os.path.abspath(self._image_root or os.path.join(hm36, "images"))
        if not os.path.isdir(image_root):
            raise DataError(f"image folder {image_root} does not exist (pass --image_root)")
        for i, rec in enumerate(raw):
            status, _, value = prepare_record(("h36m", rec, i, source, image_root, 2, DEFAULT_LIMITS, None))
            if status == "error":
                raise DataError(value)
            example = {k: np.asarray(value[k], np.float64) for k in LABELS}
            example.update(image=value["image"], image_path=value["image_path"], image_size=value["image_size"])
            yield i, example


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="data root holding hm36/")
    p.add_argument("--data_dir", required=True, help="TFDS data directory to write to")
    p.add_argument("--image_root", default="",
                   help="folder holding <folder>/<file>.jpg; cache image paths are re-rooted onto it "
                        "(default <root>/hm36/images), as in convert_h36m.py")
    args = p.parse_args(argv)
    builder = H36mSeed(data_dir=args.data_dir, file_format="array_record", image_root=args.image_root or None)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=args.root))
    print(builder.info)


if __name__ == "__main__":
    main()
