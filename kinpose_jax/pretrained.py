"""Starting weights from a checkpoint converted by :mod:`kinpose_jax.convert_torch`.

``load_pretrained(path, variables, model_config)`` replaces the freshly initialized
``params``/``batch_stats`` of a model built from ``model_config`` with the converted ones, and
refuses (ValueError) rather than loading part of the model:

* the config fields the converter determined (``determined`` in ``kinpose_conversion.json``:
  backbone, head, num_joints, the integral head's depth bins and deconv structure, the kinematic
  head's tree, view and box size) must equal ``model_config``'s;
* every parameter / statistic of the model must come from the checkpoint, except the whole head
  when the source was a torchvision (ImageNet) state_dict: then only the backbone is filled and
  the head keeps its fresh initialization, whatever the head;
* every checkpoint leaf must exist in the model with the same shape.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

#: Leaves named in an error message before "... and N more".
_MAX_LISTED = 8


class PretrainedMismatchError(ValueError):
    """A converted checkpoint that does not fit the model (an expected, user-facing failure)."""


def load_pretrained(path: str, variables: dict, model_config: Any = None, allow_backbone_only: bool = True
                    ) -> dict:
    """Replaces params/batch_stats with a converted PyTorch checkpoint (kinpose_jax.convert_torch).

    Args:
      path: directory written by ``python -m kinpose_jax.convert_torch``.
      variables: ``{'params', 'batch_stats'}`` of the freshly initialized model (shapes alone,
        e.g. from ``jax.eval_shape``, where every leaf must come from the checkpoint:
        ``allow_backbone_only=False``).
      model_config: the ``config.model`` the model was built from; when given, it is checked
        against the conversion metadata (skipped if ``None``).
      allow_backbone_only: accept a torchvision (ImageNet) conversion, which fills only the
        backbone; False where a random head makes no sense (evaluation).
    Returns:
      the variables with the checkpoint's values (all of them, or the backbone only for a
      torchvision source).
    Raises:
      PretrainedMismatchError (a ValueError) naming the field and both values on a config
      disagreement, or the missing / unknown / mis-shaped leaves.
    """
    from kinpose_jax.weights_format import REPORT_FILE, load_converted, read_conversion_metadata

    meta = read_conversion_metadata(path) if os.path.exists(os.path.join(path, REPORT_FILE)) else None
    source = meta["source"] if meta else None
    if source == "torchvision" and not allow_backbone_only:
        raise PretrainedMismatchError(
            f"{path} holds only an ImageNet backbone (converted from a torchvision state_dict): its head "
            f"would be random. Train from it with --config.model.pretrained={path} instead.")
    if meta is not None and model_config is not None:
        check_config(meta, model_config, path)
    if meta is not None:
        _refuse_converter_placeholders(meta, path)
    loaded = load_converted(path)
    only_backbone = source == "torchvision"
    out = dict(variables)
    for col in ("params", "batch_stats"):
        if col not in variables:
            continue
        new = flax.core.unfreeze(loaded.get(col) or {})
        if only_backbone:  # an ImageNet classifier has no pose head (older conversions saved a random one)
            new = {k: v for k, v in new.items() if k == "backbone"}
        out[col] = _merge_checked(variables[col], new, f"{path}:{col}",
                                  keep_fresh=("head",) if only_backbone else ())
    return out


def _norm(field: str, value: Any) -> Any:
    from kinpose_jax.models import parse_backbone

    if field == "backbone":
        return parse_backbone(value)
    if field in ("num_joints", "depth_bins", "num_deconv_layers", "deconv_filters", "deconv_kernel"):
        return int(value)
    if field == "box_mm":
        return float(value)
    if field == "kinematic_tree" and not isinstance(value, str):
        return value
    return str(value)


def _same_tree(a: Any, b: Any) -> bool:
    from kinpose_jax.kinematics import get_tree

    if isinstance(a, str) and isinstance(b, str):
        return a == b
    a, b = (get_tree(t) if isinstance(t, str) else t for t in (a, b))
    static = ("names", "parents", "dofs", "derived", "hidden", "output_axes")
    return all(getattr(a, f) == getattr(b, f) for f in static) and np.allclose(np.asarray(a.offsets),
                                                                               np.asarray(b.offsets))


def check_config(meta: dict, model_config: Any, path: str = "checkpoint") -> None:
    """Raises PretrainedMismatchError if ``model_config`` disagrees with a field the converted checkpoint fixes."""
    from kinpose_jax.registry import HEAD_FIELDS
    from kinpose_jax.models import model_field

    saved = meta.get("model", {})
    determined = [f for f in meta.get("determined", []) if f in saved]
    head_ckpt, head_cfg = saved.get("head"), model_field(model_config, "head")
    if "head" in determined and str(head_ckpt) != str(head_cfg):  # the other head's fields mean nothing here
        determined = [f for f in determined if f not in HEAD_FIELDS.get(str(head_ckpt), ())]
    bad = []
    for field in determined:
        ours, theirs = model_field(model_config, field), saved[field]
        same = (_same_tree(theirs, ours) if field == "kinematic_tree"
                else _norm(field, theirs) == _norm(field, ours))
        if not same:
            bad.append(f"{field}: the checkpoint has {theirs!r}, the model config has {ours!r}")
    if bad:
        hint = ""
        if any(b.startswith("kinematic_view") for b in bad):
            hint = (" (an original kinematic head converted with --kinematic-view identity needs "
                    "config.model.kinematic_view='identity')")
        raise PretrainedMismatchError(f"{path} was converted for another model: " + "; ".join(bad)
                         + f"{hint}. Set config.model to match or re-run kinpose_jax.convert_torch for this config.")


def _refuse_converter_placeholders(meta: dict, path: str) -> None:
    """Leaves the converter could not fill from torch were saved with its own random init: refuse."""
    missing = list((meta.get("report") or {}).get("missing") or [])
    if meta.get("source") == "torchvision":
        missing = [m for m in missing if m.split("/")[1:2] == ["backbone"]]
    if missing:
        raise PretrainedMismatchError(f"{path}: {len(missing)} leaves were missing from the torch checkpoint and hold the "
                         f"converter's random initialization: {_listing(missing)}")


def _listing(paths: list[str]) -> str:
    shown = ", ".join(paths[:_MAX_LISTED])
    return shown + (f" ... and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else "")


def _merge_checked(reference, loaded, where: str, keep_fresh: tuple[str, ...] = ()):
    """``reference`` with every leaf replaced by ``loaded``'s; the top-level subtrees named in
    ``keep_fresh`` may be absent from ``loaded`` (they keep the reference values)."""
    flat_ref = flax.traverse_util.flatten_dict(flax.core.unfreeze(reference))
    flat_new = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded))
    unknown = ["/".join(k) for k in flat_new if k not in flat_ref]
    if unknown:
        raise PretrainedMismatchError(f"{where}: {len(unknown)} checkpoint leaves do not exist in this model: {_listing(unknown)}")
    missing = ["/".join(k) for k in flat_ref if k not in flat_new and k[0] not in keep_fresh]
    if missing:
        raise PretrainedMismatchError(f"{where}: {len(missing)} model leaves are not in the checkpoint (they would stay "
                         f"randomly initialized): {_listing(missing)}")
    for k, v in flat_new.items():
        if tuple(np.shape(v)) != tuple(np.shape(flat_ref[k])):
            raise PretrainedMismatchError(f"{where}: parameter {'/'.join(k)} has shape {np.shape(v)}, model expects "
                             f"{np.shape(flat_ref[k])}")
    flat_ref.update({k: jnp.asarray(v, flat_ref[k].dtype) for k, v in flat_new.items()})
    abstract = ["/".join(k) for k, v in flat_ref.items() if isinstance(v, jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(f"{where}: {len(abstract)} leaves keep their initial values, but only their shapes were "
                         f"given: {_listing(abstract)}")
    return flax.traverse_util.unflatten_dict(flat_ref)
