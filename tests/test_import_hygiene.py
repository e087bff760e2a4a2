"""kinpose_jax imports without PyTorch or TensorFlow (they belong to tests, benchmarks, data_prep)."""

import os
import pkgutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_library_module_imports_with_torch_and_tensorflow_blocked():
    import kinpose_jax

    names = sorted(m.name for m in pkgutil.walk_packages(kinpose_jax.__path__, "kinpose_jax."))
    assert "kinpose_jax.training.train" in names and "kinpose_jax.kinematics.fk" in names
    code = (
        "import sys, importlib\n"
        "for blocked in ('torch', 'tensorflow', 'tensorflow_datasets', 'torchvision'):\n"
        "    sys.modules[blocked] = None\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print('imported', len(sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
