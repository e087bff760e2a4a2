"""Run a trained or converted model on images, and export it.

    python -m kinpose_jax.predict --checkpoint workdirs/synthetic --images photos/ --out predictions/
    python -m kinpose_jax.predict --checkpoint converted/ --images a.jpg b.jpg --boxes boxes.json --focal 1145
    python -m kinpose_jax.predict --checkpoint workdirs/synthetic --export exported/

Model: a ``main.py`` workdir (its ``config.json`` gives the model config and patch size; the best
checkpoint by validation loss, else the latest, or ``--step``), its ``checkpoints/`` folder or one
``checkpoints/<step>`` folder, or a :mod:`kinpose_jax.convert_torch` output (its
``kinpose_conversion.json`` gives the model config; ``--patch-size``, default 256, the input size).

Per image: the box (``--boxes``: a JSON object ``{"image name": [x, y, w, h], ...}`` in pixels,
top-left corner and size, looked up by the path as given, then by the file name; without it the
centred square of side min(width, height)) is made square (side ``max(w, h) * --box-scale``) and
warped to the patch exactly as in training (:func:`kinpose_jax.data.augment.crop_patch`). Patches
run in batches, data parallel over every local device (jit over a 1-D ``Mesh``, the last batch
padded). Written to ``--out``: ``<name>.json`` and ``<name>.png`` (image with the 2D skeleton, and
the 3D pose).

Output units and the 3D approximation. ``joints_2d_px``: image pixels. ``joints_3d_mm``:
root-relative camera coordinates (x right, y down, z away from the camera, mm): the depth relative
to the root is the model's ``z * box_mm`` (as in evaluation); x and y are back-projected through a
pinhole camera of focal length ``--focal`` px (default: the image's larger side, a ~53 degree field
of view along it; Human3.6M's cameras have about 1.15 times that) and principal point at the image
centre, with the root at the depth where the box spans ``box_mm`` (training's patches show a
``box_mm`` square around the pelvis): ``root depth = focal * box_mm / box side px``. The pose's
shape in x/y therefore does not depend on the focal length except through perspective; its scale
is that of the ``box_mm`` convention.

Export: ``--export DIR`` writes the inference function (patches [B, P, P, 3], normalized as in
training -> joints in patch pixels) as serialized StableHLO (``jax.export``, symbolic batch
dimension B) with its weights; :func:`load_exported` loads it without the model code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kinpose_jax import geometry, skeleton
from kinpose_jax.training import evaluation, parallel
from kinpose_jax.data import augment

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EXPORTED_FILE, WEIGHTS_FILE, EXPORT_META_FILE = "inference.stablehlo", "variables.msgpack", "export.json"


class PredictError(ValueError):
    """A user-facing failure (bad checkpoint folder, boxes file, image or box); names the file."""


# ------------------------------------------------------------------------------------------ model
@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: ``model.apply(variables, patches)``; patches are ``patch_size`` px."""

    model: Any
    variables: dict
    model_config: dict
    patch_size: int
    description: str

    @property
    def box_mm(self) -> float:
        return float(self.model.box_mm)

    @property
    def tree_joint_names(self) -> tuple[str, ...] | None:
        """Output joints of a kinematic tree larger than the dataset's joint set (else None)."""
        from kinpose_jax.models import dataset_joint_indices

        tree = self.model.tree
        if tree is None or dataset_joint_indices(tree, self.model.num_joints) is None:
            return None
        return tree.joint_names


def load_model(checkpoint: str, patch_size: int | None = None, step: int | None = None) -> LoadedModel:
    """Loads a ``main.py`` workdir (or its ``checkpoints/`` or ``checkpoints/<step>`` folder) or a
    converted checkpoint. ``patch_size`` overrides the input size (converted checkpoints default to
    configs/default.py's, 256, the original's; a workdir uses its ``config.data.patch_size``). Raises PredictError naming the folder."""
    path = os.path.abspath(checkpoint)
    if not os.path.isdir(path):
        raise PredictError(f"--checkpoint {checkpoint}: no such folder")
    from kinpose_jax.weights_format import REPORT_FILE

    if os.path.exists(os.path.join(path, REPORT_FILE)):
        from configs.default import get_config

        return _load_converted(path, patch_size or get_config().data.patch_size)  # the original's input size
    parent, name = os.path.split(path)
    if name.isdigit() and os.path.basename(parent) == "checkpoints":  # <workdir>/checkpoints/<step>
        if step is not None and step != int(name):
            raise PredictError(f"--checkpoint {checkpoint} is step {name} but --step={step}")
        return _load_workdir(os.path.dirname(parent), patch_size, int(name))
    if name == "checkpoints" and os.path.exists(os.path.join(parent, "config.json")):
        return _load_workdir(parent, patch_size, step)
    if os.path.exists(os.path.join(path, "config.json")):
        return _load_workdir(path, patch_size, step)
    raise PredictError(f"--checkpoint {checkpoint}: neither a main.py workdir (config.json + checkpoints/) nor a "
                       f"converted checkpoint ({REPORT_FILE})")


def _load_workdir(workdir: str, patch_size: int | None, step: int | None) -> LoadedModel:
    from kinpose_jax.training import checkpointing
    from kinpose_jax.models import build_pose_net, variable_shapes

    from configs.default import with_defaults

    with open(os.path.join(workdir, "config.json")) as f:
        config = with_defaults(json.load(f))  # a config.json older than a field: that field's default
    model = build_pose_net(config.model)
    target = checkpointing.abstract_like(variable_shapes(model, int(config.data.patch_size)),
                                         jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    manager = checkpointing.make_manager(workdir, int(config.keep_checkpoints), create=False)
    try:
        if step is None:
            step = checkpointing.best_or_latest_step(manager)
            if step is None:
                raise PredictError(f"{workdir}/checkpoints holds no checkpoint")
        elif step not in manager.all_steps():
            raise PredictError(f"{workdir}/checkpoints has no step {step} (it has {sorted(manager.all_steps())})")
    finally:
        manager.close()
    variables = checkpointing.restore_variables(workdir, step, target)
    return LoadedModel(model, variables, config.model.to_dict(), int(patch_size or config.data.patch_size),
                       f"{workdir} step {step}")


def _load_converted(path: str, patch_size: int) -> LoadedModel:
    from kinpose_jax import pretrained
    from kinpose_jax.weights_format import read_conversion_metadata
    from kinpose_jax.models import build_pose_net, variable_shapes

    from configs.default import with_defaults

    model_config = with_defaults({"model": read_conversion_metadata(path)["model"]}).model.to_dict()
    model = build_pose_net(model_config)
    variables = pretrained.load_pretrained(path, variable_shapes(model, patch_size), model_config,
                                           allow_backbone_only=False)
    return LoadedModel(model, variables, model_config, int(patch_size), f"{path} (converted)")


# ------------------------------------------------------------------------------------------ inputs
def list_images(paths: Sequence[str]) -> list[str]:
    """Files as given, and the image files (by extension, sorted) of each folder given; a path that
    does not exist is kept (and reported when read)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(os.path.join(p, f) for f in sorted(os.listdir(p)) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            out.append(p)
    return out


def read_boxes(path: str) -> dict:
    """The ``--boxes`` JSON object (image name -> [x, y, w, h] px); raises PredictError naming the file."""
    try:
        with open(path) as f:
            boxes = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise PredictError(f"--boxes {path}: cannot be read as JSON ({err})") from None
    if not isinstance(boxes, dict):
        raise PredictError(f"--boxes {path}: expected a JSON object {{\"image name\": [x, y, w, h], ...}}, got "
                           f"{type(boxes).__name__}")
    return boxes


def patch_box(image_path: str, image_shape: tuple[int, ...], boxes: dict | None, boxes_path: str = "",
              box_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(center [2], size [2]) px of the square patch box of one image (see the module docstring).
    Raises PredictError naming the image for a missing, malformed or outside box."""
    h, w = image_shape[:2]
    if boxes is None:
        side = float(min(w, h))
        return np.array([w / 2.0, h / 2.0]), np.array([side, side])
    box = boxes.get(image_path, boxes.get(os.path.basename(image_path)))
    if box is None:
        raise PredictError(f"{image_path}: no box in {boxes_path} (keys are image paths as given or file names)")
    try:
        x, y, bw, bh = (float(v) for v in box)
    except (TypeError, ValueError):
        raise PredictError(f"{image_path}: box {box!r} in {boxes_path} is not [x, y, width, height]") from None
    if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0:
        raise PredictError(f"{image_path}: box {box!r} in {boxes_path} needs finite values and width, height > 0")
    if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
        raise PredictError(f"{image_path}: box [x, y, w, h] = {box!r} from {boxes_path} lies outside the image "
                           f"({w} x {h} px)")
    side = max(bw, bh) * box_scale
    return np.array([x + bw / 2.0, y + bh / 2.0]), np.array([side, side])


@dataclasses.dataclass
class Item:
    """One image prepared for the network."""

    path: str
    image_bgr: np.ndarray  # [H, W, 3] uint8
    patch: np.ndarray  # [P, P, 3] float32 normalized
    center: np.ndarray  # [2] px
    box_size: np.ndarray  # [2] px


def prepare(path: str, patch_size: int, boxes: dict | None, boxes_path: str = "", box_scale: float = 1.0) -> Item:
    """Reads one image and crops its patch; raises PredictError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        image = augment.decode_image(data)
    except (OSError, ValueError) as err:
        raise PredictError(f"{path}: cannot read the image ({err})") from None
    center, size = patch_box(path, image.shape, boxes, boxes_path, box_scale)
    patch, _ = augment.crop_patch(image, center, size, (patch_size, patch_size))
    return Item(path, image, patch, center, size)


# ------------------------------------------------------------------------------------------ decoding
def decode(joints_px: np.ndarray, center: np.ndarray, box_size: np.ndarray, patch_size: int, box_mm: float,
           focal: np.ndarray, principal_point: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch-pixel predictions -> image pixels and camera mm, as evaluation decodes them but with
    an assumed root depth and camera.

    Args:
      joints_px: [B, J, 3] patch px (depth in patch-width units), as the network outputs them.
      center, box_size: [B, 2] px, the patch boxes. focal: [B] or [B, 2] (fx, fy) px.
      principal_point: [B, 2] px.
    Returns:
      joints_2d [B, J, 2] image px; joints_cam [B, J, 3] camera mm with depth = root depth + the
      predicted depth relative to the root (subtract the root joint for the root-relative pose);
      root_depth [B] mm = ``fx * box_mm / box width`` (the depth at which the box spans ``box_mm``).
    """
    img = geometry.patch_to_image(joints_px, center, box_size, (patch_size, patch_size), box_mm)
    focal = np.asarray(focal, np.float64)
    focal = np.stack([focal, focal], -1) if focal.ndim == 1 else focal
    root_depth = focal[:, 0] * box_mm / np.asarray(box_size, np.float64)[:, 0]
    cam = geometry.image_to_camera(img, root_depth, focal, np.asarray(principal_point, np.float64))
    return img[..., :2], cam, root_depth


# ------------------------------------------------------------------------------------------ running
def make_runner(loaded: LoadedModel, per_device_batch: int, flip_test: bool = False):
    """``run(patches [n, P, P, 3]) -> dict of [n, J, 3] patch px`` for ``n <= global batch``: one
    jit over every device (the batch sharded over the mesh, weights replicated), the rows beyond
    ``n`` padded with zeros. Returns (run, global batch)."""
    mesh = parallel.make_mesh()
    global_batch = per_device_batch * mesh.size
    fn = jax.jit(evaluation.make_joints_fn(loaded.model, loaded.patch_size, flip_test),
                 in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
                 out_shardings=parallel.data_sharding(mesh))
    variables = jax.device_put(loaded.variables, parallel.replicated(mesh))

    def run(patches: np.ndarray) -> dict:
        n = len(patches)
        batch = np.zeros((global_batch,) + patches.shape[1:], np.float32)
        batch[:n] = patches
        out = jax.device_get(fn(variables, batch))
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    return run, global_batch


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _output_name(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, k = stem, 1
    while name in used:
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    return name


def predict_images(loaded: LoadedModel, image_paths: Sequence[str], out_dir: str, boxes_path: str = "",
                   focal: float | None = None, per_device_batch: int = 8, box_scale: float = 1.0,
                   flip_test: bool = False, plots: bool = True, log=print) -> tuple[list[str], list[str]]:
    """Runs the model on every image; writes ``<name>.json`` (and ``<name>.png``) to ``out_dir``.
    An image that cannot be read or lacks a valid box is reported (``error: ...`` via ``log``) and
    skipped. Returns (written JSON paths, error messages)."""
    boxes = read_boxes(boxes_path) if boxes_path else None
    os.makedirs(out_dir, exist_ok=True)
    run, global_batch = make_runner(loaded, per_device_batch, flip_test)
    errors, written, used = [], [], set()

    def items():
        for path in image_paths:
            try:
                yield prepare(path, loaded.patch_size, boxes, boxes_path, box_scale)
            except PredictError as err:
                errors.append(str(err))
                log(f"error: {err}")

    joint_names, tree_names = list(skeleton.H36M_JOINT_NAMES[:loaded.model.num_joints]), loaded.tree_joint_names
    for batch in _batches(items(), global_batch):
        out = run(np.stack([it.patch for it in batch]))
        center, size = np.stack([it.center for it in batch]), np.stack([it.box_size for it in batch])
        shapes = [it.image_bgr.shape for it in batch]
        f = np.asarray([focal or float(max(s[0], s[1])) for s in shapes])
        pp = np.asarray([[s[1] / 2.0, s[0] / 2.0] for s in shapes])
        decoded = {k: decode(v, center, size, loaded.patch_size, loaded.box_mm, f, pp) for k, v in out.items()}
        root = decoded["joints"][1][:, skeleton.H36M_ROOT:skeleton.H36M_ROOT + 1]  # [n, 1, 3] camera mm
        for i, it in enumerate(batch):
            uv, cam, depth = (x[i] for x in decoded["joints"])
            result = {
                "image": it.path, "model": loaded.description,
                "box": {"center_px": it.center.tolist(), "size_px": it.box_size.tolist(),
                        "source": boxes_path or "whole image (centred square)"},
                "camera": {"focal_px": float(f[i]), "focal_assumed": focal is None,
                           "principal_point_px": pp[i].tolist(), "assumed_root_depth_mm": float(depth)},
                "joint_names": joint_names,
                "joints_2d_px": uv.round(3).tolist(),
                "joints_3d_mm": (cam - root[i]).round(3).tolist(),
            }
            if tree_names is not None:  # relative to the same (dataset) root joint
                t_uv, t_cam, _ = (x[i] for x in decoded["tree_joints"])
                result.update(tree_joint_names=list(tree_names), tree_joints_2d_px=t_uv.round(3).tolist(),
                              tree_joints_3d_mm=(t_cam - root[i]).round(3).tolist())
            name = _output_name(it.path, used)
            json_path = os.path.join(out_dir, name + ".json")
            with open(json_path, "w") as fh:  # one field per line
                fh.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in result.items()) + "\n}\n")
            if plots:
                from kinpose_jax.training import reporting

                rgb = it.image_bgr[..., ::-1]
                reporting.plot_prediction(rgb, uv, cam - root[i], os.path.join(out_dir, name + ".png"),
                                          title=os.path.basename(it.path))
            written.append(json_path)
    return written, errors


# ------------------------------------------------------------------------------------------ export
def export_model(loaded: LoadedModel, out_dir: str, flip_test: bool = False,
                 platforms: Sequence[str] | None = None) -> str:
    """Writes the inference function with ``jax.export`` (batch dimension symbolic) to ``out_dir``:
    ``inference.stablehlo`` (serialized), ``variables.msgpack`` (the weights, its first argument)
    and ``export.json`` (patch size, box_mm, joint names). ``platforms``: lowering targets (default:
    this backend). Load with :func:`load_exported`. Returns ``out_dir``."""
    import flax.serialization

    fn = evaluation.make_joints_fn(loaded.model, loaded.patch_size, flip_test)
    (b,) = jax.export.symbolic_shape("b")
    p = loaded.patch_size
    specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), loaded.variables)
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(specs, jax.ShapeDtypeStruct((b, p, p, 3), jnp.float32))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, EXPORTED_FILE), "wb") as f:
        f.write(exported.serialize())
    with open(os.path.join(out_dir, WEIGHTS_FILE), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, jax.device_get(loaded.variables))))
    meta = {"patch_size": p, "box_mm": loaded.box_mm, "flip_test": bool(flip_test),
            "joint_names": list(skeleton.H36M_JOINT_NAMES[:loaded.model.num_joints]),
            "tree_joint_names": list(loaded.tree_joint_names) if loaded.tree_joint_names else None,
            "platforms": list(exported.platforms), "model": loaded.description, "model_config": loaded.model_config,
            "inputs": "patches [B, P, P, 3] float32, normalized RGB (kinpose_jax.data.augment.crop_patch)",
            "outputs": "joints [B, J, 3] (and tree_joints) in patch pixels; depth in patch-width units"}
    with open(os.path.join(out_dir, EXPORT_META_FILE), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    return out_dir


@dataclasses.dataclass
class ExportedModel:
    """``model(patches [B, P, P, 3]) -> {'joints': [B, J, 3], ...}`` patch pixels, any B."""

    exported: Any
    variables: Any
    meta: dict

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    def __call__(self, patches) -> dict:
        return {k: np.asarray(v) for k, v in self.exported.call(self.variables, jnp.asarray(patches, jnp.float32)).items()}


def load_exported(path: str) -> ExportedModel:
    """Loads what :func:`export_model` (``--export``) wrote; needs no model code or config."""
    import flax.serialization

    try:
        with open(os.path.join(path, EXPORTED_FILE), "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        with open(os.path.join(path, WEIGHTS_FILE), "rb") as f:
            variables = flax.serialization.msgpack_restore(f.read())
        with open(os.path.join(path, EXPORT_META_FILE)) as f:
            meta = json.load(f)
    except OSError as err:
        raise PredictError(f"{path}: not an export written by kinpose_jax.predict --export ({err})") from None
    return ExportedModel(exported, variables, meta)


# ------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kinpose_jax.predict",
        description="Run a trained (main.py workdir) or converted (kinpose_jax.convert_torch) model on images: one "
                    "JSON (2D joints in image pixels, root-relative 3D joints in mm) and one PNG per image; "
                    "and/or export the inference function (jax.export).",
        epilog="Example: python -m kinpose_jax.predict --checkpoint workdirs/synthetic "
               "--images data/synthetic/hm36/images/s_09_act_02_subact_01_ca_01 --out predictions")
    p.add_argument("--checkpoint", required=True,
                   help="a main.py workdir (config.json + checkpoints/; the best checkpoint by validation loss, else "
                        "the latest), its checkpoints/ or checkpoints/<step> folder, or a convert_torch output folder")
    p.add_argument("--images", nargs="+", default=[],
                   help="image files and/or folders (their .jpg/.png/... files, sorted)")
    p.add_argument("--boxes", default="",
                   help='JSON object {"image name": [x, y, w, h], ...}: person box in pixels (top-left corner, '
                        "width, height), keyed by the path as given or the file name. Default: the centred square "
                        "of side min(width, height) of each image")
    p.add_argument("--box-scale", type=float, default=1.0,
                   help="enlarge each --boxes box (made square, side max(w, h)) by this factor; training patches "
                        "show a box_mm (2000 mm) square around the pelvis, so tight person boxes want about 1.2")
    p.add_argument("--focal", type=float, default=None,
                   help="focal length in pixels for the 3D back-projection (default: each image's larger side, "
                        "a ~53 degree field of view); principal point: the image centre")
    p.add_argument("--out", default="predictions", help="output folder for <name>.json and <name>.png")
    p.add_argument("--batch-size", type=int, default=8, help="images per device per batch (x local devices)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="network input size in px (default: the workdir's config.data.patch_size; 256 for a "
                        "converted checkpoint)")
    p.add_argument("--step", type=int, default=None, help="workdir checkpoint step (default: best, else latest)")
    p.add_argument("--flip-test", action="store_true", help="average with the prediction on the mirrored patch")
    p.add_argument("--no-plots", action="store_true", help="write the JSON files only")
    p.add_argument("--export", default="",
                   help="write the inference function here (jax.export StableHLO with a symbolic batch dimension, "
                        "weights, export.json); load it with kinpose_jax.predict.load_exported(DIR)")
    p.add_argument("--export-platforms", default="",
                   help="comma-separated lowering platforms for --export, e.g. cpu,cuda (default: this backend)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 all done; 1 some images failed (the others were written); 2 nothing could run."""
    args = build_parser().parse_args(argv)
    if not args.images and not args.export:
        print("error: nothing to do: give --images and/or --export", file=sys.stderr)
        return 2
    if args.batch_size < 1 or args.box_scale <= 0:
        print("error: --batch-size must be >= 1 and --box-scale > 0", file=sys.stderr)
        return 2
    try:
        loaded = load_model(args.checkpoint, args.patch_size, args.step)
        print(f"model: {loaded.description}, {loaded.patch_size} px patches, {jax.device_count()} device(s)")
        if args.export:
            platforms = [s for s in args.export_platforms.split(",") if s] or None
            export_model(loaded, args.export, args.flip_test, platforms)
            print(f"exported to {os.path.abspath(args.export)}")
        errors = []
        if args.images:
            paths = list_images(args.images)
            if not paths:
                print(f"error: no images in {args.images}", file=sys.stderr)
                return 2
            written, errors = predict_images(
                loaded, paths, args.out, args.boxes, args.focal, args.batch_size, args.box_scale, args.flip_test,
                plots=not args.no_plots, log=lambda m: print(m, file=sys.stderr))
            print(f"wrote {len(written)} of {len(paths)} predictions to {os.path.abspath(args.out)}")
    except (PredictError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if errors:
        print(f"{len(errors)} image(s) failed (see the errors above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
