"""Weighted L1/L2 against PyTorch, and the padding mask."""

import jax
import numpy as np
import pytest
import torch

from kinpose_jax import losses
from tests import torch_reference as ref


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_weighted_losses_and_gradients_match_torch(name):
    rng = np.random.default_rng(0)
    pred, target = (rng.normal(size=(6, 18, 3)).astype(np.float32) for _ in range(2))
    weight = (rng.uniform(size=(6, 18, 3)) > 0.3).astype(np.float32)
    fn = losses.get_loss(name)
    torch_fn = {"l1": ref.weighted_l1, "l2": ref.weighted_l2}[name]
    tp = torch.tensor(pred, requires_grad=True)
    expected = torch_fn(tp, torch.from_numpy(target), torch.from_numpy(weight))
    expected.backward()
    np.testing.assert_allclose(float(fn(pred, target, weight)), expected.item(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(fn)(pred, target, weight)), ref.to_numpy(tp.grad), atol=1e-6)


def test_sample_mask_ignores_padding_and_averages_over_real_samples():
    rng = np.random.default_rng(1)
    pred, target = (rng.normal(size=(4, 18, 3)).astype(np.float32) for _ in range(2))
    weight = np.ones((4, 18, 3), np.float32)
    mask = np.array([1, 1, 1, 0], np.float32)
    padded_garbage = pred.copy()
    padded_garbage[3] = 1e6
    real = float(losses.weighted_l1(pred[:3], target[:3], weight[:3]))
    assert float(losses.weighted_l1(padded_garbage, target, weight, mask)) == pytest.approx(real, rel=1e-6)


def test_hand_worked_l1():
    pred = np.zeros((2, 1, 3), np.float32)
    target = np.array([[[1.0, -2.0, 3.0]], [[0.5, 0.0, 0.0]]], np.float32)
    weight = np.array([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]], np.float32)
    assert float(losses.weighted_l1(pred, target, weight)) == pytest.approx((1 + 2 + 0.5) / 2)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("huber")
