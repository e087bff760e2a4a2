"""Data parallelism over every device of every process: a 1-D ``Mesh`` with ``NamedSharding``.

Why jit-over-a-mesh and not ``pmap``: the installed JAX (0.10) documents ``pmap`` as superseded by
``jax.jit`` with shardings / ``shard_map``. With the batch sharded along the mesh axis ``"data"``
and the parameters replicated, ``jit`` partitions the step automatically: gradients of the mean
loss are all-reduced by XLA, and BatchNorm's batch mean/variance are computed over the *global*
batch (synchronised BN — statistics averaged across devices, unlike the original's per-GPU BN;
``config.model.bn_sync='per_device'`` gives the original's behaviour, see ``train.make_grad_fn``).
Multi-host runs call :func:`initialize_distributed` first (``jax.distributed``), then every
process feeds its local slice of the batch (:func:`global_batch`).
"""

from __future__ import annotations

import collections
import json
import os
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


DATA_AXIS = "data"



def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
    """Calls ``jax.distributed.initialize`` when asked (arguments) or when the standard
    environment variables are set (``JAX_COORDINATOR_ADDRESS``, cluster auto-detection via
    ``KINPOSE_DISTRIBUTED=1``). Returns True when running multi-process."""
    if coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("KINPOSE_DISTRIBUTED") == "1":
        _use_cpu_collectives()
    if coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("KINPOSE_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False


def _use_cpu_collectives() -> None:
    """Cross-process collectives on CPU need an implementation (gloo); GPUs/TPUs have their own."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms == "cpu" or (not platforms and not _has_accelerator_plugin()):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _has_accelerator_plugin() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))


def make_mesh() -> Mesh:
    """1-D mesh over all devices of all processes, axis ``"data"`` (``AxisType.Auto``: jit
    propagates the shardings).

    ``jax.make_mesh`` orders the devices for the interconnect (a ring on TPUs); the order is then
    made process-major (:func:`process_major`), so that process ``p`` holds one contiguous block
    of every global batch, the rows :func:`global_batch` fills from its local batch."""
    mesh = jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))
    return Mesh(process_major(mesh.devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def process_major(devices: np.ndarray) -> np.ndarray:
    """``devices`` (1-D) stably sorted by ``process_index``: the devices of process 0 first, each
    process's devices in their given (topology) order."""
    order = sorted(range(len(devices)), key=lambda i: devices[i].process_index)
    return np.asarray(devices)[order]


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
    """Turns this process's numpy batch (leading dim = per-process batch) into global arrays
    sharded over the mesh's batch axis."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


class DevicePrefetch:
    """Iterator of device batches ``put(next(host_iterator))`` kept ``size`` batches ahead: batch
    k+1 is copied to the devices (asynchronously) while step k runs.

    Checkpointable like the host iterator it wraps (grain's ``PyGrainCheckpointHandler`` takes it):
    ``get_state()`` is the host iterator's state after the batches *returned* so far, not after the
    prefetched ones, so a restored run continues with the first batch it has not consumed;
    ``set_state()`` drops the prefetched batches. The state is JSON bytes of the host state.
    """

    def __init__(self, host_iterator, put: Callable[[dict], dict], size: int = 2):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._it, self._put, self._size = host_iterator, put, size
        self._queue: collections.deque = collections.deque()  # (host state after the batch, device batch)
        self._state = json.dumps(host_iterator.get_state(), indent=4).encode()

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        while len(self._queue) < self._size:
            try:
                batch = next(self._it)
            except StopIteration:
                break
            self._queue.append((json.dumps(self._it.get_state(), indent=4).encode(), self._put(batch)))
        if not self._queue:
            raise StopIteration
        self._state, device_batch = self._queue.popleft()
        return device_batch

    def get_state(self) -> bytes:
        return self._state

    def set_state(self, state: bytes) -> None:
        self._queue.clear()
        self._it.set_state(json.loads(state))
        self._state = json.dumps(self._it.get_state(), indent=4).encode()

    def start_prefetch(self) -> None:
        """Called by grain's checkpoint handler after a restore; prefetching starts at ``next``."""

    def close(self) -> None:
        self._queue.clear()
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def local_rows(mesh: Mesh, arrays):
    """The inverse of :func:`global_batch`: this process's rows of batch-sharded global arrays,
    as numpy (a pytree in, the same pytree out). Single-process: the whole arrays."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(arrays))
    from jax.experimental import multihost_utils

    local = multihost_utils.global_array_to_host_local_array(arrays, mesh, PartitionSpec(DATA_AXIS))
    return jax.tree.map(np.asarray, local)


def check_batch_divisible(global_batch_size: int) -> None:
    """A global batch must split evenly over devices and processes."""
    n = jax.device_count()
    if global_batch_size % n:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the {n} devices")
    if global_batch_size % jax.process_count():
        raise ValueError(f"global batch size {global_batch_size} is not divisible by {jax.process_count()} processes")
