"""Joint sets, flip pairs and index maps of the Human3.6M-18, MPII-16 and COCO-17 skeletons (docs/DESIGN.md#skeleton).

All tuples are plain Python data so they can be used as static arguments under ``jax.jit``.
"""

from __future__ import annotations

H36M_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "torso", "neck", "nose",
    "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist", "thorax",
)
H36M_NUM_JOINTS = 18
#: Side (mm) of the 3D box centred on the pelvis that a patch shows: the image box is its
#: projection, and one normalized depth unit is this many mm (docs/DESIGN.md#normalized-units).
BOX_MM = 2000.0
H36M_ROOT = 0
#: Left/right pairs swapped by a horizontal flip.
H36M_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 4), (2, 5), (3, 6), (14, 11), (15, 12), (16, 13))
#: The original's ``parent_ids`` (the root is its own parent).
H36M_PARENT_IDS: tuple[int, ...] = (0, 0, 1, 2, 0, 4, 5, 0, 17, 17, 8, 17, 11, 12, 17, 14, 15, 0)
#: Bones summed for the total skeleton length (``bone_len`` in the caches).
H36M_BONES: tuple[tuple[int, int], ...] = (
    (0, 7), (7, 8), (8, 9), (9, 10), (8, 11), (11, 12), (12, 13), (8, 14), (14, 15), (15, 16),
    (0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6),
)
#: Joint groups of the original's evaluation table; "17j" is joints 0..16 (thorax excluded).
H36M_EVAL_GROUPS: dict[str, tuple[int, ...]] = {
    "root": (0,), "hip": (1, 4), "knee": (2, 5), "ankle": (3, 6), "torso": (7,), "neck": (8,),
    "nose": (9,), "head": (10,), "shoulder": (11, 14), "elbow": (12, 15), "wrist": (13, 16),
    "17j": tuple(range(17)),
}

MPII_JOINT_NAMES: tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax", "neck", "head_top",
    "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)
MPII_NUM_JOINTS = 16
MPII_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
#: For every H36M joint, the MPII joint it is read from (-1: none, visibility 0).
MPII_TO_H36M: tuple[int, ...] = (6, 2, 1, 0, 3, 4, 5, -1, 8, -1, 9, 13, 14, 15, 12, 11, 10, 7)
