"""Starting weights from a checkpoint converted by :mod:`kinpose_jax.convert_torch`.

``load_pretrained(path, variables, model_config)`` replaces the freshly initialized
``params``/``batch_stats`` of a model built from ``model_config`` with the converted ones.
"""

from __future__ import annotations

import flax
import jax.numpy as jnp
import numpy as np


def load_pretrained(path: str, variables: dict, model_config=None) -> dict:
    """Replaces params/batch_stats with a converted PyTorch checkpoint (kinpose_jax.convert_torch)."""
    from kinpose_jax.convert_torch import load_converted

    loaded = load_converted(path)
    out = dict(variables)
    for col in ("params", "batch_stats"):
        if col in loaded and col in variables:
            out[col] = _merge_checked(variables[col], loaded[col], f"{path}:{col}")
    return out


def _merge_checked(reference, loaded, where: str):
    flat_ref = flax.traverse_util.flatten_dict(flax.core.unfreeze(reference))
    flat_new = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded))
    for k, v in flat_new.items():
        if k not in flat_ref:
            raise ValueError(f"{where}: parameter {'/'.join(k)} does not exist in this model")
        if tuple(np.shape(v)) != tuple(np.shape(flat_ref[k])):
            raise ValueError(f"{where}: parameter {'/'.join(k)} has shape {np.shape(v)}, model expects "
                             f"{np.shape(flat_ref[k])}")
    flat_ref.update({k: jnp.asarray(v, flat_ref[k].dtype) for k, v in flat_new.items()})
    return flax.traverse_util.unflatten_dict(flat_ref)
