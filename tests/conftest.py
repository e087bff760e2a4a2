"""Test-wide settings: CPU JAX with 4 simulated devices (set before JAX starts, so data-parallel
tests run in-process); torch limited to the machine's cores."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
SIMULATED_DEVICES = 4
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={SIMULATED_DEVICES}").strip()

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
