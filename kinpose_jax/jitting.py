"""``jax.jit`` for the functional core's public functions, whose Python-level parameters (joint
indices, thresholds, layouts, sizes) are static arguments."""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import numpy as np


def _hashable(value):
    """Lists, tuples and numpy arrays -> nested tuples of Python scalars; anything else unchanged."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def jit_static(*static: str) -> Callable[[Callable], Callable]:
    """Decorator: ``jax.jit`` with the parameters named ``static`` static. A sequence given for one
    of them (a list, numpy array) is passed as a tuple, so it is hashable. The result can be called
    eagerly or inside ``jit`` / ``vmap`` / ``grad``; shape errors are raised when it is traced."""

    def decorate(fn):
        jitted = jax.jit(fn, static_argnames=static)
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            for name in static:
                if name in bound.arguments:
                    bound.arguments[name] = _hashable(bound.arguments[name])
            return jitted(*bound.args, **bound.kwargs)

        return call

    return decorate
