"""Kinematic trees as data and forward kinematics as a pure function.

>>> from kinpose_jax.kinematics import presets, forward_kinematics
>>> tree = presets.h36m18()
>>> joints = forward_kinematics(tree, angles).joints   # angles [..., tree.num_dofs] -> [..., 18, 3] mm
"""

from kinpose_jax.kinematics import edit, presets
from kinpose_jax.kinematics.edit import (
    add_chain, add_derived, add_joint, merge, remove_subtree, reparent, scale_bones, set_bone_lengths, set_hidden,
    set_offsets,
)
from kinpose_jax.kinematics.fit import FitResult, fit_to_joints
from kinpose_jax.kinematics.fk import FKResult, forward_kinematics, rest_pose
from kinpose_jax.kinematics.presets import get_tree
from kinpose_jax.kinematics.tree import KinematicTree, make_tree

__all__ = [
    "KinematicTree", "make_tree", "forward_kinematics", "rest_pose", "FKResult", "fit_to_joints", "FitResult",
    "presets", "get_tree", "edit", "add_joint", "add_chain", "add_derived", "remove_subtree", "reparent",
    "set_offsets", "set_bone_lengths", "scale_bones", "set_hidden", "merge",
]
