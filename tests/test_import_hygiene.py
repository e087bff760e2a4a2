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


def test_metrics_and_tensorboard_events_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch when it can (seconds of start-up); the metric writer keeps it out,
    and torch still imports afterwards. The event file holds the scalar (TFRecord framing read here)."""
    code = (
        "import glob, struct, sys\n"
        "from kinpose_jax.training import reporting\n"
        f"w = reporting.MetricWriter({str(tmp_path)!r})\n"
        "w.write(3, 'train', {'loss': 0.25})\n"
        "w.close()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from tensorboardX.proto import event_pb2\n"
        f"data = open(glob.glob({str(tmp_path / 'tensorboard' / 'events.out.tfevents.*')!r})[0], 'rb').read()\n"
        "values, pos = [], 0\n"
        "while pos < len(data):\n"
        "    (n,) = struct.unpack('<Q', data[pos:pos + 8])\n"
        "    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])\n"
        "    values += [(event.step, v.tag, v.simple_value) for v in event.summary.value]\n"
        "    pos += 12 + n + 4\n"
        "assert values == [(3, 'train/loss', 0.25)], values\n"
        "import torch\n"
        "print(torch.zeros(2).sum().item())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "0.0"
