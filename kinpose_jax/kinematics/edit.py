"""Functional edits of kinematic trees: every function returns a new tree and never mutates.

New entries are appended at the end, so output joints and angles of the input tree keep their
indices (a model trained on the old tree reads the same slots). Removing entries renumbers
everything after them. Edits run on the host with concrete offsets (not under ``jit``).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from kinpose_jax.kinematics.tree import NO_LIMIT, KinematicTree, parse_dofs, validate


def _entries(tree: KinematicTree) -> dict:
    return dict(
        offsets=[np.asarray(tree.offsets)[..., i, :] for i in range(tree.num_entries)],
        names=list(tree.names), parents=list(tree.parents), dofs=list(tree.dofs), limits=list(tree.limits),
        dof_labels=list(tree.dof_labels), derived=list(tree.derived), hidden=list(tree.hidden),
    )


def _build(tree: KinematicTree, e: dict) -> KinematicTree:
    offsets = np.stack(np.broadcast_arrays(*e.pop("offsets")), axis=-2)
    return validate(dataclasses.replace(tree, offsets=offsets, **{k: tuple(v) for k, v in e.items()}))


def _check_new_name(tree: KinematicTree, name: str) -> None:
    if name in tree.names:
        raise ValueError(f"a joint named {name!r} already exists in the tree")


def add_joint(
    tree: KinematicTree,
    name: str,
    parent: str,
    offset: Sequence[float],
    dofs: str | Sequence | None = None,
    limits: Sequence[tuple[float, float]] | None = None,
    label: str | None = None,
    hidden: bool = False,
) -> KinematicTree:
    """Adds frame ``name`` under ``parent`` at ``offset`` (mm, parent frame) with optional dofs."""
    _check_new_name(tree, name)
    p = tree.index(parent)
    if tree.is_derived(p):
        raise ValueError(f"cannot attach {name!r} to derived joint {parent!r}; attach it to a frame")
    axes = parse_dofs(dofs)
    lim = tuple((float(lo), float(hi)) for lo, hi in limits) if limits is not None else (NO_LIMIT,) * len(axes)
    e = _entries(tree)
    e["offsets"].append(np.asarray(offset, dtype=np.float64).reshape(3))
    e["names"].append(name)
    e["parents"].append(p)
    e["dofs"].append(axes)
    e["limits"].append(lim)
    e["dof_labels"].append(label or name)
    e["derived"].append(())
    e["hidden"].append(bool(hidden))
    return _build(tree, e)


def add_chain(tree: KinematicTree, parent: str, joints: Sequence[Mapping]) -> KinematicTree:
    """Adds a chain under ``parent``: each dict (keys of :func:`add_joint`, ``parent`` optional)
    hangs off the previous one unless it names its own parent."""
    prev = parent
    for spec in joints:
        spec = dict(spec)
        name = spec.pop("name")
        tree = add_joint(tree, name, spec.pop("parent", prev), **spec)
        prev = name
    return tree


def add_derived(tree: KinematicTree, name: str, sources: Mapping[str, float], hidden: bool = False) -> KinematicTree:
    """Adds a derived joint ``sum_k weight_k * position(source_k)``."""
    _check_new_name(tree, name)
    e = _entries(tree)
    e["offsets"].append(np.zeros(3))
    e["names"].append(name)
    e["parents"].append(-1)
    e["dofs"].append(())
    e["limits"].append(())
    e["dof_labels"].append(name)
    e["derived"].append(tuple((tree.index(s), float(w)) for s, w in sources.items()))
    e["hidden"].append(bool(hidden))
    return _build(tree, e)


def remove_subtree(tree: KinematicTree, name: str, drop_dependent_derived: bool = False) -> KinematicTree:
    """Removes ``name`` and all its descendants (or a single derived joint).

    Derived joints that combine a removed frame raise ValueError unless
    ``drop_dependent_derived`` (then they are removed as well).
    """
    i = tree.index(name)
    if i == tree.root:
        raise ValueError("cannot remove the root frame")
    gone = set(tree.subtree(i)) if not tree.is_derived(i) else {i}
    for d in range(tree.num_entries):
        if tree.derived[d] and d not in gone and any(src in gone for src, _ in tree.derived[d]):
            if not drop_dependent_derived:
                raise ValueError(
                    f"derived joint {tree.names[d]!r} uses joints removed with {name!r}; "
                    "pass drop_dependent_derived=True to remove it too"
                )
            gone.add(d)
    keep = [k for k in range(tree.num_entries) if k not in gone]
    new_index = {old: new for new, old in enumerate(keep)}
    e = _entries(tree)
    out = {key: [vals[k] for k in keep] for key, vals in e.items()}
    out["parents"] = [new_index[p] if p >= 0 else -1 for p in out["parents"]]
    out["derived"] = [tuple((new_index[s], w) for s, w in der) for der in out["derived"]]
    return _build(tree, out)


def reparent(tree: KinematicTree, name: str, new_parent: str, offset: Sequence[float] | None = None) -> KinematicTree:
    """Moves frame ``name`` (with its subtree) under ``new_parent``, optionally with a new offset."""
    i, p = tree.index(name), tree.index(new_parent)
    if tree.is_derived(i) or tree.is_derived(p):
        raise ValueError("reparent moves frames onto frames, not derived joints")
    if i == tree.root:
        raise ValueError("cannot reparent the root frame")
    if p in tree.subtree(i):
        raise ValueError(f"cannot move {name!r} under its own descendant {new_parent!r}")
    e = _entries(tree)
    e["parents"][i] = p
    if offset is not None:
        e["offsets"][i] = np.asarray(offset, dtype=np.float64).reshape(3)
    return _build(tree, e)


def set_offsets(tree: KinematicTree, offsets: Mapping[str, Sequence[float]]) -> KinematicTree:
    """Replaces the rest offsets (mm, parent frame) of the named frames."""
    e = _entries(tree)
    for name, off in offsets.items():
        e["offsets"][tree.index(name)] = np.asarray(off, dtype=np.float64).reshape(3)
    return _build(tree, e)


def set_bone_lengths(tree: KinematicTree, lengths: Mapping[str, float]) -> KinematicTree:
    """Rescales the offsets of the named frames to the given lengths (mm), keeping directions."""
    e = _entries(tree)
    for name, length in lengths.items():
        off = e["offsets"][tree.index(name)]
        norm = np.linalg.norm(off, axis=-1, keepdims=True)
        if np.any(norm == 0):
            raise ValueError(f"frame {name!r} has a zero offset; use set_offsets to give it a direction")
        e["offsets"][tree.index(name)] = off / norm * float(length)
    return _build(tree, e)


def scale_bones(tree: KinematicTree, factor: float, names: Sequence[str] | None = None) -> KinematicTree:
    """Multiplies the offsets of the named frames (default: every offset) by ``factor``.

    Scaling one bone moves its subtree rigidly; the other bones keep their lengths.
    """
    offsets = np.array(tree.offsets, dtype=np.float64)
    if names is None:
        return dataclasses.replace(tree, offsets=offsets * float(factor))
    if isinstance(names, str):
        names = [names]
    idx = sorted({tree.index(n) for n in names})
    offsets[..., idx, :] *= float(factor)
    return dataclasses.replace(tree, offsets=offsets)


def set_hidden(tree: KinematicTree, names: Sequence[str], hidden: bool = True) -> KinematicTree:
    """Hides (or shows) entries in the output joints. Changes output indices after them."""
    e = _entries(tree)
    for name in names:
        e["hidden"][tree.index(name)] = bool(hidden)
    return _build(tree, e)


def merge(
    tree: KinematicTree,
    other: KinematicTree,
    parent: str,
    offset: Sequence[float] | None = None,
    prefix: str = "",
) -> KinematicTree:
    """Attaches a copy of ``other`` (root included) under ``parent`` of ``tree``.

    ``other``'s root gets ``offset`` (default: its own root offset); its names get ``prefix``.
    ``tree``'s output axes are kept. Entries of ``other`` follow all entries of ``tree``.
    """
    p = tree.index(parent)
    if tree.is_derived(p):
        raise ValueError(f"cannot attach to derived joint {parent!r}")
    names = [prefix + n for n in other.names]
    clash = sorted(set(names) & set(tree.names))
    if clash:
        raise ValueError(f"merge would duplicate joint names {clash}; pass a prefix")
    base = tree.num_entries
    e, o = _entries(tree), _entries(other)
    root = other.root
    if offset is not None:
        o["offsets"][root] = np.asarray(offset, dtype=np.float64).reshape(3)
    o["names"] = names
    o["dof_labels"] = [prefix + lbl for lbl in o["dof_labels"]]
    o["parents"] = [p if k == root else (q + base if q >= 0 else -1) for k, q in enumerate(o["parents"])]
    o["derived"] = [tuple((s + base, w) for s, w in der) for der in o["derived"]]
    for key in e:
        e[key] = e[key] + o[key]
    return _build(tree, e)
