"""Training step: one device vs a 4-device mesh (simulated CPU devices) give the same update."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, ml_collections
    from jax.sharding import Mesh
    assert jax.device_count() == 4, jax.devices()
    from kinpose_jax import parallel, train
    from tests.tiny_problem import tiny_problem

    config, model, tx, schedule, batch = tiny_problem(HEAD)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
        state = train.create_state(config, model, tx, mesh)
        step = jax.jit(train.make_train_step(model, tx, config.loss, schedule),
                       in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
                       out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)))
        device_batch = parallel.global_batch(mesh, batch)
        assert len(device_batch["image"].sharding.device_set) == len(devices)
        grad_fn = jax.jit(jax.grad(train.make_loss_fn(model, config.loss), has_aux=True),
                          in_shardings=(parallel.replicated(mesh),) * 2 + (parallel.data_sharding(mesh),))
        grads = jax.device_get(grad_fn(state.params, state.batch_stats, device_batch)[0])
        losses, norms = [], []
        for _ in range(3):
            state, metrics = step(state, device_batch)
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
        results.append((losses, norms, grads, jax.device_get(state.batch_stats)))
    (l1, n1, p1, b1), (l4, n4, p4, b4) = results
    print("losses", l1, l4, "grad norms", n1, n4)
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    np.testing.assert_allclose(n1, n4, rtol=1e-4)
    assert l1[-1] < l1[0]
    # first-step gradients agree leaf by leaf, relative to each leaf's scale
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * max(1e-6, float(np.abs(a).max())))
    for a, b in zip(jax.tree.leaves(b1), jax.tree.leaves(b4)):  # synchronised BN statistics
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)
    print("OK")
""")


def run_with_devices(code: str, n: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def integral_run():
    return run_with_devices(SCRIPT.replace("HEAD", "'integral'"), 4)


@pytest.mark.parametrize("head", ["integral", "kinematic"])
def test_single_and_four_device_steps_agree(head, integral_run):
    proc = integral_run if head == "integral" else run_with_devices(SCRIPT.replace("HEAD", repr(head)), 4)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
