"""The XLA settings of every test process: this one (tests/conftest.py) and the main.py / tool
subprocesses tests start (:func:`subprocess_env`), so that a run in a subprocess compiles the same
programs as the in-process run it is compared with (and loads them from the suite's compilation
cache)."""

import os

#: Devices the CPU backend simulates in a test process (data-parallel tests run in-process).
SIMULATED_DEVICES = 4


#: LLVM optimization level of XLA:CPU's code generation in test processes. Level 1 (the default
#: is 2) compiles a tiny ResNet-18 training step 15% faster and its initializer 2x faster, at the
#: same step time (measured on the suite's 2-core machine); compilation is half of the suite's time.
LLVM_OPT_LEVEL = 1


def xla_flags(devices: int = SIMULATED_DEVICES, opt_level: int = LLVM_OPT_LEVEL) -> str:
    return (f"--xla_force_host_platform_device_count={devices} "
            f"--xla_backend_optimization_level={opt_level}")


def subprocess_env(devices: int = SIMULATED_DEVICES, opt_level: int = LLVM_OPT_LEVEL, **extra: str) -> dict:
    """``os.environ`` with the CPU platform and :func:`xla_flags` for ``devices`` and ``opt_level``;
    inside a ``quick_compile`` test (tests/conftest.py) the subprocess compiles unoptimized too, so
    that its results are those of this process's programs (LLVM's optimizations move float32
    results by up to ~1e-4 relative through a network)."""
    import jax

    quick = "1" if jax.config.read("jax_disable_most_optimizations") else "0"
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices, opt_level),
                JAX_DISABLE_MOST_OPTIMIZATIONS=quick, **extra)
