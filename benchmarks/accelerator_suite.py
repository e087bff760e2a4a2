"""One command for the accelerator figures, in one process, written to one JSON.

    python benchmarks/accelerator_suite.py            # full sizes, for a GPU/TPU host (~8 min on one H200)
    python benchmarks/accelerator_suite.py --small    # CPU smoke form (tiny sizes, float32; tests run it)

Sections, in this order (each one's failure is recorded and the suite goes on; with --budget-s the
sections that would start after the budget are recorded as skipped):

1. train step + inference, images/s, for each head (integral, direct, kinematic) and compute dtype
   (bfloat16, float32): kinpose_jax (jit, default JAX backend) vs the PyTorch reference network on
   the same machine (CUDA when torch sees a GPU, under bfloat16 autocast for --dtype bfloat16; else
   CPU float32) — ``benchmarks/train_step.py``;
2. input pipeline (``benchmarks/input_pipeline.py``): grain over full-image and over patch-sized
   records vs an original-style torch DataLoader with the same number of worker processes; images/s per
   core (cores = worker processes, at most the CPU count);
3. core ops (``benchmarks/core_ops.py``): forward kinematics (poses/s) and 3D soft-argmax at large
   batch, JAX vs torch on the same device, with the device copy bandwidth measured in the same run.

Every figure is a ratio against a baseline measured in the same run. Nothing is asserted about
speed. Output: a table on stdout and ``--out`` (default ``benchmarks/runs/accelerator_suite_<backend>.json``,
untracked; the published runs are under ``benchmarks/results/``), rewritten after every section; the
per-section JSONs go to a temporary folder and are embedded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and torch share the GPU
# jax 0.11.2 (CUDA 13): XLA's Triton GEMM fusion aborts compiling the bfloat16 integral model
# (triton_tiling_propagation check failure); cuBLAS GEMMs compile it. Remove the flag to retry.
if "xla_gpu_enable_triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()

import jax  # noqa: E402

HEADS = ("integral", "direct", "kinematic")
DTYPES = ("bfloat16", "float32")


def _train_step_args(head: str, dtype: str, small: bool, batch: int, out: str) -> list[str]:
    if small:
        return ["--backbone", "resnet10", "--head", head, "--dtype", dtype, "--size", "64", "--batch", "2",
                "--depth-bins", "8", "--deconv-filters", "32", "--steps", "1", "--out", out]
    return ["--backbone", "resnet50", "--head", head, "--dtype", dtype, "--size", "256", "--batch", str(batch),
            "--steps", "10", "--out", out]


def _input_args(small: bool, workers: int, data: str, out: str) -> list[str]:
    if small:
        return ["--quick", "--workers", "0", "--data", data, "--out", out]
    return ["--workers", str(workers), "--batches", "20", "--rounds", "2", "--data", data, "--out", out]


def run_sections(a, on_section=None) -> dict:
    """Runs every section; returns ``{name: result dict | {"error": ...} | {"skipped": ...}}``."""
    import core_ops
    import input_pipeline
    import train_step

    tmp = tempfile.mkdtemp(prefix="kinpose_suite_")
    dtypes = DTYPES if a.dtypes == "both" else (a.dtypes,)
    train = [(f"train_step/{head}/{dtype}",
              lambda h=head, d=dtype: train_step.main(
                  _train_step_args(h, d, a.small, a.batch, os.path.join(tmp, f"train_{h}_{d}.json"))))
             for dtype in dtypes for head in HEADS]
    workers = a.workers if a.workers >= 0 else max(1, min(8, (os.cpu_count() or 2) // 2))
    others = [
        ("input_pipeline", lambda: input_pipeline.main(
            _input_args(a.small, workers, os.path.join(tempfile.gettempdir(), "kinpose_bench_data"),
                        os.path.join(tmp, "input.json")))),
        ("core_ops", lambda: core_ops.main(
            (["--quick"] if a.small else []) + ["--out", os.path.join(tmp, "core_ops.json")])),
    ]
    # the first train step, then the other sections, then the remaining train steps: a budget that
    # runs out still leaves one figure of each kind
    sections = train[:1] + others + train[1:]

    results, start = {}, time.perf_counter()
    for name, fn in sections:
        if a.only and not any(name.startswith(p) for p in a.only.split(",")):
            continue
        elapsed = time.perf_counter() - start
        if a.budget_s and elapsed > a.budget_s:
            results[name] = {"skipped": f"time budget of {a.budget_s} s spent ({elapsed:.0f} s)"}
            continue
        t0 = time.perf_counter()
        print(f"\n=== {name}", flush=True)
        try:
            results[name] = fn()
        except Exception as err:  # noqa: BLE001 - a failing section is recorded, the suite goes on
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        results[name]["section_seconds"] = time.perf_counter() - t0
        if on_section:
            on_section(results)
    return results


def summary_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(what, kinpose_jax, baseline, ratio) rows for the printed table."""
    rows = []
    for name, r in results.items():
        if "error" in r or "skipped" in r:
            rows.append((name, "-", "-", r.get("error", r.get("skipped"))[:60]))
        elif name.startswith("train_step/"):
            for row in r["results"]:
                rows.append((f"{name} {row['kind']} img/s", f"{row['jax_images_per_s']:.1f}",
                             f"{row['torch_images_per_s']:.1f}", f"{row['ratio_jax_over_torch']:.2f}x"))
        elif name == "input_pipeline":
            t = r["torch_seed_style"]["images_per_s_per_core"]
            for key, layout in (("grain_full", "full-image"), ("grain_crop", "patch-sized")):
                g = r[key]["images_per_s_per_core"]
                rows.append((f"input pipeline img/s per core, {layout} records ({r['cores_used']} cores)", f"{g:.1f}",
                             f"{t:.1f}", f"{g / t:.2f}x"))
        elif name == "core_ops":
            for f in r["fk"]:
                rows.append((f"FK poses/s, batch {f['batch']}", f"{f['kinpose_jax_poses_per_s']:.3g}",
                             f"{f['torch_vectorized_poses_per_s']:.3g}", f"{f['speedup_vs_torch_vectorized']:.2f}x"))
            s = r["softargmax"]
            rows.append((f"soft-argmax {tuple(s['shape'])} ms", f"{s['kinpose_jax_ms']:.2f}", f"{s['torch_ms']:.2f}",
                         f"{s['speedup_vs_torch']:.2f}x"))
            rows.append(("soft-argmax read GB/s vs JAX device negate GB/s", f"{s['kinpose_jax_read_gb_per_s']:.1f}",
                         f"{s['jax_device_negate_gb_per_s']:.1f}",
                         f"{s['kinpose_jax_read_gb_per_s'] / s['jax_device_negate_gb_per_s']:.2f}"))
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny sizes: a CPU smoke run of every section")
    p.add_argument("--batch", type=int, default=64, help="train/inference batch (full form)")
    p.add_argument("--dtypes", choices=("both",) + DTYPES,
                   help="compute dtypes of the train steps (default: both; float32 with --small)")
    p.add_argument("--workers", type=int, default=-1,
                   help="input pipeline worker processes (-1: half the CPUs, at most 8; small form: 0)")
    p.add_argument("--only", default="", help="comma-separated section name prefixes to run (default: all)")
    p.add_argument("--budget-s", type=float, default=0.0, help="start no section after this many seconds (0: no limit)")
    p.add_argument("--out", default="", help="JSON path (default benchmarks/results/accelerator_suite_<backend>.json)")
    a = p.parse_args(argv)
    a.dtypes = a.dtypes or ("float32" if a.small else "both")
    start = time.perf_counter()
    out = a.out or os.path.join(REPO, "benchmarks", "runs", f"accelerator_suite_{jax.default_backend()}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    def report_of(results: dict) -> dict:
        return dict(
            benchmark="accelerator_suite", small=a.small, backend=jax.default_backend(),
            jax_devices=[d.device_kind for d in jax.devices()], jax_version=jax.__version__,
            cpu_count=os.cpu_count(), machine=platform.machine(), python=platform.python_version(),
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"), wall_seconds=time.perf_counter() - start,
            sections=results)

    def write(results: dict) -> dict:  # after every section, so an interrupted run keeps what it measured
        report = report_of(results)
        with open(out, "w") as f:
            json.dump(report, f, indent=1, default=str)
        return report

    report = write(run_sections(a, on_section=write))
    rows = summary_rows(report["sections"])
    print(f"\naccelerator suite on {report['backend']} ({', '.join(sorted(set(report['jax_devices'])))}), "
          f"{report['wall_seconds']:.0f} s; baseline = PyTorch in the same run")
    print(f"{'what':62s} {'kinpose_jax':>12s} {'baseline':>12s} {'ratio':>8s}")
    for what, j, t, r in rows:
        print(f"{what:62s} {j:>12s} {t:>12s} {r:>8s}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
