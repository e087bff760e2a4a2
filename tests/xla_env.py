"""The XLA settings of every test process: this one (tests/conftest.py) and the main.py / tool
subprocesses tests start (:func:`subprocess_env`), so that a run in a subprocess compiles the same
programs as the in-process run it is compared with."""

import os

#: Devices the CPU backend simulates in a test process (data-parallel tests run in-process).
SIMULATED_DEVICES = 4

#: LLVM optimization level 0 for XLA:CPU. Most of the suite's time is XLA compiling small programs
#: that then run a few steps: level 0 halves compile time (measured on a tiny training run: the
#: ResNet-18 train step 26 s -> 15 s, model init 21 s -> 6 s) and changes results only at float
#: rounding, which every comparison in the suite tolerates. Speed is never asserted in tests.
OPTIMIZATION_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int = SIMULATED_DEVICES) -> str:
    return f"--xla_force_host_platform_device_count={devices} {OPTIMIZATION_FLAGS}"


def subprocess_env(devices: int = SIMULATED_DEVICES, **extra: str) -> dict:
    """``os.environ`` with the CPU platform and :func:`xla_flags` for ``devices``."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices), **extra)
