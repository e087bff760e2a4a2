"""Convert PyTorch weights (the original's checkpoints or a torchvision ResNet) to Flax variables.

    python -m kinpose_jax.convert_torch IN.pth[.tar] OUT_DIR [--head integral|direct|kinematic] ...

Inputs understood:

(a) a checkpoint of the original: a dict whose ``'network'`` entry is the ``state_dict`` (keys possibly
    prefixed ``module.`` by DataParallel), with ``backbone.*`` and ``head.*`` keys; a bare
    ``state_dict`` of the same network works too. The original's integral head (``DeconvHead``) keeps
    its final 1x1 conv in the same ``features`` list as the L deconv layers (3 entries each:
    ConvTranspose, BN, ReLU), so it is ``head.features.{3L}``; it is read as ``head.final_layer``
    (:func:`canonical_seed_keys`), which is also accepted as is. The original's kinematic layer's
    buffers (``head.kin_layer.{M,v,reorder_idx,shape}``) are constants, listed as ignored;
(b) a plain torchvision ResNet ImageNet ``state_dict`` (``conv1.weight``, ``layer1.0...``,
    ``fc.*``): only the backbone is converted and saved (``fc.*`` is listed as ignored); loading
    it (:func:`kinpose_jax.pretrained.load_pretrained`) fills the backbone of a model with any
    head, whose head keeps its fresh initialization.

Layout changes: conv ``OIHW -> HWIO``; ConvTranspose2d ``[in, out, kh, kw] -> [kh, kw, out, in]``
(Flax ``ConvTranspose(transpose_kernel=True)``, which is exactly torch's transposed conv, i.e. the
gradient of the conv with that kernel); Linear ``[out, in] -> [in, out]``; BatchNorm
``weight/bias/running_mean/running_var -> scale/bias/mean/var`` (``num_batches_tracked`` ignored).

The original's kinematic layer emits 29*18+1 outputs of which it uses 30 (docs/DESIGN.md#original-bugs, bug (d)). We assume
rows 0..28 are the 29 motion parameters (the original's order) and the **last** row is the scale, and map
them onto our head's ``[translation(3), angles(tree.param_names), scale]`` layout: translation rows
are taken to camera axes (tree output axes, then the head's view rotation), angle rows are picked
by name (``Head_RotX`` is unused and dropped), and the scale row ``s_seed`` becomes our raw scale
``box_mm * s_seed - 1`` (our head multiplies bones by ``(1 + s) / box_mm``). This reproduces the
the original's intended outputs exactly with ``kinematic_view='identity'``; with ``'upright'`` the
outputs are those rotated by the fixed view.

The result is written as an orbax checkpoint of ``{'params': ..., 'batch_stats': ...}`` in OUT_DIR
(restore with :func:`load_converted` or ``orbax.checkpoint.StandardCheckpointer().restore``) plus
``OUT_DIR/kinpose_conversion.json``: the model config, the source kind (``'seed'`` or
``'torchvision'``), the config fields the checkpoint fixes (``determined``; a model loading it
must agree on them, see :mod:`kinpose_jax.pretrained`) and the key report.

torch is imported only inside :func:`load_torch_state_dict`; everything else is numpy + JAX.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np

from kinpose_jax.registry import HEADS, KINEMATIC_VIEWS
from kinpose_jax.weights_format import (  # noqa: F401 - the format, re-exported for callers of this module
    REPORT_FILE, ConversionReport, determined_fields, load_converted, read_conversion_metadata, save_converted,
)
SEED_NUM_MOTION = 29
SEED_LAYOUT_OUTPUTS = (SEED_NUM_MOTION * 18 + 1, SEED_NUM_MOTION + 1)


# ----------------------------------------------------------------------------- loading
def load_torch_state_dict(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads a ``.pth``/``.pth.tar`` file and returns its (network) state_dict as numpy arrays.

    Uses ``torch.load(weights_only=True)`` unless ``allow_pickle`` (only for trusted files whose
    checkpoint dict holds other Python objects, e.g. a pickled config).
    """
    import pickle

    import torch  # lazy: kinpose_jax must import without torch

    if not os.path.isfile(path):
        raise FileNotFoundError(2, "no such PyTorch checkpoint file", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # noqa: BLE001 - re-raised with advice
        # weights_only refuses a pickled Python object as an "Unsupported global"
        refused = isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err)
        if allow_pickle or not refused:  # a damaged or foreign file, not a weights_only refusal
            raise ValueError(f"{path} is not a readable PyTorch checkpoint: {type(err).__name__}: "
                             f"{' '.join(str(err).split())[:300]}") from err
        raise RuntimeError(
            f"torch.load({path!r}, weights_only=True) failed ({err}). If the file is trusted and holds "
            "arbitrary pickled objects, pass --allow-pickle."
        ) from err
    return extract_state_dict(obj)


def extract_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """A checkpoint dict of the original (``'network'`` or ``'state_dict'`` entry) or a bare state_dict ->
    ``{key: numpy array}`` with any ``module.`` prefix removed."""
    if isinstance(obj, Mapping):
        for entry in ("network", "state_dict", "model"):
            if entry in obj and isinstance(obj[entry], Mapping):
                obj = obj[entry]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError("expected a state_dict or a checkpoint dict with a 'network' entry")
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "shape"):
            raise ValueError(f"state_dict entry {key!r} is not a tensor ({type(value).__name__})")
        if hasattr(value, "detach"):
            value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
        out[strip_module_prefix(key)] = np.asarray(value)
    return out


def strip_module_prefix(key: str) -> str:
    """``module.backbone.conv1.weight`` -> ``backbone.conv1.weight`` (DataParallel prefixes)."""
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def detect_source(state_dict: Mapping[str, Any]) -> str:
    """'seed' if keys carry ``backbone.``/``head.`` prefixes, 'torchvision' for a bare ResNet."""
    if any(k.startswith(("backbone.", "head.")) for k in state_dict):
        return "seed"
    if "conv1.weight" in state_dict:
        return "torchvision"
    raise ValueError(f"unrecognised state_dict: keys start with {sorted({k.split('.')[0] for k in state_dict})}")


#: Buffers of the original's kinematic layer (identity matrix, homogeneous origin, axis order, bone
#: lengths): constants of its forward kinematics, not parameters.
SEED_KINEMATIC_BUFFERS = tuple(f"head.kin_layer.{name}" for name in ("M", "v", "reorder_idx", "shape"))


def canonical_seed_keys(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Renames the original's ``DeconvHead``'s final conv ``head.features.{3L}.{weight,bias}`` (L deconv
    layers before it) to ``head.final_layer.*``. Returns (state_dict, {new key: original key}).

    It is recognised as the last 4-D ``head.features.{k}.weight`` with ``k = 3L`` that has a bias
    (the deconvolutions have none) and no BatchNorm after it; a state_dict that already has
    ``head.final_layer.*`` is returned unchanged."""
    sd = dict(state_dict)
    if "head.final_layer.weight" in sd:
        return sd, {}
    convs = [int(m.group(1)) for k, v in sd.items()
             if (m := re.match(r"head\.features\.(\d+)\.weight$", k)) and np.ndim(v) == 4]
    if not convs:
        return sd, {}
    k = max(convs)
    if k % 3 or f"head.features.{k}.bias" not in sd or f"head.features.{k + 1}.weight" in sd:
        return sd, {}
    renamed = {}
    for leaf in ("weight", "bias"):
        old, new = f"head.features.{k}.{leaf}", f"head.final_layer.{leaf}"
        sd[new] = sd.pop(old)
        renamed[new] = old
    return sd, renamed


# ----------------------------------------------------------------------------- inference of the config
def infer_model_config(state_dict: Mapping[str, np.ndarray], overrides: Mapping[str, Any] | None = None) -> dict:
    """Model config fields (see :func:`kinpose_jax.models.build_pose_net`) read off the tensors:
    backbone depth, head type, deconv filters/layers/kernel, depth_bins (= final_layer channels /
    num_joints). ``overrides`` win (e.g. num_joints, depth_bins, kinematic_tree, kinematic_view);
    num_joints is the default config's unless overridden."""
    from configs.default import get_config
    from kinpose_jax.models.resnet import RESNET_SPECS

    overrides = dict(overrides or {})
    j = int(overrides.get("num_joints", get_config().model.num_joints))
    sd = {("backbone." + k if not k.startswith(("backbone.", "head.")) else k): v
          for k, v in canonical_seed_keys({strip_module_prefix(k): v for k, v in state_dict.items()})[0].items()}
    blocks = [len({m.group(1) for k in sd if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.", k))}) for i in range(1, 5)]
    bottleneck = any(".conv3." in k for k in sd)
    cfg: dict[str, Any] = {}
    for depth, (kind, layers) in RESNET_SPECS.items():
        if tuple(blocks) == layers and (kind == "bottleneck") == bottleneck:
            cfg["backbone"] = f"resnet{depth}"
    if "backbone" not in cfg and "backbone" not in overrides:
        raise ValueError(f"cannot infer the ResNet depth from blocks per stage {blocks} (bottleneck={bottleneck})")
    if "head.final_layer.weight" in sd:
        cfg["head"] = "integral"
        deconvs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"head\.features\.(\d+)\.weight$", k))
                         and sd[k].ndim == 4)
        n_out = sd["head.final_layer.weight"].shape[0]
        if n_out % j == 0:
            cfg["depth_bins"] = n_out // j
        cfg["num_deconv_layers"] = len(deconvs)
        if deconvs:
            cfg["deconv_filters"] = int(sd[f"head.features.{deconvs[0]}.weight"].shape[1])
            cfg["deconv_kernel"] = int(sd[f"head.features.{deconvs[0]}.weight"].shape[-1])
    elif "head.fc.weight" in sd:
        n_out = sd["head.fc.weight"].shape[0]
        cfg["head"] = "direct" if n_out == 3 * j else "kinematic"
    cfg.update(overrides)
    return cfg


# ----------------------------------------------------------------------------- key mapping
def torch_module_to_flax(module_path: str) -> tuple[str, ...]:
    """``backbone.layer1.0.downsample.1`` -> ('backbone', 'layer1_0', 'downsample_1'): numeric
    components (nn.Sequential indices) are joined to the name before them."""
    out: list[str] = []
    for part in module_path.split("."):
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(out)


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return out


def _layout(key: str, ndim: int) -> tuple[tuple[str, ...], tuple[int, ...] | None] | None:
    """torch key + tensor rank -> (Flax path incl. collection, axis permutation or None); None if unknown."""
    module, _, leaf = key.rpartition(".")
    path = torch_module_to_flax(module)
    if leaf == "running_mean":
        return ("batch_stats",) + path + ("mean",), None
    if leaf == "running_var":
        return ("batch_stats",) + path + ("var",), None
    if leaf == "bias":
        return ("params",) + path + ("bias",), None
    if leaf == "weight":
        if ndim == 1:
            return ("params",) + path + ("scale",), None
        if ndim == 2:
            return ("params",) + path + ("kernel",), (1, 0)
        if ndim == 4:  # conv OIHW and deconv [in, out, kh, kw] both go to [kh, kw, dim1, dim0]
            return ("params",) + path + ("kernel",), (2, 3, 1, 0)
    return None


def flax_destination(key: str, shape: tuple[int, ...]) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """Where a torch tensor goes, from its key and shape only (no data): (Flax path incl. the
    collection, shape in Flax layout), or None for a key with no Flax counterpart. ``key`` must
    already carry the model prefix (``backbone.`` / ``head.``), as after :func:`convert_state_dict`'s
    renaming of a torchvision dict."""
    found = _layout(key, len(shape))
    if found is None:
        return None
    path, perm = found
    return path, tuple(shape) if perm is None else tuple(shape[i] for i in perm)


def _dest(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
    """torch key + tensor -> (Flax path incl. collection, array in Flax layout); None if unknown."""
    found = _layout(key, value.ndim)
    if found is None:
        return None
    path, perm = found
    return path, value if perm is None else value.transpose(perm)


def _torch_layout(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Inverse of the layout change in :func:`_dest`, for error messages."""
    if len(flax_shape) == 4:
        return tuple(flax_shape[i] for i in (3, 2, 0, 1))
    return tuple(reversed(flax_shape))


def _fmt(path: tuple[str, ...]) -> str:
    return "/".join(path)


def _seed_kinematic_fc(sd: dict, model, report: ConversionReport) -> None:
    """Replaces the original's wide kinematic ``head.fc`` by the rows our head uses (see module doc)."""
    from kinpose_jax.kinematics.presets import seed_motion_permutation
    from kinpose_jax.models.heads import kinematic_num_outputs, view_matrix

    w, b = sd["head.fc.weight"], sd["head.fc.bias"]
    tree = model.tree
    if w.shape[0] == kinematic_num_outputs(tree) or w.shape[0] not in SEED_LAYOUT_OUTPUTS:
        return
    try:
        perm = seed_motion_permutation(tree)
    except ValueError as err:
        raise ValueError(f"head.fc has the original's {w.shape[0]} outputs but the kinematic tree's angles are not "
                         f"seed motion parameters: {err}") from None
    axes = np.eye(3)[list(tree.output_axes)]  # tree output coords from model coords
    rot = view_matrix(tree, model.kinematic_view) @ axes
    scale_w, scale_b = model.box_mm * w[-1:], model.box_mm * b[-1:] - 1.0
    sd["head.fc.weight"] = np.concatenate([rot @ w[:3], w[perm], scale_w]).astype(np.float32)
    sd["head.fc.bias"] = np.concatenate([rot @ b[:3], b[perm], scale_b]).astype(np.float32)
    unused = sorted(set(range(3, SEED_NUM_MOTION)) - set(int(p) for p in perm))
    report.notes.append(
        f"head.fc: original layout with {w.shape[0]} outputs; used rows 0..{SEED_NUM_MOTION - 1} as motion parameters "
        f"(unused: {[_seed_name(i) for i in unused]}) and row {w.shape[0] - 1} as the scale; "
        f"{w.shape[0] - SEED_NUM_MOTION - 1} rows dropped"
    )
    if model.kinematic_view != "identity":
        report.notes.append("kinematic_view is not 'identity': the imported head predicts the original's joints "
                            "rotated by the fixed view; use kinematic_view='identity' to reproduce the original")


def _seed_name(i: int) -> str:
    from kinpose_jax.kinematics.presets import SEED_MOTION_NAMES

    return SEED_MOTION_NAMES[i]


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    model,
    init_variables: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    strict: bool = False,
) -> tuple[dict, ConversionReport]:
    """Copies torch tensors into a copy of ``init_variables`` (``{'params', 'batch_stats'}`` of ``model``).

    Args:
      state_dict: torch keys (``module.`` prefixes allowed) -> arrays, original or torchvision layout.
      model: the :class:`~kinpose_jax.models.PoseNet` the variables belong to.
      init_variables: its initial variables, or a function returning them (e.g. a
        ``functools.partial`` of :func:`kinpose_jax.models.init_variables`); leaves with no torch
        counterpart keep these values. A function is traced for the shapes
        (``jax.eval_shape``) and called only when some leaf has no torch counterpart, so a
        complete checkpoint converts without compiling or running the model's initializers.
      strict: raise if any Flax leaf is missing or any torch key is unexpected.
    Returns:
      (variables dict with numpy float32 leaves, report). For a torchvision source only the
      backbone is returned (``{'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}``):
      an ImageNet classifier says nothing about any pose head.
    Raises:
      ValueError naming the torch key, the Flax path and both shapes on a shape mismatch.
    """
    sd = {strip_module_prefix(k): np.asarray(v) for k, v in state_dict.items()}
    source = detect_source(sd)
    report = ConversionReport(source=source)
    sd, original = canonical_seed_keys(sd) if source == "seed" else (sd, {})
    if original:
        report.notes.append("the original's DeconvHead's final conv " + " and ".join(
            f"{original[k]} -> {k}" for k in sorted(original)))
    if source == "torchvision":
        renamed = {}
        for k, v in sd.items():
            if k.startswith("fc."):
                report.ignored.append(k)
            else:
                renamed["backbone." + k] = v
        sd = renamed
    initial = jax.eval_shape(init_variables) if callable(init_variables) else init_variables
    target = {(c,) + p: v for c in ("params", "batch_stats") for p, v in _flatten(initial.get(c, {})).items()}
    if source == "torchvision":
        target = {p: v for p, v in target.items() if p[1] == "backbone"}
    if getattr(model, "head", None) == "kinematic" and "head.fc.weight" in sd and "head.fc.bias" in sd:
        _seed_kinematic_fc(sd, model, report)
    filled: dict[tuple[str, ...], np.ndarray] = {}
    for key in sorted(sd):
        value = sd[key]
        if key.endswith("num_batches_tracked") or key in SEED_KINEMATIC_BUFFERS:
            report.ignored.append(key)
            continue
        dest = _dest(key, value)
        if dest is None or dest[0] not in target:
            report.unexpected.append(original.get(key, key))
            continue
        path, array = dest
        want = tuple(np.shape(target[path]))
        if tuple(array.shape) != want:
            raise ValueError(
                f"shape mismatch for torch key {original.get(key, key)!r} -> Flax {_fmt(path)!r}: the checkpoint has shape "
                f"{tuple(value.shape)} but the model expects {_torch_layout(want)} (Flax layout {want}); "
                "check the model config (backbone, head, num_joints, depth_bins, deconv_filters)"
            )
        filled[path] = np.ascontiguousarray(array, dtype=np.float32)
        report.loaded.append(original.get(key, key))
    report.missing = sorted(_fmt(p) for p in target if p not in filled)
    if source == "torchvision":
        report.notes.append("torchvision ImageNet weights: only the backbone is converted; a model loading them "
                            "keeps its own (fresh) head initialization, whatever the head")
    if strict and (report.missing or report.unexpected):
        raise ValueError("strict conversion failed:\n" + report.summary())
    if callable(init_variables) and any(p not in filled for p in target):
        values = _flatten(init_variables())  # paths start with the collection, as target's do
        target = {p: values[p] for p in target}
    merged = {p: filled[p] if p in filled else np.asarray(v, dtype=np.float32) for p, v in target.items()}
    variables = _unflatten(merged)
    variables.setdefault("batch_stats", {})
    return variables, report


# ----------------------------------------------------------------------------- saving
def _model_values(model, cfg: Mapping[str, Any]) -> dict:
    """The values ``model`` was built with (from the complete model config ``cfg``), for the
    config fields it determines."""
    values = dict(backbone=f"resnet{model.backbone_depth}", head=model.head, num_joints=model.num_joints,
                  depth_bins=model.depth_bins, num_deconv_layers=model.num_deconv_layers,
                  deconv_filters=model.deconv_filters, deconv_kernel=model.deconv_kernel,
                  kinematic_view=model.kinematic_view, box_mm=model.box_mm)
    if isinstance(cfg["kinematic_tree"], str):
        values["kinematic_tree"] = cfg["kinematic_tree"]
    return values


def convert_file(in_path: str, out_dir: str, overrides: Mapping[str, Any] | None = None, strict: bool = False,
                 allow_pickle: bool = False, overwrite: bool = False, init_size: int = 64, seed: int = 0):
    """Load -> infer config -> build the model -> convert -> save. Returns (config: the inferred
    fields and ``overrides``, report); the fields neither gives are configs/default.py's. The model
    is initialized (``init_size`` px inputs, PRNG ``seed``) only for leaves the checkpoint lacks."""
    from configs.default import with_defaults
    from kinpose_jax.models import build_pose_net, init_variables

    sd = load_torch_state_dict(in_path, allow_pickle=allow_pickle)
    cfg = infer_model_config(sd, overrides)
    full = with_defaults({"model": cfg}).model
    model = build_pose_net(full)
    init = functools.partial(init_variables, model, jax.random.key(seed), init_size)
    variables, report = convert_state_dict(sd, model, init, strict=strict)
    determined = determined_fields(full, report.source)
    values = _model_values(model, full)
    cfg = dict(cfg, **{k: values[k] for k in determined})  # record what the checkpoint was built with
    save_converted(out_dir, variables, report, cfg, overwrite=overwrite, determined=determined)
    return cfg, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kinpose_jax.convert_torch", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="checkpoint of the original (.pth.tar, 'network' entry) or torchvision ResNet state_dict (.pth)")
    p.add_argument("out_dir", help="output orbax checkpoint directory")
    p.add_argument("--head", choices=HEADS, help="default: inferred (configs/default.py's for torchvision)")
    p.add_argument("--backbone", help="e.g. resnet50 (default: inferred from the tensors)")
    p.add_argument("--num-joints", type=int, help="default: configs/default.py's (18)")
    p.add_argument("--depth-bins", type=int, help="default: final_layer channels / num_joints")
    p.add_argument("--deconv-filters", type=int)
    p.add_argument("--num-deconv-layers", type=int)
    p.add_argument("--kinematic-tree", help="default: configs/default.py's")
    p.add_argument("--kinematic-view", choices=KINEMATIC_VIEWS, help="default: configs/default.py's")
    p.add_argument("--box-mm", type=float, help="mm per normalized unit (kinematic head; default: configs/default.py's)")
    p.add_argument("--strict", action="store_true", help="fail on missing or unexpected keys")
    p.add_argument("--allow-pickle", action="store_true", help="torch.load(weights_only=False): trusted files only")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        return _convert(a)
    except (OSError, ValueError, RuntimeError) as err:
        detail = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.strerror else str(err)
        print(f"error: {' '.join(detail.split())}", file=sys.stderr)
        return 2


def _convert(a: argparse.Namespace) -> int:
    if os.path.exists(a.out_dir) and not a.overwrite:
        raise FileExistsError(17, "output directory exists (pass --overwrite to replace it)", a.out_dir)
    overrides = {}
    for key in ("head", "backbone", "num_joints", "deconv_filters", "num_deconv_layers", "depth_bins",
                "kinematic_tree", "kinematic_view", "box_mm"):
        if getattr(a, key) is not None:
            overrides[key] = getattr(a, key)
    cfg, report = convert_file(a.input, a.out_dir, overrides, strict=a.strict, allow_pickle=a.allow_pickle,
                               overwrite=a.overwrite)
    print(f"model config: {json.dumps(cfg)}")
    print(report.summary())
    print(f"wrote {os.path.abspath(a.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
