"""A kinematic tree as immutable data.

A :class:`KinematicTree` is a list of *entries*. An entry is either

* a **frame** (a rigid body/joint): it has a parent frame (``-1`` for the single root), a rest
  offset from the parent (mm, expressed in the parent's frame) and up to three rotational
  degrees of freedom (unit axes, applied in order: ``R = R(axis_0) @ R(axis_1) @ R(axis_2)``), or
* a **derived joint**: a fixed linear combination of frame positions (e.g. thorax = mean of the
  shoulders).

Forward kinematics (MuJoCo convention): ``G_j = G_parent @ T(scale * offset_j) @ R_j(angles_j)``;
the position of entry ``j`` is the translation of ``G_j``. A rotation at frame ``j`` therefore
moves all descendants of ``j`` but not ``j`` itself. Frames marked ``hidden`` (e.g. a zero-offset
frame that carries a rotation only some children should see) are computed but not returned.

The output joints are the non-hidden entries in stored order, then permuted by ``output_axes``.
Edits (see :mod:`kinpose_jax.kinematics.edit`) append new entries at the end, so existing output
joints keep their indices and existing angles keep their positions in the flat parameter vector.

Only ``offsets`` is an array (a pytree leaf, so bone lengths can be batched, differentiated or
fitted); everything else is static, hashable metadata.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

AXES: dict[str, tuple[float, float, float]] = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
NO_LIMIT = (-math.inf, math.inf)

Axis = tuple[float, float, float]


def parse_dofs(dofs: str | Sequence[Sequence[float] | str] | None) -> tuple[Axis, ...]:
    """Turns ``'zxy'``, ``'x'``, ``''``/``None`` or a list of axis vectors into unit axes.

    Returns a tuple of at most 3 unit 3-vectors (float tuples), in application order.
    """
    if dofs is None:
        return ()
    items: Sequence = list(dofs) if isinstance(dofs, str) else dofs
    axes = []
    for item in items:
        if isinstance(item, str):
            if item not in AXES:
                raise ValueError(f"unknown rotation axis {item!r}; expected one of 'x', 'y', 'z' or a 3-vector")
            axes.append(AXES[item])
        else:
            v = np.asarray(item, dtype=np.float64).reshape(-1)
            if v.shape != (3,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) < 1e-9:
                raise ValueError(f"a rotation axis must be a finite non-zero 3-vector, got {item!r}")
            axes.append(tuple(float(c) for c in v / np.linalg.norm(v)))
    if len(axes) > 3:
        raise ValueError(f"at most 3 rotational degrees of freedom per frame, got {len(axes)}")
    return tuple(axes)


def axis_label(axis: Axis, k: int) -> str:
    """'X', 'Y', 'Z' for basis axes, else 'Axis<k>' (k = slot index)."""
    for name, basis in AXES.items():
        if axis == basis:
            return name.upper()
    return f"Axis{k}"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class KinematicTree:
    """Immutable kinematic tree (see module docstring). Build with :func:`make_tree` or presets.

    Attributes (E = number of entries):
      offsets: [..., E, 3] float, rest offset of each frame from its parent in mm (zeros for
        derived joints). The only pytree leaf; may carry leading batch dims (per-sample skeletons).
      names: E unique entry names.
      parents: E parent indices (-1 for the root frame and for derived joints).
      dofs: E tuples of unit rotation axes (0..3 each) in application order.
      limits: E tuples of (low, high) radians, one per dof of that entry.
      dof_labels: E name prefixes for the angles of each entry (``<label>_Rot<X|Y|Z>``).
      derived: E tuples of (source entry index, weight); empty for frames.
      hidden: E flags; hidden entries are not part of the output joints.
      output_axes: permutation of (0, 1, 2) applied to output coordinates (e.g. the original's x,z,y).
    """

    offsets: np.ndarray
    names: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))
    parents: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    dofs: tuple[tuple[Axis, ...], ...] = dataclasses.field(metadata=dict(static=True))
    limits: tuple[tuple[tuple[float, float], ...], ...] = dataclasses.field(metadata=dict(static=True))
    dof_labels: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))
    derived: tuple[tuple[tuple[int, float], ...], ...] = dataclasses.field(metadata=dict(static=True))
    hidden: tuple[bool, ...] = dataclasses.field(metadata=dict(static=True))
    output_axes: tuple[int, int, int] = dataclasses.field(default=(0, 1, 2), metadata=dict(static=True))

    def __post_init__(self):
        # A numpy offsets array is stored as a read-only copy, so the tree cannot be changed in
        # place (jax arrays are immutable already; tracers pass through).
        if isinstance(self.offsets, np.ndarray):
            offsets = np.array(self.offsets)
            offsets.flags.writeable = False
            object.__setattr__(self, "offsets", offsets)

    # ----------------------------------------------------------------- equality
    def _value_key(self) -> tuple:
        """What equality compares: every static field and the offsets' values (numpy offsets; jax
        arrays and tracers by identity)."""
        off = self.offsets
        data = (off.shape, off.dtype.str, off.tobytes()) if isinstance(off, np.ndarray) else id(off)
        return (data, self.names, self.parents, self.dofs, self.limits, self.dof_labels, self.derived, self.hidden,
                self.output_axes)

    def __eq__(self, other) -> bool:
        """Equal skeletons are equal trees (and hash alike), however often they are built: a model
        holding one is a static argument of jitted functions, which then reuse their programs."""
        if self is other:
            return True
        if not isinstance(other, KinematicTree):
            return NotImplemented
        return self._value_key() == other._value_key()

    def __hash__(self) -> int:
        return hash(self._value_key())

    # ----------------------------------------------------------------- derived static facts
    @property
    def num_entries(self) -> int:
        return len(self.names)

    @property
    def output_indices(self) -> tuple[int, ...]:
        """Entry indices of the output joints, in output order."""
        return tuple(i for i, h in enumerate(self.hidden) if not h)

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Names of the output joints (length ``num_joints``)."""
        return tuple(self.names[i] for i in self.output_indices)

    @property
    def num_joints(self) -> int:
        """Number of output joints returned by forward kinematics."""
        return len(self.output_indices)

    @property
    def num_dofs(self) -> int:
        """Number of joint angles (length of the ``angles`` vector)."""
        return sum(len(d) for d in self.dofs)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Name of every angle, in the order of the flat ``angles`` vector (radians)."""
        names = []
        for label, axes in zip(self.dof_labels, self.dofs):
            names.extend(f"{label}_Rot{axis_label(a, k)}" for k, a in enumerate(axes))
        return tuple(names)

    @property
    def limits_array(self) -> np.ndarray:
        """[num_dofs, 2] (low, high) radians; ±inf where unlimited."""
        rows = [lim for per_entry in self.limits for lim in per_entry]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 2)

    @property
    def root(self) -> int:
        return next(i for i, p in enumerate(self.parents) if p < 0 and not self.derived[i])

    def index(self, name: str) -> int:
        """Entry index of ``name``; KeyError lists the known names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no joint named {name!r}; known: {', '.join(self.names)}") from None

    def joint_index(self, name: str) -> int:
        """Index of ``name`` among the output joints."""
        entry = self.index(name)
        if self.hidden[entry]:
            raise KeyError(f"joint {name!r} is hidden and not part of the output")
        return self.output_indices.index(entry)

    def is_derived(self, i: int) -> bool:
        return bool(self.derived[i])

    def subtree(self, i: int) -> tuple[int, ...]:
        """``i`` and all its descendant frames, in stored order."""
        out = {i}
        changed = True
        while changed:
            changed = False
            for c, p in enumerate(self.parents):
                if p in out and c not in out:
                    out.add(c)
                    changed = True
        return tuple(sorted(out))

    def bones(self) -> tuple[tuple[int, int], ...]:
        """(parent, child) output-joint index pairs for every non-hidden frame whose nearest
        non-hidden ancestor exists. Useful for bone-length checks and drawing."""
        out = []
        for j in self.output_indices:
            if self.derived[j]:
                continue
            p = self.parents[j]
            while p >= 0 and self.hidden[p]:
                p = self.parents[p]
            if p >= 0:
                out.append((self.output_indices.index(p), self.output_indices.index(j)))
        return tuple(out)

    def bone_lengths(self) -> dict[str, float]:
        """Rest length (mm, before scale) of the bone ending at each non-root frame."""
        off = np.asarray(self.offsets)
        return {
            self.names[j]: float(np.linalg.norm(off[..., j, :], axis=-1).mean())
            for j in range(self.num_entries)
            if self.parents[j] >= 0
        }

    def __repr__(self) -> str:
        return (
            f"KinematicTree({self.num_joints} joints, {self.num_entries} entries, {self.num_dofs} dofs, "
            f"joints={list(self.joint_names)})"
        )


def validate(tree: KinematicTree) -> KinematicTree:
    """Checks structural consistency; raises ValueError naming the entry at fault."""
    e = len(tree.names)
    fields = dict(parents=tree.parents, dofs=tree.dofs, limits=tree.limits, dof_labels=tree.dof_labels,
                  derived=tree.derived, hidden=tree.hidden)
    for field, value in fields.items():
        if len(value) != e:
            raise ValueError(f"KinematicTree.{field} has {len(value)} entries, expected {e} (one per name)")
    if len(set(tree.names)) != e:
        dup = sorted({n for n in tree.names if tree.names.count(n) > 1})
        raise ValueError(f"joint names must be unique; duplicated: {dup}")
    off = np.asarray(tree.offsets)
    if off.shape[-2:] != (e, 3):
        raise ValueError(f"KinematicTree.offsets must be [..., {e}, 3], got shape {off.shape}")
    if not np.all(np.isfinite(off)):
        raise ValueError("KinematicTree.offsets contains non-finite values")
    roots = [i for i in range(e) if tree.parents[i] < 0 and not tree.derived[i]]
    if len(roots) != 1:
        raise ValueError(f"a tree needs exactly one root frame (parent -1), found {[tree.names[i] for i in roots]}")
    for i in range(e):
        name = tree.names[i]
        if tree.derived[i]:
            if tree.parents[i] != -1 or tree.dofs[i]:
                raise ValueError(f"derived joint {name!r} cannot have a parent or dofs")
            for src, _ in tree.derived[i]:
                if not 0 <= src < e or tree.derived[src]:
                    raise ValueError(f"derived joint {name!r} must combine frames, got source index {src}")
            continue
        p = tree.parents[i]
        if p >= e or (p >= 0 and tree.derived[p]):
            raise ValueError(f"frame {name!r} has an invalid parent index {p}")
        seen, q = {i}, p
        while q >= 0:
            if q in seen:
                raise ValueError(f"frame {name!r} is part of a cycle in the parent relation")
            seen.add(q)
            q = tree.parents[q]
        if len(tree.limits[i]) != len(tree.dofs[i]):
            raise ValueError(f"frame {name!r} has {len(tree.dofs[i])} dofs but {len(tree.limits[i])} limits")
        for lo, hi in tree.limits[i]:
            if not lo <= hi:
                raise ValueError(f"frame {name!r} has a joint limit with low {lo} > high {hi}")
    if sorted(tree.output_axes) != [0, 1, 2]:
        raise ValueError(f"output_axes must be a permutation of (0, 1, 2), got {tree.output_axes}")
    return tree


def make_tree(
    joints: Sequence[dict],
    derived: Sequence[dict] = (),
    output_axes: tuple[int, int, int] = (0, 1, 2),
) -> KinematicTree:
    """Builds a tree from readable specs.

    Args:
      joints: dicts with keys ``name``, ``parent`` (name or None for the root), ``offset`` (3 mm),
        optional ``dofs`` ('zxy', 'x', list of axis vectors), ``limits`` (list of (low, high)
        radians, one per dof), ``label`` (angle-name prefix, default the joint name) and
        ``hidden`` (bool).
      derived: dicts with ``name`` and ``sources`` ({joint name: weight}), optional ``hidden``.
        Derived entries are stored after all ``joints`` unless listed with ``after``.
      output_axes: permutation applied to output coordinates.
    """
    names = [j["name"] for j in joints] + [d["name"] for d in derived]
    index = {n: i for i, n in enumerate(names)}

    def lookup(name, what):
        if name not in index:
            raise KeyError(f"{what} refers to unknown joint {name!r}")
        return index[name]

    parents, offsets, dofs, limits, labels, der, hidden = [], [], [], [], [], [], []
    for j in joints:
        parents.append(-1 if j.get("parent") is None else lookup(j["parent"], f"joint {j['name']!r}"))
        offsets.append(np.asarray(j.get("offset", (0.0, 0.0, 0.0)), dtype=np.float64).reshape(3))
        axes = parse_dofs(j.get("dofs"))
        dofs.append(axes)
        lim = j.get("limits")
        limits.append(tuple((float(lo), float(hi)) for lo, hi in lim) if lim is not None else (NO_LIMIT,) * len(axes))
        labels.append(j.get("label", j["name"]))
        der.append(())
        hidden.append(bool(j.get("hidden", False)))
    for d in derived:
        parents.append(-1)
        offsets.append(np.zeros(3))
        dofs.append(())
        limits.append(())
        labels.append(d["name"])
        der.append(tuple((lookup(s, f"derived joint {d['name']!r}"), float(w)) for s, w in d["sources"].items()))
        hidden.append(bool(d.get("hidden", False)))
    tree = KinematicTree(
        offsets=np.stack(offsets) if offsets else np.zeros((0, 3)),
        names=tuple(names),
        parents=tuple(parents),
        dofs=tuple(dofs),
        limits=tuple(limits),
        dof_labels=tuple(labels),
        derived=tuple(der),
        hidden=tuple(hidden),
        output_axes=tuple(output_axes),
    )
    return validate(tree)
