"""The accelerator benchmark suite's CPU smoke form (the command line, as a user runs it) runs every
section end to end at tiny sizes and writes one JSON with a kinpose_jax figure and a same-run
PyTorch baseline for each. A subprocess: the suite sets process-wide state (XLA flags, thread counts).
It runs at LLVM optimization level 0: a smoke run's speed means nothing, and its programs then
compile faster than they would run slower (36 -> 29 s here)."""

import json
import math
import os
import subprocess
import sys

from tests.xla_env import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = ("integral", "direct", "kinematic")


def test_small_suite_runs_every_section(tmp_path):
    out = str(tmp_path / "suite.json")
    proc = subprocess.run([sys.executable, "benchmarks/accelerator_suite.py", "--small", "--out", out], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=subprocess_env(opt_level=0))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    sections = json.load(open(out))["sections"]
    assert set(sections) == {*(f"train_step/{h}/float32" for h in HEADS), "input_pipeline", "core_ops"}
    for name, result in sections.items():
        assert "error" not in result and "skipped" not in result, (name, result)
    for head in HEADS:
        for row in sections[f"train_step/{head}/float32"]["results"]:
            assert row["jax_images_per_s"] > 0 and row["torch_images_per_s"] > 0
            assert math.isfinite(row["ratio_jax_over_torch"])
    assert sections["input_pipeline"]["grain_full"]["images_per_s"] > 0
    assert sections["input_pipeline"]["grain_crop"]["images_per_s"] > 0
    assert max(r["max_abs_diff"] for r in sections["core_ops"]["fk"]) < 1e-3  # JAX and torch FK agree
    assert sections["core_ops"]["softargmax"]["max_abs_diff"] < 1e-5
    assert "baseline = PyTorch in the same run" in proc.stdout
    assert "train_step/direct/float32 train img/s" in proc.stdout
