"""Loads a ``data_prep/`` command-line script as a module (they are scripts, not a package)."""

import functools
import importlib.util
import os

DATA_PREP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_prep")


@functools.lru_cache(maxsize=None)
def load(name: str):
    """``load("convert_h36m")`` -> the module of ``data_prep/convert_h36m.py``."""
    spec = importlib.util.spec_from_file_location(f"data_prep_{name}", os.path.join(DATA_PREP, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
