"""Test-wide settings: CPU JAX with 4 simulated devices and the suite's XLA flags (tests/xla_env.py,
set before JAX starts, so data-parallel tests run in-process); torch limited to 2 threads."""

import os

from tests.xla_env import xla_flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags()).strip()

import pytest  # noqa: E402

#: The slowest test modules, in the order they are handed out (longest-first scheduling, so that
#: both workers finish together; the others follow in file order). The 1-vs-4-device steps come
#: first: they compile the tiny runs' training steps, which the later in-process runs then load
#: from the suite's compilation cache; the accelerator suite (a subprocess sharing no program) runs
#: beside them.
SLOWEST_MODULES = ("test_train_parallel", "test_accelerator_suite", "test_e2e_training",
                   "test_extended_tree", "test_kinematics", "test_fault_tolerance", "test_models",
                   "test_conv_impl", "test_resnet_fast_paths", "test_bn_sync", "test_convert_torch",
                   "test_mixed_precision", "test_predict", "test_compare_torch")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep this order (not most-tests-first)
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(os.path.basename(item.nodeid.split("::")[0])[:-3], len(rank)))


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    """Torch uses at most 2 threads, like the suite's CI machine (set in the processes that run
    tests, not in pytest-xdist's controller, which then never imports torch)."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _compile_effort(request):
    """Tests marked ``quick_compile`` compile with ``jax_disable_most_optimizations``: no LLVM
    optimization passes; XLA's HLO passes and fusions are unchanged. Results then differ from
    optimized code by float32 rounding only (up to ~1e-4 relative through a deep network, so a
    subprocess compared with a marked test compiles the same way: tests/xla_env.py). For programs
    that run a few times on tiny inputs, compiling is nearly all of their cost: a
    forward-kinematics program compiles in 0.30 s instead of 0.53 s, and the marked modules take a
    fifth to a third less time on the suite's 2-core machine. Training and multi-device tests stay
    unmarked: they run their steps many times (2-3x slower unoptimized), and they share compiled
    programs, through the suite's compilation cache, with the in-process runs."""
    if request.node.get_closest_marker("quick_compile") is None:
        yield
        return
    import jax

    saved = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", saved)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for the whole run: the many tests that build the same tiny
    models (and every in-process train_and_evaluate, which jits afresh) compile each program once;
    the environment variables carry it to main.py subprocesses (the SIGKILL resume test's
    processes then load the programs its in-process reference run compiled). Under pytest-xdist
    the workers of one run share it (a partly written entry a worker reads is a cache miss with a
    warning, never an error: jax_raise_persistent_cache_errors is off)."""
    import jax
    from jax._src import compilation_cache as cc

    settings = {"jax_compilation_cache_dir": str(_shared_cache_dir(tmp_path_factory)),
                "jax_persistent_cache_min_compile_time_secs": 0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    saved = {k: getattr(jax.config, k) for k in settings}
    saved_env = {k.upper(): os.environ.get(k.upper()) for k in settings}
    for key, value in settings.items():
        jax.config.update(key, value)
        os.environ[key.upper()] = str(value)  # main.py subprocesses read the same cache
    cc.reset_cache()
    yield
    for key, value in saved.items():
        jax.config.update(key, value)
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    cc.reset_cache()


def _shared_cache_dir(tmp_path_factory):
    """The run's cache folder: beside the xdist workers' own temporary roots, or in this process's."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "jax_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """The tiny synthetic Human3.6M set (2 x 16 training frames at 160 px, converted to records),
    generated once per test run (tests.tiny_problem.tiny_config points at it)."""
    from tests.tiny_problem import tiny_config
    from kinpose_jax.data import setup

    root = str(tmp_path_factory.mktemp("synthetic"))
    setup.ensure_dataset(tiny_config(root), train=True, process_index=0, log=lambda *a: None)
    return root
