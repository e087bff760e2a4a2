"""Example extended trees, usable as ``config.model.kinematic_tree='kinpose_jax.kinematics.examples:NAME'``.

A tree function takes no arguments and returns a :class:`~kinpose_jax.kinematics.KinematicTree`
whose output joints include the 18 Human3.6M joints by name (the supervised ones); any further
joints are predicted but not supervised.
"""

from __future__ import annotations

import math

import numpy as np

from kinpose_jax.kinematics import edit, presets
from kinpose_jax.kinematics.tree import KinematicTree

#: Offset of each toe from its ankle, mm (x = left, y = up, z = forward).
TOE_OFFSET = (0.0, -40.0, 120.0)
#: Links of the lumbar/thoracic spine inserted between the pelvis's hidden spine frame and the torso.
SPINE_LINKS = 3


def h36m18_toes_spine() -> KinematicTree:
    """:func:`~kinpose_jax.kinematics.presets.h36m18` + a toe in front of each ankle, moved by an
    ankle flexion (1 dof, ``L_Ankle_RotX`` / ``R_Ankle_RotX``, in a hidden ``*_foot`` frame) + a
    3-link spine (``spine_1..3``, 2 dofs each: flexion x, lateral bend z).

    The spine links split the pelvis -> torso bone into four equal parts (the torso now hangs off
    ``spine_3``), so the rest pose of the 18 original joints is unchanged. Output joints: the 18
    H36M joints (same indices), then ``l_toe``, ``r_toe``, ``spine_1``, ``spine_2``, ``spine_3``;
    angles: the 25 of h36m18 (same indices), then the 2 ankle and 6 spine angles.
    """
    tree = presets.h36m18()
    for side in ("l", "r"):  # a joint's rotation moves its children: the flexion sits in a hidden foot frame
        tree = edit.add_joint(tree, f"{side}_foot", parent=f"{side}_ankle", offset=(0, 0, 0), dofs="x",
                              limits=[(math.radians(-50), math.radians(30))], label=f"{side.upper()}_Ankle",
                              hidden=True)
        tree = edit.add_joint(tree, f"{side}_toe", parent=f"{side}_foot", offset=TOE_OFFSET)
    torso = np.asarray(tree.offsets)[tree.index("torso")]
    link = torso / (SPINE_LINKS + 1)
    limits = [(math.radians(-20), math.radians(30)), (math.radians(-15), math.radians(15))]
    tree = edit.add_chain(tree, "spine", [dict(name=f"spine_{k + 1}", offset=tuple(link), dofs="xz", limits=limits)
                                          for k in range(SPINE_LINKS)])
    return edit.reparent(tree, "torso", f"spine_{SPINE_LINKS}", offset=tuple(link))
