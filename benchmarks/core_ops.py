"""Core-op throughput: forward kinematics and soft-argmax, kinpose_jax vs PyTorch, same run.

    python benchmarks/core_ops.py [--out benchmarks/runs/core_ops.json] [--quick]

FK (the original's 18-joint model, poses/s) at batch 1, 256 and 65,536 for
  * kinpose_jax: ``jax.jit`` of the level-batched tree FK,
  * torch_vectorized: a batched PyTorch FK written for this benchmark (one op per joint, whole
    batch at a time),
  * torch_seed_loop: the original's *cost model* (bug (e): a Python loop over samples), batch <= 256.
    It is NOT the original's code: each sample runs ``tests/torch_reference.seed_fk`` — an
    intended-semantics reference built from explicit per-sample 4x4 matrix products — so it is
    a stand-in for the original's per-sample style, not a measurement of the original itself.
Soft-argmax at [32, 18*64, 64, 64] float32: kinpose_jax (jit) vs the PyTorch reshape/softmax/
marginal implementation, plus the achieved heatmap-read bandwidth against a numpy memory copy
measured in the same run. Copy bandwidth counts the bytes copied in one direction (array size /
time; a copy also writes as many bytes, so the memory traffic is about twice that). Prints a
table and writes JSON; never asserts anything about speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kinpose_jax import integral  # noqa: E402
from kinpose_jax.kinematics import forward_kinematics, presets  # noqa: E402
from tests import torch_reference as ref  # noqa: E402


def timeit(fn, min_time=0.5, max_reps=200, warmup=2):
    """Median seconds per call over repeated calls (after warm-up/compilation)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ------------------------------------------------------------------ a fast batched torch FK
def _rot3(axis: str, a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    rows = {
        "x": (o, z, z, z, c, -s, z, s, c),
        "y": (c, z, s, z, o, z, -s, z, c),
        "z": (c, -s, z, s, c, z, z, z, o),
    }[axis]
    return torch.stack(rows, -1).reshape(a.shape + (3, 3))


def torch_vectorized_seed_fk(motion: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Seed FK (intended semantics) with rotation matrices + translation vectors, batched."""
    s = scale[:, None]

    def zxy(i, j, k):
        return _rot3("z", motion[:, i]) @ _rot3("x", motion[:, j]) @ _rot3("y", motion[:, k])

    def move(rot, pos, x, y, zz):
        off = torch.stack([torch.full_like(scale, x), torch.full_like(scale, y), torch.full_like(scale, zz)], -1) * s
        return pos + (rot @ off[..., None])[..., 0]

    root_r = zxy(3, 4, 5)
    pelvis = motion[:, :3]
    spine_r = root_r @ zxy(8, 7, 6)
    torso = move(spine_r, pelvis, 0, 165.0, 0)
    neck = move(spine_r, torso, 0, 161.6, 0)
    head_r = spine_r @ zxy(25, 26, 27)
    nose = move(head_r, neck, 0, 73.46, -29.0)
    head = move(head_r, nose, 0, 66.91, 29.0)
    out = {}
    for side, sign, hip_i, knee_i, sh_i, el_i in (("l", 1, (9, 10, 11), 12, (17, 18, 19), 20),
                                                  ("r", -1, (13, 14, 15), 16, (21, 22, 23), 24)):
        hip = move(root_r, pelvis, sign * 84.7, 0, 0)
        thigh_r = root_r @ zxy(*hip_i)
        knee = move(thigh_r, hip, 0, -302.0, 0)
        ankle = move(thigh_r @ _rot3("x", motion[:, knee_i]), knee, 0, -300.0, 0)
        sh = move(spine_r, neck, sign * 117.0, -6.5, 0)
        arm_r = spine_r @ zxy(*sh_i)
        el = move(arm_r, sh, 0, -187.16, 0)
        wr = move(arm_r @ _rot3("x", motion[:, el_i]), el, 0, -160.6, 0)
        out[side] = (hip, knee, ankle, sh, el, wr)
    l, r = out["l"], out["r"]
    joints = torch.stack([pelvis, *r[:3], *l[:3], torso, neck, nose, head, *l[3:], *r[3:], 0.5 * (l[3] + r[3])], 1)
    return joints[..., [0, 2, 1]]


def _torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_fk(batches, loop_max, window=0.5):
    """Poses/s of kinpose_jax's FK (default JAX backend) vs the torch FKs (CUDA when available),
    each the median over at least ``window`` seconds of calls."""
    tree = presets.seed_h36m18()
    dev = _torch_device()

    @jax.jit
    def jax_fk(motion, scale):
        t, a = presets.seed_motion_to_fk_inputs(motion, tree)
        return forward_kinematics(tree, a, t, scale).joints

    rows = []
    for b in batches:
        rng = np.random.default_rng(b)
        motion = rng.uniform(-1, 1, size=(b, 29)).astype(np.float32)
        scale = rng.uniform(3e-4, 7e-4, size=b).astype(np.float32)
        jm, js = jnp.asarray(motion), jnp.asarray(scale)
        tm, ts = torch.from_numpy(motion).to(dev), torch.from_numpy(scale).to(dev)
        with torch.no_grad():
            check = np.abs(np.asarray(jax_fk(jm, js)) - torch_vectorized_seed_fk(tm, ts).cpu().numpy()).max()
            t_jax = timeit(lambda: jax_fk(jm, js).block_until_ready(), min_time=window)
            t_torch = timeit(lambda: (torch_vectorized_seed_fk(tm, ts), _torch_sync()), min_time=window)
            t_loop = (timeit(lambda: (ref.seed_fk_per_sample(tm, ts), _torch_sync()), max_reps=5, warmup=1)
                      if b <= loop_max else None)
        row = dict(batch=b, max_abs_diff=float(check), kinpose_jax_poses_per_s=b / t_jax,
                   torch_vectorized_poses_per_s=b / t_torch,
                   torch_seed_loop_poses_per_s=(b / t_loop) if t_loop else None)
        row["speedup_vs_torch_vectorized"] = t_torch / t_jax
        row["speedup_vs_torch_seed_loop"] = (t_loop / t_jax) if t_loop else None
        rows.append(row)
    return rows


def bench_softargmax(shape, num_joints, depth, window=2.0):
    """Soft-argmax milliseconds and bandwidths: medians over at least ``window`` seconds of calls
    (the copies over half as long)."""
    b, c, h, w = shape
    rng = np.random.default_rng(0)
    hm = rng.standard_normal(size=shape, dtype=np.float32)
    nbytes = hm.nbytes
    jhm = jnp.asarray(hm)
    jax_fn = jax.jit(lambda x: integral.softargmax_3d(x, num_joints, depth, layout="NCHW"))
    th = torch.from_numpy(hm).to(_torch_device())
    with torch.no_grad():
        diff = float(np.abs(np.asarray(jax_fn(jhm))
                            - ref.softargmax_3d_nchw(th, num_joints, depth).cpu().numpy()).max())
        t_jax = timeit(lambda: jax_fn(jhm).block_until_ready(), min_time=window, max_reps=20)
        t_torch = timeit(lambda: (ref.softargmax_3d_nchw(th, num_joints, depth), _torch_sync()),
                         min_time=window, max_reps=20)
    dst = np.empty_like(hm)
    t_copy = timeit(lambda: np.copyto(dst, hm), min_time=window / 2, max_reps=20)
    negate = jax.jit(jnp.negative)  # one read + one write of the array on JAX's device
    t_device_copy = timeit(lambda: negate(jhm).block_until_ready(), min_time=window / 2, max_reps=50)
    return dict(
        shape=list(shape), heatmap_bytes=nbytes, max_abs_diff=diff,
        kinpose_jax_ms=t_jax * 1e3, torch_ms=t_torch * 1e3, speedup_vs_torch=t_torch / t_jax,
        kinpose_jax_read_gb_per_s=nbytes / t_jax / 1e9, torch_read_gb_per_s=nbytes / t_torch / 1e9,
        numpy_copy_gb_per_s=nbytes / t_copy / 1e9,
        jax_device_negate_gb_per_s=nbytes / t_device_copy / 1e9,
        kinpose_jax_fraction_of_copy_bandwidth=(nbytes / t_jax) / (nbytes / t_copy),
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/runs/core_ops.json",
                        help="JSON output (benchmarks/results/ holds the published numbers: pass it to update them)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and timing windows a tenth as long (a smoke run, not a measurement)")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    batches = [1, 256, 4096] if args.quick else [1, 256, 65536]
    shape = (4, 18 * 64, 32, 32) if args.quick else (32, 18 * 64, 64, 64)
    # the per-sample loop is the CPU cost model of the original (on CUDA it would time kernel
    # launches); the quick form runs it at batch 1 only
    window = 0.1 if args.quick else 1.0  # timing windows, relative to a measurement's
    loop_max = 0 if torch.cuda.is_available() else (1 if args.quick else 256)
    fk = bench_fk(batches, loop_max=loop_max, window=0.5 * window)
    sa = bench_softargmax(shape, 18, 64, window=2.0 * window)
    result = dict(
        benchmark="core_ops", platform=platform.platform(), cpu_count=os.cpu_count(), jax=jax.__version__,
        jax_backend=jax.default_backend(), torch=torch.__version__, torch_device=str(_torch_device()),
        fk=fk, softargmax=sa,
        notes=dict(
            torch_seed_loop=("not the original's code: a Python loop over samples, each running an "
                             "intended-semantics per-sample 4x4 reference FK (tests/torch_reference.seed_fk)"),
            numpy_copy_gb_per_s="bytes copied in one direction (array size / copy time); read + write "
                                "traffic is about twice this",
            read_gb_per_s="heatmap bytes read once / kernel time",
        ),
        wall_seconds=time.perf_counter() - start,
    )
    print(f"\nForward kinematics, seed 18-joint model (poses/s; jax {jax.__version__} {jax.default_backend()}, "
          f"torch {torch.__version__}, {os.cpu_count()} cores)")
    print("  'seed loop' = per-sample Python loop over an intended-semantics 4x4 reference FK (the original's\n"
          "  per-sample style, not the original's code)")
    print(f"{'batch':>7} {'kinpose_jax':>13} {'torch vec':>12} {'seed loop':>11} {'x torch vec':>12} {'x seed loop':>12}")
    for r in fk:
        loop = f"{r['torch_seed_loop_poses_per_s']:11.0f}" if r["torch_seed_loop_poses_per_s"] else f"{'-':>11}"
        xl = f"{r['speedup_vs_torch_seed_loop']:12.1f}" if r["speedup_vs_torch_seed_loop"] else f"{'-':>12}"
        print(f"{r['batch']:>7} {r['kinpose_jax_poses_per_s']:13.0f} {r['torch_vectorized_poses_per_s']:12.0f} "
              f"{loop} {r['speedup_vs_torch_vectorized']:12.2f} {xl}")
    print(f"\nSoft-argmax {tuple(shape)} float32 ({sa['heatmap_bytes'] / 1e6:.0f} MB)")
    print(f"  kinpose_jax {sa['kinpose_jax_ms']:.1f} ms ({sa['kinpose_jax_read_gb_per_s']:.2f} GB/s read) | "
          f"torch {sa['torch_ms']:.1f} ms ({sa['torch_read_gb_per_s']:.2f} GB/s) | "
          f"ratio {sa['speedup_vs_torch']:.2f}x | numpy copy {sa['numpy_copy_gb_per_s']:.2f} GB/s "
          f"(bytes copied, one direction) -> "
          f"{100 * sa['kinpose_jax_fraction_of_copy_bandwidth']:.0f}% of copy bandwidth")
    print(f"max |jax - torch|: fk {max(r['max_abs_diff'] for r in fk):.2e}, softargmax {sa['max_abs_diff']:.2e}; "
          f"wall {result['wall_seconds']:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    assert all(math.isfinite(r["kinpose_jax_poses_per_s"]) for r in fk)
    return result


if __name__ == "__main__":
    main()
