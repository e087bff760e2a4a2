"""ResNet-10/18/34/50/101/152 backbone (torchvision layout: v1.5, stride in the 3x3 conv), NHWC.

ResNet-10 (one basic block per stage, the shapes of ResNet-18 at half its depth) is not a
torchvision model and has no ImageNet weights: it is the smallest trunk, for smoke runs and tests
of everything around the network (it halves a CPU training step and cuts its compile time).

Module names follow torchvision's parameter names so a torch ``state_dict`` maps onto the Flax
tree mechanically (see :mod:`kinpose_jax.convert_torch`): ``conv1``, ``bn1``, ``layer{i}_{j}`` with
``conv1..3``, ``bn1..3`` and ``downsample_0`` (1x1 conv) / ``downsample_1`` (BN).

All paddings are explicit and symmetric like torch's (``'SAME'`` would pad stride-2 convs
asymmetrically and break parity with torch).

CPU fast paths, chosen per module by ``conv_impl`` (:data:`CONV_IMPLS`): ``'cpu_fast'`` uses them,
``'standard'`` uses the native ops, ``'auto'`` (default) uses them when ``jax.default_backend() ==
"cpu"`` (decided at trace time; :data:`CPU_FAST_PATHS` overrides ``'auto'``), so GPU/TPU get the
native ops, which their compilers handle best. The fast paths: 1x1 convolutions as 2-D matmuls
(:class:`PointwiseConv`), the stem's max-pool with a hand-written gradient (:func:`max_pool`;
XLA:CPU's ``select_and_scatter`` is about 4x slower) and, in the integral head, transposed
convolutions as phase convolutions (:mod:`kinpose_jax.models.deconv`). Parameters and results are
the same either way (tests/test_resnet_fast_paths.py, tests/test_conv_impl.py).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kinpose_jax.registry import CONV_IMPLS

#: depth -> (block type, blocks per stage)
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

#: torchvision's conv init: kaiming normal, fan_out, ReLU gain.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

#: torch's BatchNorm momentum 0.1 (weight of the new batch) is Flax's momentum 0.9 (weight of the old value).
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPS = 1e-5

#: Use the CPU-friendly formulations under ``conv_impl='auto'`` (see module doc): ``None`` = when
#: the default backend is CPU.
CPU_FAST_PATHS: bool | None = None



def use_cpu_fast_paths(conv_impl: str = "auto") -> bool:
    """Whether to trace the CPU fast paths now: ``'cpu_fast'`` -> True, ``'standard'`` -> False,
    ``'auto'`` -> :data:`CPU_FAST_PATHS`, or when it is None, whether the backend is CPU."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; choose one of {CONV_IMPLS}")
    if conv_impl != "auto":
        return conv_impl == "cpu_fast"
    return jax.default_backend() == "cpu" if CPU_FAST_PATHS is None else bool(CPU_FAST_PATHS)


def _pool_taps(xp: jax.Array, k: int, s: int, ho: int, wo: int):
    """(i, j, xp[:, i::s, j::s][:ho, :wo]) for the k*k window taps in row-major order."""
    b, _, _, c = xp.shape
    for i in range(k):
        for j in range(k):
            yield i, j, jax.lax.slice(xp, (0, i, j, 0), (b, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c), (1, s, s, 1))


def _max_pool_value(x: jax.Array, k: int, s: int, p: int) -> jax.Array:
    return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, k, k, 1), (1, s, s, 1),
                                 ((0, 0), (p, p), (p, p), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """k x k max-pool, stride s, symmetric padding p (padded with -inf), x [B, H, W, C] ->
    [B, (H+2p-k)//s+1, (W+2p-k)//s+1, C]; equals ``nn.max_pool`` / torch's ``MaxPool2d`` in value
    and gradient (the gradient goes to the first maximum of each window in row-major order, like
    XLA's select_and_scatter and torch). The gradient is k*k elementwise selects scattered back
    by strided (interior) padding, which XLA:CPU fuses into one loop: about 4x faster than its
    select_and_scatter for ResNet's stem pool."""
    return _max_pool_value(x, kernel, stride, padding)


def _max_pool_fwd(x, kernel, stride, padding):
    return _max_pool_value(x, kernel, stride, padding), x


def _max_pool_bwd(kernel, stride, padding, x, g):
    k, s, p = kernel, stride, padding
    _, h, w, _ = x.shape
    ho, wo = g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
    hp, wp = h + 2 * p, w + 2 * p
    taps = list(_pool_taps(xp, k, s, ho, wo))
    # Each window's first maximum in row-major order, found among the taps themselves (strict >),
    # so every window passes its gradient to exactly one input. Comparing taps with the forward's
    # saved maximum instead loses gradients under jit: XLA may compute the pool's input (e.g. the
    # stem's BatchNorm + ReLU) once for the forward and again, rounded differently, for this pass.
    best, first = taps[0][2], jnp.zeros(g.shape, jnp.int32)
    for t, (_, _, tap) in enumerate(taps[1:], start=1):
        better = tap > best
        best = jnp.where(better, tap, best)
        first = jnp.where(better, t, first)
    zero = jnp.zeros((), g.dtype)
    dxp = jnp.zeros(xp.shape, g.dtype)
    for t, (i, j, _) in enumerate(taps):
        dxp = dxp + jax.lax.pad(jnp.where(first == t, g, zero), zero, (
            (0, 0, 0), (i, hp - i - s * (ho - 1) - 1, s - 1), (j, wp - j - s * (wo - 1) - 1, s - 1), (0, 0, 0)))
    return (dxp[:, p:p + h, p:p + w, :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def resnet_out_channels(depth: int) -> int:
    """Channels of the last feature map (512 for basic blocks, 2048 for bottlenecks)."""
    block, _ = _spec(depth)
    return 512 if block == "basic" else 2048


def _spec(depth: int) -> tuple[str, tuple[int, int, int, int]]:
    if depth not in RESNET_SPECS:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_SPECS)}")
    return RESNET_SPECS[depth]


class PointwiseConv(nn.Module):
    """1x1 convolution, same parameters as ``nn.Conv(features, (1, 1))``: ``kernel`` [1, 1, C_in,
    features] and optional ``bias``. x [B, H, W, C_in] -> [B, ceil(H/s), ceil(W/s), features].

    With the CPU fast paths (``conv_impl``, see module doc) it is a 2-D matmul (XLA:CPU
    differentiates a dot about 2x faster than a 1x1 conv, and a 2-D dot another 1.5-3x faster than
    a 4-D one); otherwise ``lax.conv_general_dilated``, like ``nn.Conv``. Operands are cast to
    ``dtype``; the result has the wider of ``dtype`` and ``out_dtype`` (None = ``dtype``),
    accumulated in it: bf16 operands with ``out_dtype=float32`` give float32 outputs that were
    never rounded to bf16.
    """

    features: int
    strides: tuple[int, int] = (1, 1)
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    conv_impl: str = "auto"
    out_dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        out_dtype = self.dtype if self.out_dtype is None else jnp.promote_types(self.dtype, self.out_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if use_cpu_fast_paths(self.conv_impl):
            sy, sx = self.strides
            if (sy, sx) != (1, 1):
                x = x[:, ::sy, ::sx, :]
            # A 2-D [N, C_in] @ [C_in, C_out] dot: XLA:CPU then transposes a 2-D activation for the
            # kernel gradient instead of a 4-D one, which makes fwd+bwd 1.5-3x faster at 64x64.
            b, h, w, c = x.shape
            y = jnp.dot(x.reshape(b * h * w, c), kernel[0, 0], preferred_element_type=out_dtype)
            y = y.reshape(b, h, w, self.features)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, tuple(self.strides), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             preferred_element_type=out_dtype)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(out_dtype)
        return y


def make_conv(dtype: Any, conv_impl: str = "auto"):
    """Bias-free conv with torchvision init, fp32 params, compute in ``dtype``; 1x1 kernels
    (padding 'VALID') run as :class:`PointwiseConv` (identical parameters and results)."""

    def conv(features, kernel_size, strides=(1, 1), padding="VALID", name=None):
        if tuple(kernel_size) == (1, 1) and padding == "VALID":
            return PointwiseConv(features, tuple(strides), False, dtype, jnp.float32, conv_init, conv_impl=conv_impl,
                                 name=name)
        return nn.Conv(features, kernel_size, strides, padding=padding, use_bias=False, dtype=dtype,
                       param_dtype=jnp.float32, kernel_init=conv_init, name=name)

    return conv


def make_norm(train: bool, dtype: Any, axis_name: str | None):
    """BatchNorm matching torch (momentum 0.1, eps 1e-5); fp32 params and statistics.

    ``axis_name``: when set, batch statistics are averaged over that pmap/shard_map axis
    (cross-device "sync BN"); leave ``None`` outside such a mapped context.
    """
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=TORCH_BN_MOMENTUM,
        epsilon=TORCH_BN_EPS,
        dtype=dtype,
        param_dtype=jnp.float32,
        axis_name=axis_name if train else None,
    )


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    p = k // 2
    return ((p, p), (p, p))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). x [B,H,W,C_in] -> [B,H/stride,W/stride,features]."""

    features: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv, norm = make_conv(self.dtype, self.conv_impl), make_norm(train, self.dtype, self.bn_axis_name)
        s = (self.stride, self.stride)
        y = conv(self.features, (3, 3), s, padding=_pad(3), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.downsample:
            x = conv(self.features, (1, 1), s, padding="VALID", name="downsample_0")(x)
            x = norm(name="downsample_1")(x)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (x4 channels) (ResNet-50/101/152).

    x [B,H,W,C_in] -> [B,H/stride,W/stride,4*features].
    """

    features: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv, norm = make_conv(self.dtype, self.conv_impl), make_norm(train, self.dtype, self.bn_axis_name)
        s = (self.stride, self.stride)
        y = conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), s, padding=_pad(3), name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = conv(4 * self.features, (1, 1), padding="VALID", name="conv3")(y)
        y = norm(name="bn3")(y)
        if self.downsample:
            x = conv(4 * self.features, (1, 1), s, padding="VALID", name="downsample_0")(x)
            x = norm(name="downsample_1")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """ResNet trunk without pooling/classifier.

    images [B,H,W,3] (normalized pixels) -> features [B,H/32,W/32,C] with C =
    :func:`resnet_out_channels` (``dtype`` compute, fp32 params). ``conv_impl``: see module doc.
    """

    depth: int
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        block_type, layers = _spec(self.depth)
        block_cls = BasicBlock if block_type == "basic" else Bottleneck
        expansion = 1 if block_type == "basic" else 4
        conv, norm = make_conv(self.dtype, self.conv_impl), make_norm(train, self.dtype, self.bn_axis_name)
        x = x.astype(self.dtype)
        x = conv(64, (7, 7), (2, 2), padding=_pad(7), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        if use_cpu_fast_paths(self.conv_impl):
            x = max_pool(x, 3, 2, 1)
        else:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_ch = 64
        for i, n_blocks in enumerate(layers):
            width = 64 * 2**i
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                down = j == 0 and (stride != 1 or in_ch != width * expansion)
                x = block_cls(width, stride, down, self.dtype, self.bn_axis_name, self.conv_impl,
                              name=f"layer{i + 1}_{j}")(x, train)
                in_ch = width * expansion
        return x
