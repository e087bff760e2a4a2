"""Images/s of one training step (forward + backward + Adam) and of inference, JAX (jit) vs the
PyTorch reference network (tests/torch_pose_reference.py) in the same run: on CPU, or on a GPU
when there is one (JAX on its default backend; torch on CUDA when ``torch.cuda.is_available()``).

    python benchmarks/train_step.py                                   # ResNet-50 integral, 256x256, batch 8
    python benchmarks/train_step.py --backbone resnet18 --size 128 --batch 2 --steps 3   # quick check

Prints a table and writes JSON (``--out``, default benchmarks/runs/train_step.json), with each
framework's device. Both frameworks use the same architecture; ``--dtype bfloat16`` makes JAX
compute in bfloat16 (fp32 params) and, on CUDA only, runs torch under ``torch.autocast(bfloat16)``
(on CPU torch stays float32). After one compiling/warm-up call each, JAX and
torch steps are *interleaved* (jax, torch, jax, torch, ...) so that load from other processes
hits both alike; the table reports the median seconds per step (the JSON also has every time).
Set XLA flags through the XLA_FLAGS environment variable (recorded in the JSON).

CPU notes (2-core AVX-512 machine): XLA:CPU differentiates transposed convolutions, 1x1
convolutions and max-pooling slowly, so the model computes the deconvs as 4 phase convolutions
(kinpose_jax/models/deconv.py; ~15x faster gradient), 1x1 convs as 2-D matmuls (PointwiseConv;
a 4-D dot's kernel gradient transposes the activation very slowly) and, on CPU only, the stem
max-pool with a hand-written gradient (resnet.max_pool, ~4x faster). Stride-2 3x3/7x7 convs
computed as 4 stride-1 polyphase convs were not faster. --xla_cpu_use_onednn, --xla_cpu_use_xnnpack and
--xla_cpu_use_thunk_runtime=false gave no further gain.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import default  # noqa: E402
from kinpose_jax.losses import weighted_l1  # noqa: E402
from kinpose_jax.models import build_pose_net, parse_backbone  # noqa: E402


def timed(fn: Callable[[], None]) -> float:
    """Seconds for one call of ``fn`` (which must block until its result is ready)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def jax_steps(a, images, target, weight) -> dict[str, Callable[[], None]]:
    """Blocking callables ``train`` (one jitted step: fwd + bwd + Adam) and ``infer``."""
    model = build_pose_net(dict(default.get_config().model.to_dict(), backbone=a.backbone, head=a.head,
                                depth_bins=a.depth_bins, deconv_filters=a.deconv_filters, dtype=a.dtype))
    nhwc = images.transpose(0, 2, 3, 1)
    x = jnp.asarray(nhwc)
    tx = optax.adam(1e-3)

    @jax.jit  # the variables and the optimizer state, in one program
    def initial_state(key, image):
        variables = model.init(key, image, train=False)
        return variables["params"], variables["batch_stats"], tx.init(variables["params"])

    tgt, w = jnp.asarray(target), jnp.asarray(weight)

    def loss_fn(p, s, x):
        out, new = model.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
        return weighted_l1(out["joints"], tgt, w), new["batch_stats"]

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))  # params, stats, optimizer state are replaced
    def train_step(p, s, o, x):
        (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), s, o, loss

    infer_fn = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x, train=False)["joints"])
    state = list(initial_state(jax.random.key(0), nhwc[:1]))

    def train():
        state[0], state[1], state[2], loss = train_step(state[0], state[1], state[2], x)
        loss.block_until_ready()

    def infer():
        infer_fn(state[0], state[1], x).block_until_ready()

    return dict(train=train, infer=infer, device=str(jax.devices()[0].device_kind))


def torch_steps(a, images, target, weight) -> dict[str, Callable[[], None]]:
    """The same for the PyTorch reference network (eager; float32 params, on CUDA when available,
    then under bfloat16 autocast if ``--dtype bfloat16``)."""
    import contextlib

    import torch

    sys.path.insert(0, os.path.join(REPO, "tests"))
    import torch_pose_reference as ref

    from kinpose_jax.kinematics import get_tree

    torch.manual_seed(0)
    tree = get_tree("seed_h36m18") if a.head == "kinematic" else None
    net = ref.build(parse_backbone(a.backbone), a.head, depth_bins=a.depth_bins, filters=a.deconv_filters, tree=tree,
                    view="seed_h36m18")
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    net = net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, tgt, w = (torch.as_tensor(v).to(dev) for v in (images, target, weight))
    bf16 = cuda and a.dtype == "bfloat16"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def train():
        net.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            joints = net(x)["joints"]
        loss = ((joints.float() - tgt).abs() * w).sum() / x.shape[0]
        loss.backward()
        opt.step()
        loss.item()  # waits for the GPU (a no-op wait on CPU)

    def infer():
        net.eval()
        with torch.inference_mode(), autocast():
            net(x)["joints"].sum().item()

    device = torch.cuda.get_device_name(dev) if cuda else "cpu"
    return dict(train=train, infer=infer, device=device + (" (autocast bfloat16)" if bf16 else " (float32)"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--head", default="integral", choices=["integral", "direct", "kinematic"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--depth-bins", type=int, default=64)
    p.add_argument("--deconv-filters", type=int, default=default.get_config().model.deconv_filters,
                   help="integral head: filters of each transposed convolution (default: configs/default.py's)")
    p.add_argument("--dtype", default="float32",
                   help="JAX compute dtype; bfloat16 also runs torch under autocast when on CUDA")
    p.add_argument("--steps", type=int, default=5, help="timed steps per framework and measurement")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "runs", "train_step.json"),
                   help="JSON output (benchmarks/results/ holds the published numbers: pass it to update them)")
    a = p.parse_args(argv)

    rng = np.random.default_rng(0)
    images = rng.normal(size=(a.batch, 3, a.size, a.size)).astype(np.float32)
    target = rng.uniform(-0.4, 0.4, size=(a.batch, 18, 3)).astype(np.float32)
    weight = np.ones_like(target)
    fns = {"jax": jax_steps(a, images, target, weight)}
    if not a.skip_torch:
        fns["torch"] = torch_steps(a, images, target, weight)
    devices = {fw: d.pop("device") for fw, d in fns.items()}

    first = {f"{fw}_{kind}": timed(fn) for fw, d in fns.items() for kind, fn in d.items()}  # compile / warm up
    times: dict[str, list[float]] = {f"{fw}_{kind}": [] for fw, d in fns.items() for kind in d}
    for kind in ("train", "infer"):
        for _ in range(a.steps):
            for fw in fns:
                times[f"{fw}_{kind}"].append(timed(fns[fw][kind]))
    median = {k: statistics.median(v) for k, v in times.items()}

    print(f"\n{a.backbone} {a.head}, {a.size}x{a.size}, batch {a.batch}, {a.steps} interleaved steps each, "
          f"median (CPU: {os.cpu_count()} cores, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
    print("devices: " + ", ".join(f"{fw} {d}" for fw, d in devices.items()))
    print(f"{'':10s} {'JAX img/s':>10s} {'torch img/s':>12s} {'JAX/torch':>10s}")
    rows = []
    for kind in ("train", "infer"):
        j = a.batch / median[f"jax_{kind}"]
        t = a.batch / median[f"torch_{kind}"] if f"torch_{kind}" in median else float("nan")
        rows.append(dict(kind=kind, jax_images_per_s=j, torch_images_per_s=t, ratio_jax_over_torch=j / t))
        print(f"{kind:10s} {j:10.2f} {t:12.2f} {j / t:10.2f}")
    print(f"(first JAX calls incl. compilation: train {first['jax_train']:.1f}s, infer {first['jax_infer']:.1f}s)")
    report = dict(
        config=vars(a), results=rows, seconds_per_step=times, first_call_seconds=first,
        devices=devices, jax_version=jax.__version__, backend=jax.default_backend(), cpu_count=os.cpu_count(),
        machine=platform.machine(), xla_flags=os.environ.get("XLA_FLAGS", ""),
        load_average=os.getloadavg(), timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {a.out}")
    return report


if __name__ == "__main__":
    main()
