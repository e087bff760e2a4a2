"""Ready-made skeletons.

* :func:`seed_h36m18` — the original's kinematic model (docs/DESIGN.md#original-model) with its bone lengths and *intended*
  semantics: global translation applied, fresh transforms per operation, both shoulders on the
  neck. Model frame: x = person's left, y = up, nose towards -z; outputs reordered to (x, z, y)
  like the original.
* :func:`h36m18` / :func:`h36m17` — a left/right-symmetric Human3.6M tree (same topology) with
  right-handed axes x = left, y = up, z = forward and approximate default bone lengths
  (:data:`H36M_MEAN_BONES`, not measured by this project); rebuild it from lengths measured on
  your data with :func:`h36m18_from_joints`.
* :func:`mpii16` — the MPII joint set.

Angles are radians; joint limits are human ranges (used by the synthetic generator and by
:func:`~kinpose_jax.kinematics.fit.fit_to_joints` when asked).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from kinpose_jax import skeleton
from kinpose_jax.kinematics.tree import KinematicTree, make_tree

#: Bone lengths of the original's model, mm (docs/DESIGN.md#original-model).
SEED_BONES = dict(
    knee2ankle=300.0, hip2knee=302.0, pelvis2hip=84.7, pelvis2torso=165.0, torso2neck=161.6, neck2nose_y=73.46,
    neck2nose_z=29.0, nose2head_y=66.91, elbow2wrist=160.6, shoulder2elbow=187.16, neck2shoulder_x=117.0,
    neck2shoulder_y=6.5,
)

#: The original's 29 motion parameters in the order its network emits them (docs/DESIGN.md#original-model); the 30th
#: network output is the scale.
SEED_MOTION_NAMES: tuple[str, ...] = (
    "TransX", "TransY", "TransZ", "Root_RotZ", "Root_RotX", "Root_RotY", "Pelvis_RotY", "Pelvis_RotX",
    "Pelvis_RotZ", "L_Hip_RotZ", "L_Hip_RotX", "L_Hip_RotY", "L_Knee_RotX", "R_Hip_RotZ", "R_Hip_RotX",
    "R_Hip_RotY", "R_Knee_RotX", "L_Shoulder_RotZ", "L_Shoulder_RotX", "L_Shoulder_RotY", "L_Elbow_RotX",
    "R_Shoulder_RotZ", "R_Shoulder_RotX", "R_Shoulder_RotY", "R_Elbow_RotX", "Neck_RotZ", "Neck_RotX",
    "Neck_RotY", "Head_RotX",
)

#: Default bone lengths (mm) of the symmetric H36M tree. Provenance: these are *approximate*
#: adult bone lengths in Human3.6M's joint convention, entered by hand (rounded to the mm) when
#: the preset was written; they were not measured by this project and no source is recorded, so
#: do not cite them as Human3.6M statistics. For lengths measured on your own data (e.g. the
#: training subjects' ground truth in mm) use ``h36m18_from_joints(joints)``, or
#: ``h36m18(measure_h36m_bone_lengths(joints, mask))`` to inspect or edit the numbers first.
H36M_MEAN_BONES = dict(
    pelvis2hip=132.0, hip2knee=442.0, knee2ankle=454.0, pelvis2torso=233.0, torso2neck=257.0, neck2nose=121.0,
    nose2head=115.0, neck2shoulder=151.0, shoulder2elbow=279.0, elbow2wrist=250.0,
)

D = math.radians


def _limits(forward: float) -> dict[str, list[tuple[float, float]]]:
    """Human joint ranges (radians) for the zxy / x dofs, for a model frame whose forward is
    ``forward`` * z (x = left, y = up). X rotations flip sign with the forward direction."""

    def x(lo, hi):  # ranges written for forward = +z
        return (D(lo), D(hi)) if forward > 0 else (-D(hi), -D(lo))

    inf = (-math.inf, math.inf)
    return {
        "root": [inf, inf, inf],
        "spine": [(D(-30), D(30)), x(-20, 60), (D(-40), D(40))],
        "neck": [(D(-30), D(30)), x(-40, 50), (D(-60), D(60))],
        "l_hip": [(D(-20), D(45)), x(-110, 30), (D(-40), D(40))],
        "r_hip": [(D(-45), D(20)), x(-110, 30), (D(-40), D(40))],
        "knee": [x(0, 150)],
        "l_shoulder": [(D(-10), D(120)), x(-150, 45), (D(-60), D(60))],
        "r_shoulder": [(D(-120), D(10)), x(-150, 45), (D(-60), D(60))],
        "elbow": [x(-150, 0)],
    }


def _human18(b: dict, forward: float, output_axes: tuple[int, int, int]) -> KinematicTree:
    """The 18-joint H36M topology shared by the original and symmetric trees.

    ``b`` holds offsets (3-vectors, mm) keyed by bone name. Hidden frames: ``spine`` (pelvis
    rotation that moves the upper body but not the hips) and ``head_base`` (neck rotation that
    moves nose and head but not the shoulders).
    """
    lim = _limits(forward)
    joints = [
        dict(name="pelvis", parent=None, offset=(0, 0, 0), dofs="zxy", label="Root", limits=lim["root"]),
        dict(name="r_hip", parent="pelvis", offset=b["r_hip"], dofs="zxy", label="R_Hip", limits=lim["r_hip"]),
        dict(name="r_knee", parent="r_hip", offset=b["knee"], dofs="x", label="R_Knee", limits=lim["knee"]),
        dict(name="r_ankle", parent="r_knee", offset=b["ankle"]),
        dict(name="l_hip", parent="pelvis", offset=b["l_hip"], dofs="zxy", label="L_Hip", limits=lim["l_hip"]),
        dict(name="l_knee", parent="l_hip", offset=b["knee"], dofs="x", label="L_Knee", limits=lim["knee"]),
        dict(name="l_ankle", parent="l_knee", offset=b["ankle"]),
        dict(name="torso", parent="spine", offset=b["torso"]),
        dict(name="neck", parent="torso", offset=b["neck"]),
        dict(name="nose", parent="head_base", offset=b["nose"]),
        dict(name="head", parent="nose", offset=b["head"]),
        dict(name="l_shoulder", parent="neck", offset=b["l_shoulder"], dofs="zxy", label="L_Shoulder",
             limits=lim["l_shoulder"]),
        dict(name="l_elbow", parent="l_shoulder", offset=b["elbow"], dofs="x", label="L_Elbow", limits=lim["elbow"]),
        dict(name="l_wrist", parent="l_elbow", offset=b["wrist"]),
        dict(name="r_shoulder", parent="neck", offset=b["r_shoulder"], dofs="zxy", label="R_Shoulder",
             limits=lim["r_shoulder"]),
        dict(name="r_elbow", parent="r_shoulder", offset=b["elbow"], dofs="x", label="R_Elbow", limits=lim["elbow"]),
        dict(name="r_wrist", parent="r_elbow", offset=b["wrist"]),
        dict(name="spine", parent="pelvis", offset=(0, 0, 0), dofs="zxy", label="Pelvis", limits=lim["spine"],
             hidden=True),
        dict(name="head_base", parent="neck", offset=(0, 0, 0), dofs="zxy", label="Neck", limits=lim["neck"],
             hidden=True),
    ]
    derived = [dict(name="thorax", sources={"l_shoulder": 0.5, "r_shoulder": 0.5})]
    tree = make_tree(joints, derived, output_axes=output_axes)
    # make_tree stores derived entries last; move thorax before the two hidden frames so the
    # stored order is the 18 H36M joints, then the hidden frames.
    order = list(range(17)) + [19, 17, 18]
    return _permute(tree, order)


def _permute(tree: KinematicTree, order: list[int]) -> KinematicTree:
    new_index = {old: new for new, old in enumerate(order)}
    pick = lambda seq: tuple(seq[k] for k in order)  # noqa: E731
    return dataclasses.replace(
        tree,
        offsets=np.asarray(tree.offsets)[..., order, :],
        names=pick(tree.names),
        parents=tuple(new_index[p] if p >= 0 else -1 for p in pick(tree.parents)),
        dofs=pick(tree.dofs),
        limits=pick(tree.limits),
        dof_labels=pick(tree.dof_labels),
        derived=tuple(tuple((new_index[s], w) for s, w in der) for der in pick(tree.derived)),
        hidden=pick(tree.hidden),
    )


def seed_h36m18() -> KinematicTree:
    """The original's kinematic model (docs/DESIGN.md#original-model), bugs (a)-(c) fixed; outputs in (x, z, y) order."""
    s = SEED_BONES
    b = {
        "l_hip": (s["pelvis2hip"], 0, 0), "r_hip": (-s["pelvis2hip"], 0, 0),
        "knee": (0, -s["hip2knee"], 0), "ankle": (0, -s["knee2ankle"], 0),
        "torso": (0, s["pelvis2torso"], 0), "neck": (0, s["torso2neck"], 0),
        "nose": (0, s["neck2nose_y"], -s["neck2nose_z"]), "head": (0, s["nose2head_y"], s["neck2nose_z"]),
        "l_shoulder": (s["neck2shoulder_x"], -s["neck2shoulder_y"], 0),
        "r_shoulder": (-s["neck2shoulder_x"], -s["neck2shoulder_y"], 0),
        "elbow": (0, -s["shoulder2elbow"], 0), "wrist": (0, -s["elbow2wrist"], 0),
    }
    return _human18(b, forward=-1.0, output_axes=(0, 2, 1))


def _symmetric_offsets(lengths: dict) -> dict:
    n = lengths
    nose_dir = np.array([0.0, 0.8, 0.6])
    head_dir = np.array([0.0, math.sqrt(3.0) / 2.0, -0.5])  # unit: the bone gets exactly its length
    sh_dir = np.array([1.0, -0.05, 0.0]) / np.linalg.norm([1.0, -0.05, 0.0])
    return {
        "l_hip": (n["pelvis2hip"], 0, 0), "r_hip": (-n["pelvis2hip"], 0, 0),
        "knee": (0, -n["hip2knee"], 0), "ankle": (0, -n["knee2ankle"], 0),
        "torso": (0, n["pelvis2torso"], 0), "neck": (0, n["torso2neck"], 0),
        "nose": tuple(nose_dir * n["neck2nose"]), "head": tuple(head_dir * n["nose2head"]),
        "l_shoulder": tuple(sh_dir * n["neck2shoulder"]), "r_shoulder": tuple(sh_dir * [-1, 1, 1] * n["neck2shoulder"]),
        "elbow": (0, -n["shoulder2elbow"], 0), "wrist": (0, -n["elbow2wrist"], 0),
    }


def h36m18(bone_lengths: dict | None = None) -> KinematicTree:
    """Symmetric 18-joint H36M tree (x = left, y = up, z = forward), lengths in mm.

    ``bone_lengths`` overrides entries of :data:`H36M_MEAN_BONES`.
    """
    lengths = dict(H36M_MEAN_BONES, **(bone_lengths or {}))
    return _human18(_symmetric_offsets(lengths), forward=1.0, output_axes=(0, 1, 2))


def h36m17(bone_lengths: dict | None = None) -> KinematicTree:
    """:func:`h36m18` without the derived thorax (the 17 Human3.6M joints)."""
    from kinpose_jax.kinematics.edit import remove_subtree

    return remove_subtree(h36m18(bone_lengths), "thorax")


#: (bone name, [(parent, child) H36M joint index pairs averaged for it]).
_H36M_BONE_PAIRS = {
    "pelvis2hip": [(0, 1), (0, 4)], "hip2knee": [(1, 2), (4, 5)], "knee2ankle": [(2, 3), (5, 6)],
    "pelvis2torso": [(0, 7)], "torso2neck": [(7, 8)], "neck2nose": [(8, 9)], "nose2head": [(9, 10)],
    "neck2shoulder": [(8, 11), (8, 14)], "shoulder2elbow": [(11, 12), (14, 15)], "elbow2wrist": [(12, 13), (15, 16)],
}


def measure_h36m_bone_lengths(joints: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean (left/right-averaged) bone lengths in mm of H36M-ordered joints [N, >=17, 3] (mm).

    ``mask`` [N] selects the samples to use.
    """
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1] < 17 or joints.shape[2] != 3:
        raise ValueError(f"joints must be [N, 17 or 18, 3] in H36M order, got shape {joints.shape}")
    if mask is not None:
        joints = joints[np.asarray(mask, bool)]
    if not len(joints):
        raise ValueError("no samples to measure bone lengths on")
    out = {}
    for bone, pairs in _H36M_BONE_PAIRS.items():
        out[bone] = float(np.mean([np.linalg.norm(joints[:, c] - joints[:, p], axis=-1).mean() for p, c in pairs]))
    return out


def h36m18_from_joints(joints: np.ndarray, mask: np.ndarray | None = None) -> KinematicTree:
    """:func:`h36m18` with bone lengths measured on ground-truth joints [N, 18, 3] (mm)."""
    return h36m18(measure_h36m_bone_lengths(joints, mask))


def mpii16() -> KinematicTree:
    """The MPII-16 joint set (MPII order, docs/DESIGN.md#mpii-coco), x = left, y = up, z = forward; mm."""
    n = H36M_MEAN_BONES
    lim = _limits(1.0)
    sh = n["neck2shoulder"]
    joints = [
        dict(name="r_ankle", parent="r_knee", offset=(0, -n["knee2ankle"], 0)),
        dict(name="r_knee", parent="r_hip", offset=(0, -n["hip2knee"], 0), dofs="x", label="R_Knee", limits=lim["knee"]),
        dict(name="r_hip", parent="pelvis", offset=(-n["pelvis2hip"], 0, 0), dofs="zxy", label="R_Hip",
             limits=lim["r_hip"]),
        dict(name="l_hip", parent="pelvis", offset=(n["pelvis2hip"], 0, 0), dofs="zxy", label="L_Hip",
             limits=lim["l_hip"]),
        dict(name="l_knee", parent="l_hip", offset=(0, -n["hip2knee"], 0), dofs="x", label="L_Knee", limits=lim["knee"]),
        dict(name="l_ankle", parent="l_knee", offset=(0, -n["knee2ankle"], 0)),
        dict(name="pelvis", parent=None, offset=(0, 0, 0), dofs="zxy", label="Root", limits=lim["root"]),
        dict(name="thorax", parent="spine", offset=(0, n["pelvis2torso"] + n["torso2neck"] - 0.05 * sh, 0)),
        dict(name="neck", parent="thorax", offset=(0, 60.0, 0)),
        dict(name="head_top", parent="head_base", offset=(0, 190.0, 0)),
        dict(name="r_wrist", parent="r_elbow", offset=(0, -n["elbow2wrist"], 0)),
        dict(name="r_elbow", parent="r_shoulder", offset=(0, -n["shoulder2elbow"], 0), dofs="x", label="R_Elbow",
             limits=lim["elbow"]),
        dict(name="r_shoulder", parent="thorax", offset=(-sh, 0, 0), dofs="zxy", label="R_Shoulder",
             limits=lim["r_shoulder"]),
        dict(name="l_shoulder", parent="thorax", offset=(sh, 0, 0), dofs="zxy", label="L_Shoulder",
             limits=lim["l_shoulder"]),
        dict(name="l_elbow", parent="l_shoulder", offset=(0, -n["shoulder2elbow"], 0), dofs="x", label="L_Elbow",
             limits=lim["elbow"]),
        dict(name="l_wrist", parent="l_elbow", offset=(0, -n["elbow2wrist"], 0)),
        dict(name="spine", parent="pelvis", offset=(0, 0, 0), dofs="zxy", label="Pelvis", limits=lim["spine"],
             hidden=True),
        dict(name="head_base", parent="neck", offset=(0, 0, 0), dofs="zxy", label="Neck", limits=lim["neck"],
             hidden=True),
    ]
    tree = make_tree(joints)
    assert tree.joint_names == skeleton.MPII_JOINT_NAMES
    return tree


PRESETS = {"seed_h36m18": seed_h36m18, "h36m18": h36m18, "h36m17": h36m17, "mpii16": mpii16}


def get_tree(name: str) -> KinematicTree:
    """The tree a config names (``config.model.kinematic_tree``): a preset, one of :data:`PRESETS`,
    or ``'module.path:function'``, a function of no arguments returning a :class:`KinematicTree`
    (e.g. ``'kinpose_jax.kinematics.examples:h36m18_toes_spine'``). Raises ValueError saying
    what is wrong (unknown preset, module not importable, no such function, not a tree)."""
    if name in PRESETS:
        return PRESETS[name]()
    if ":" not in name:
        raise ValueError(f"unknown kinematic tree {name!r}; choose one of {sorted(PRESETS)} or give "
                         f"'module.path:function' returning a KinematicTree")
    module_name, _, attr = name.partition(":")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"kinematic tree {name!r}: module {module_name!r} cannot be imported ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"kinematic tree {name!r}: module {module_name!r} has no function {attr!r}")
    tree = fn()
    if not isinstance(tree, KinematicTree):
        raise ValueError(f"kinematic tree {name!r}: {attr}() returned {type(tree).__name__}, not a KinematicTree")
    return tree


def seed_motion_permutation(tree: KinematicTree) -> np.ndarray:
    """Index into the original's 29 motion parameters for every angle of ``tree`` (by name)."""
    try:
        return np.asarray([SEED_MOTION_NAMES.index(n) for n in tree.param_names], dtype=np.int32)
    except ValueError as err:
        raise ValueError(f"tree angles {tree.param_names} are not all the original's motion parameters") from err


def seed_motion_to_fk_inputs(motion: jnp.ndarray, tree: KinematicTree | None = None):
    """Splits the original's motion vector [..., 29] into ``(translation [..., 3], angles [..., 25])``
    for :func:`seed_h36m18` (``Head_RotX`` is unused by the original and dropped)."""
    tree = tree or seed_h36m18()
    motion = jnp.asarray(motion)
    if motion.shape[-1] != len(SEED_MOTION_NAMES):
        raise ValueError(f"seed motion parameters must be [..., 29], got shape {motion.shape}")
    return motion[..., :3], motion[..., seed_motion_permutation(tree)]
