"""Test-wide settings: deterministic CPU JAX; torch limited to the machine's cores."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
