"""Torch-exact stride-2 transposed convolution: ``lax.conv_transpose`` or ordinary convolutions.

``ConvTranspose2d(k, stride=2, padding=p, output_padding=op)`` doubles H and W for the supported
(k, p, op) = (4, 1, 0), (3, 1, 1), (2, 0, 0). Every output pixel ``o = 2m + a`` (phase ``a`` in
{0, 1} per axis) receives input pixels ``i = m + d`` through kernel taps ``t = a + p - 2d``. So the
transposed conv splits into 4 small stride-1 convolutions (one per output phase (a_y, a_x)) whose
results are interleaved. Same FLOPs as the direct form, and XLA:CPU runs the gradient of plain
convs far faster than that of a transposed (lhs-dilated) conv — about 10x for ResNet-50's first
deconv at 256x256 input. That phase form is a CPU fast path (``conv_impl``, see
:mod:`kinpose_jax.models.resnet`); GPU/TPU run the standard ``lax.conv_transpose``.

The parameter is stored like Flax's ``nn.ConvTranspose(transpose_kernel=True)``: ``kernel`` [k, k,
out, in] = torch weight [in, out, k, k] permuted (2, 3, 1, 0), so either implementation can use
the other's parameters (tests check both against torch).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kinpose_jax.models.resnet import use_cpu_fast_paths

#: kernel size -> (torch padding, torch output_padding) so that each deconv doubles H and W.
DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


def torch_deconv_padding(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit padding for ``lax.conv_transpose`` / Flax ``nn.ConvTranspose(transpose_kernel=True)``
    that reproduces torch's ``ConvTranspose2d`` (stride 2, padding p, output_padding op):
    ``(k-1-p, k-1-p+op)`` on the dilated input."""
    if kernel not in DECONV_PADDING:
        raise ValueError(f"unsupported deconv kernel {kernel}; choose one of {sorted(DECONV_PADDING)}")
    p, op = DECONV_PADDING[kernel]
    lo, hi = kernel - 1 - p, kernel - 1 - p + op
    return ((lo, hi), (lo, hi))


def phase_taps(kernel: int, padding: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """For output phases a = 0, 1 along one axis: ((d, t), ...) sorted by input offset d, meaning
    ``out[2m + a] += x[m + d] * w[t]``."""
    out = []
    for a in (0, 1):
        taps = [((a + padding - t) // 2, t) for t in range(kernel) if (a + padding - t) % 2 == 0]
        out.append(tuple(sorted(taps)))
    return tuple(out)


def conv_transpose_stride2(x: jax.Array, kernel: jax.Array, kernel_size: int) -> jax.Array:
    """x [B, H, W, C_in], kernel [k, k, C_out, C_in] (see module doc) -> [B, 2H, 2W, C_out]."""
    p, _ = DECONV_PADDING[kernel_size]
    taps = phase_taps(kernel_size, p)
    rows = []
    for ay in (0, 1):
        cols = []
        for ax in (0, 1):
            ty, tx = taps[ay], taps[ax]
            dy, dx = [d for d, _ in ty], [d for d, _ in tx]
            if dy != list(range(dy[0], dy[-1] + 1)) or dx != list(range(dx[0], dx[-1] + 1)) or dy[0] > 0 or dx[0] > 0 \
                    or dy[-1] < 0 or dx[-1] < 0:
                raise NotImplementedError(f"deconv kernel {kernel_size} needs a non-contiguous phase window")
            k = kernel[jnp.asarray([t for _, t in ty])][:, jnp.asarray([t for _, t in tx])]  # [wy, wx, out, in]
            k = jnp.transpose(k, (0, 1, 3, 2))  # HWIO
            cols.append(jax.lax.conv_general_dilated(
                x, k, window_strides=(1, 1), padding=((-dy[0], dy[-1]), (-dx[0], dx[-1])),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            ))
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2(ax), C]
    y = jnp.stack(rows, axis=2)  # [B, H, 2(ay), W, 2(ax), C]
    b, h, _, w, _, c = y.shape
    return y.reshape(b, 2 * h, 2 * w, c)


class TorchConvTranspose(nn.Module):
    """Stride-2, bias-free transposed conv equal to torch's ``ConvTranspose2d(k, 2, p, op)``.

    x [B, H, W, C_in] -> [B, 2H, 2W, features]; param ``kernel`` [k, k, features, C_in] (fp32),
    computed in ``dtype``: as phase convolutions (:func:`conv_transpose_stride2`) with the CPU fast
    paths (``conv_impl``), else as ``lax.conv_transpose``.
    """

    features: int
    kernel_size: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(stddev=0.001)
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernel_size not in DECONV_PADDING:
            raise ValueError(f"unsupported deconv kernel {self.kernel_size}; choose one of {sorted(DECONV_PADDING)}")
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, self.features, x.shape[-1]), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if use_cpu_fast_paths(self.conv_impl):
            return conv_transpose_stride2(x, kernel, k)
        return jax.lax.conv_transpose(x, kernel, (2, 2), torch_deconv_padding(k),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
