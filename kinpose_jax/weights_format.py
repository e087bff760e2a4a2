"""The converted-weights format: what :mod:`kinpose_jax.convert_torch` writes and
:mod:`kinpose_jax.pretrained` (and ``predict``, ``main.py --checkpoint``) read.

A converted checkpoint is a folder holding

* an orbax ``StandardCheckpointer`` checkpoint of ``{'params', 'batch_stats'}`` (float32 Flax
  variables of :class:`~kinpose_jax.models.PoseNet`), and
* ``kinpose_conversion.json`` (:data:`REPORT_FILE`): ``{'model': config.model fields, 'source':
  'seed' (the PyTorch original) | 'torchvision', 'determined': [config fields the weights fix],
  'report': ConversionReport}`` (docs/DESIGN.md#converted-weights). Files written before
  ``source`` / ``determined`` were recorded get them derived on reading.

No torch here: reading and writing the format needs numpy, JAX and orbax only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax

from kinpose_jax.registry import HEAD_FIELDS

REPORT_FILE = "kinpose_conversion.json"


@dataclasses.dataclass
class ConversionReport:
    """What happened to every key. Paths are ``collection/module/.../leaf`` strings."""

    source: str  # 'seed' | 'torchvision'
    loaded: list[str] = dataclasses.field(default_factory=list)  # torch keys copied
    missing: list[str] = dataclasses.field(default_factory=list)  # Flax leaves kept at init
    unexpected: list[str] = dataclasses.field(default_factory=list)  # torch keys with no destination
    ignored: list[str] = dataclasses.field(default_factory=list)  # torch keys deliberately skipped
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [f"source: {self.source}; loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "ignored"):
            keys = getattr(self, name)
            label = {"missing": "missing (Flax leaves kept at their initialization)",
                     "unexpected": "unexpected (torch keys with no Flax destination)",
                     "ignored": "ignored (not needed)"}[name]
            lines.append(f"{label}: {len(keys)}")
            counters = [k for k in keys if k.endswith("num_batches_tracked")]
            lines.extend(f"  {k}" for k in keys if not k.endswith("num_batches_tracked"))
            if counters:
                lines.append(f"  {len(counters)} x BatchNorm num_batches_tracked")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def determined_fields(model_config: Mapping[str, Any], source: str) -> list[str]:
    """The config fields a converted checkpoint fixes: the backbone depth for a torchvision
    source; for a source from the original also the head, num_joints and the head's own fields (deconv
    structure and depth bins; kinematic tree, view and box size, which are baked into the
    converted kinematic layer)."""
    if source == "torchvision":
        return ["backbone"]
    from configs.default import with_defaults

    model = with_defaults({"model": dict(model_config)}).model  # a field not given: its default
    fields = ["backbone", "head", "num_joints", *HEAD_FIELDS.get(str(model.head), ())]
    if not isinstance(model.kinematic_tree, str):
        fields = [f for f in fields if f != "kinematic_tree"]  # a tree object: not recordable by name
    return fields


def save_converted(out_dir: str, variables: Mapping[str, Any], report: ConversionReport | None = None,
                   model_config: Mapping[str, Any] | None = None, overwrite: bool = False,
                   determined: list[str] | None = None) -> str:
    """Writes ``{'params', 'batch_stats'}`` as an orbax checkpoint at ``out_dir`` (waits for the
    async save to finish) and the report/config to ``out_dir/kinpose_conversion.json``:
    ``{'model': config, 'source': 'seed'|'torchvision', 'determined': [fields], 'report': ...}``
    (``determined`` defaults to :func:`determined_fields`)."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(out_dir, state, force=overwrite)
    ckptr.wait_until_finished()
    ckptr.close()
    model_config = dict(model_config or {})
    source = report.source if report else "seed"
    if determined is None:
        determined = determined_fields(model_config, source)
    meta = {"model": model_config, "source": source, "determined": list(determined),
            "report": dataclasses.asdict(report) if report else None}
    with open(os.path.join(out_dir, REPORT_FILE), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    return out_dir


def load_converted(ckpt_dir: str, target: Any | None = None) -> dict:
    """Restores ``{'params', 'batch_stats'}`` written by :func:`save_converted`.

    ``target`` (optional): a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from
    ``jax.eval_shape(model.init, ...)``) giving shapes, dtypes and shardings to restore into.
    """
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    try:
        if target is not None:
            target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                                  dict(target))
            return dict(ckptr.restore(os.path.abspath(ckpt_dir), target))
        return dict(ckptr.restore(os.path.abspath(ckpt_dir)))
    finally:
        ckptr.close()


def read_conversion_metadata(ckpt_dir: str) -> dict:
    """The ``model`` config, ``source``, ``determined`` fields and ``report`` saved next to a
    converted checkpoint (``source``/``determined`` are derived for files written before they
    were recorded)."""
    with open(os.path.join(ckpt_dir, REPORT_FILE)) as f:
        meta = json.load(f)
    meta.setdefault("model", {})
    if "source" not in meta:
        meta["source"] = (meta.get("report") or {}).get("source", "seed")
    if "determined" not in meta:
        meta["determined"] = determined_fields(meta["model"], meta["source"])
    return meta
