"""Convolution in the frequency domain: ``F.conv2d`` for large kernels at a fraction of the cost.

What is computed (docs/design.md#fft-convolution): the 'same'-padded, stride-1,
dilation-1, groups-1 cross-correlation of nn.Conv2d, for an odd kernel k = 2p + 1,

    z[b, m, y, x] = sum_{n, i, j} W[m, n, i, j] h[b, n, y + i - p, x + j - p]   (h = 0 outside)

Method. Zero-pad h (H x W) to an N_y x N_x grid. A circular correlation on that grid reads
h at rows y + i - p in [-p, H - 1 + p] for the kept rows y in [0, H): row -p wraps to N_y - p,
which is padding as long as N_y - p >= H, and row H - 1 + p does not wrap as long as
H - 1 + p < N_y. Both hold iff **N_y >= H + p** (likewise N_x >= W + p); for 32 x 32 images and
9 x 9 kernels N = 36, the smallest such size whose only prime factors are 2, 3 and 5. Within the
kept window the circular result is then exactly the zero-padded one. With spectra ^ = rfft2 on
that grid and the kernel placed as ``kb[t] = W[p - t]`` (flipped, rolled by -p):

    forward           z^[b, m]   = sum_n  h^[b, n] kb^[m, n]             -> irfft2, crop H x W
    input gradient    dh^[b, n]  = sum_m  d^[b, m] conj(kb^[m, n])       -> irfft2, crop H x W
    weight gradient   G^[m, n]   = sum_b  conj(d^[b, m]) h^[b, n]        -> irfft2,
                      dW[m, n, i, j] = G[m, n, (i - p) mod N_y, (j - p) mod N_x]
    bias gradient     sum over b, y, x of d

with d = dL/dz zero-padded like h. The channel sums run per frequency as batched complex
matrix products over the N_y (N_x/2 + 1) frequencies ("frequency-major" spectra, shaped
(F, batch, channels)). The cost per image is a few FFTs of the maps plus 4 n m F real
multiply-adds, against n m k^2 H W for direct convolution: about 30x fewer operations for the
retina model's 32 -> 32 9 x 9 layers at 32 x 32.

Half-precision inputs are transformed in float32 (CPU FFTs have no bf16) and the results are
cast back to the input's dtype, as autocast would for a convolution.

:func:`fft_conv2d` is the differentiable function; :class:`FFTConv2d` is nn.Conv2d (same
parameters, init and state_dict) computing through it; :class:`RAFConv2d
<retina_raf.feedback.RAFConv2d>` uses the same spectra for its own backward pass.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from retina_raf.errors import ConfigError

CONV_IMPLS = ("auto", "direct", "fft")


# ------------------------------------------------------------------------------ grid size
def _is_fast_size(n: int) -> bool:
    for prime in (2, 3, 5):
        while n % prime == 0:
            n //= prime
    return n == 1


def fft_size(image_size: int, kernel_size: int) -> int:
    """The smallest 2-3-5-smooth N >= image_size + kernel_size // 2 (no wrap-around, see above)."""
    n = image_size + kernel_size // 2
    while not _is_fast_size(n):
        n += 1
    return n


def fft_grid(image_size: tuple[int, int], kernel: tuple[int, int]) -> tuple[int, int]:
    """(N_y, N_x): :func:`fft_size` along each axis of an (H, W) image and (k_y, k_x) kernel."""
    return fft_size(image_size[0], kernel[0]), fft_size(image_size[1], kernel[1])


def check_fft_geometry(conv: nn.Conv2d, what: str = "conv") -> None:
    """Raise ConfigError unless ``conv`` is what the FFT path computes (stride 1, 'same', ...)."""
    kh, kw = conv.kernel_size
    padding = conv.padding if conv.padding != "same" else (kh // 2, kw // 2)
    if (
        tuple(conv.stride) != (1, 1)
        or tuple(conv.dilation) != (1, 1)
        or conv.groups != 1
        or kh % 2 == 0
        or kw % 2 == 0
        or tuple(padding) != (kh // 2, kw // 2)
        or conv.padding_mode != "zeros"
    ):
        raise ConfigError(
            f"{what}: conv_impl 'fft' needs stride 1, dilation 1, groups 1, an odd kernel and "
            "zero 'same' padding"
        )


# ------------------------------------------------------------------------------ spectra
def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def map_spectrum(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(b, c, H, W) real maps -> frequency-major spectrum (F, b, c), F = N_y (N_x // 2 + 1)."""
    b, c = maps.shape[:2]
    maps = maps.to(compute_dtype(maps))
    if torch.compiler.is_compiling():  # dynamo cannot trace out= into a permuted view
        return torch.fft.rfft2(maps, s=grid).reshape(b, c, -1).permute(2, 0, 1).contiguous()
    complex_dtype = torch.complex128 if maps.dtype == torch.float64 else torch.complex64
    spectrum = torch.empty(grid[0], grid[1] // 2 + 1, b, c, dtype=complex_dtype, device=maps.device)

    def transform(start: int, stop: int) -> None:
        # Written straight into the frequency-major layout through a permuted view: the FFT's
        # strided output costs less than a transposing copy of a (b, c, ...) spectrum
        # (docs/performance.md#parts).
        out = spectrum[:, :, start:stop].permute(2, 3, 0, 1)
        torch.fft.rfft2(maps[start:stop], s=grid, out=out)

    in_batch_chunks(transform, b, maps.device)
    return spectrum.view(-1, b, c)


def kernel_spectrum(weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(m, n, k, k) kernel -> spectrum of ``kb[t] = W[p - t]``, frequency-major (F, n, m)."""
    m, n, kh, kw = weight.shape
    flipped = weight.to(compute_dtype(weight)).flip(-2, -1)
    placed = F.pad(flipped, (0, grid[1] - kw, 0, grid[0] - kh))
    placed = placed.roll(shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(placed).reshape(m, n, -1).permute(2, 1, 0).contiguous()


def spectrum_to_maps(
    spectrum: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Frequency-major (F, b, c) -> real maps (b, c, H, W): irfft2 on the grid, crop to size."""
    _, b, c = spectrum.shape
    # Two 1-D passes instead of irfft2 (the same numbers; on a CPU MKL's 2-D complex-to-real
    # transform is slower at 36 x 36, docs/performance.md#parts): the row pass runs on the
    # frequency-major layout itself (no transposed copy of the spectrum) and keeps only the
    # rows in the window, the column pass transforms those and is cropped in turn.
    frequency_major = spectrum.view(grid[0], grid[1] // 2 + 1, b, c)
    if torch.compiler.is_compiling():  # no out= under dynamo
        rows = torch.fft.ifft(frequency_major, dim=0)[: size[0]]  # (H, N_x/2+1, b, c)
        return torch.fft.irfft(rows.permute(2, 3, 0, 1), n=grid[1], dim=-1)[..., : size[1]]
    real_dtype = torch.float64 if spectrum.dtype == torch.complex128 else torch.float32
    maps = torch.empty(b, c, size[0], grid[1], dtype=real_dtype, device=spectrum.device)

    def transform(start: int, stop: int) -> None:
        rows = torch.fft.ifft(frequency_major[:, :, start:stop], dim=0)[: size[0]]
        torch.fft.irfft(rows.permute(2, 3, 0, 1), n=grid[1], dim=-1, out=maps[start:stop])

    in_batch_chunks(transform, b, spectrum.device)
    return maps[..., : size[1]]


# ------------------------------------------------------------------ batch-parallel transforms
# On a CPU, MKL's threading of these small batched transforms (36 x 36 points, a few thousand
# per call) is poor and erratic: with 2 threads the same transform can take several times
# longer in one process than in another, and longer than on one thread. The maps are
# independent, so the batch is split instead: each of torch's threads transforms its share
# single-threaded, into its slice of one output (benchmarks/batch_split.py; measurements in
# docs/performance.md#parts). Each map gets the same transform; MKL may order its sums
# differently for another batch size (1e-12 relative in float64, tests). With one thread, under
# torch.compile and on a GPU a transform runs in one call.
BATCH_PARALLEL = True  # False: every transform in one call (benchmarks compare the two)
_transform_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool)


def _single_threaded_workers(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads that run torch ops on one thread each (started now).

    Keyed on the process id too: a process forked from one that had a pool (a sweep's
    workers) inherits the pool object but not its threads, and starts its own.
    """
    global _transform_pool
    pid = os.getpid()
    if _transform_pool is not None and _transform_pool[:2] == (pid, workers):
        return _transform_pool[2]
    if _transform_pool is not None and _transform_pool[0] == pid:
        _transform_pool[2].shutdown()
    threads = torch.get_num_threads()
    started = threading.Barrier(workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="fft",
                              initializer=torch.set_num_threads, initargs=(1,))  # fmt: skip
    for waiting in [pool.submit(started.wait) for _ in range(workers)]:
        waiting.result()
    # set_num_threads in a worker also changes the default that threads started later read:
    # the caller's count is set again
    torch.set_num_threads(threads)
    _transform_pool = (pid, workers, pool)
    return pool


def in_batch_chunks(transform, batch: int, device: torch.device) -> None:
    """Call ``transform(start, stop)`` over the batch: in one call, or on a CPU with several
    torch threads in one contiguous chunk per thread, each run single-threaded in parallel."""
    workers = min(torch.get_num_threads(), batch)
    if not BATCH_PARALLEL or device.type != "cpu" or workers < 2:
        transform(0, batch)
        return
    bounds = [batch * i // workers for i in range(workers + 1)]
    grad_mode = torch.is_grad_enabled()  # thread-local: the workers take the caller's

    def run(start: int, stop: int) -> None:
        with torch.set_grad_enabled(grad_mode):
            transform(start, stop)

    pool = _single_threaded_workers(workers)
    for chunk in [pool.submit(run, a, b) for a, b in itertools.pairwise(bounds)]:
        chunk.result()


@functools.lru_cache(maxsize=32)
def _tap_bases(
    grid: tuple[int, int], kernel: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse real DFT on ``grid`` at the kernel's taps, one axis at a time.

    Returns ``rows`` (k_y, N_y) and ``columns`` (k_x, N_x/2 + 1), complex, such that for a half
    spectrum G^ (N_y, N_x/2 + 1) of a real map G and taps t = i - p in [-p, p]

        G[t_y, t_x] = Re( sum_fx columns[t_x, fx] sum_fy rows[t_y, fy] G^[fy, fx] ),

    the other half of the spectrum entering through the weight 2 on the columns that stand
    for two conjugate frequencies (all but fx = 0 and, for even N_x, the Nyquist column).
    """
    ny, nx = grid
    ty = torch.arange(kernel[0], dtype=torch.float64) - kernel[0] // 2
    tx = torch.arange(kernel[1], dtype=torch.float64) - kernel[1] // 2
    fy = torch.arange(ny, dtype=torch.float64)
    fx = torch.arange(nx // 2 + 1, dtype=torch.float64)
    weight = torch.full((nx // 2 + 1,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if nx % 2 == 0:
        weight[-1] = 1.0
    rows = torch.polar(torch.full((kernel[0], ny), 1.0 / ny, dtype=torch.float64),
                       2 * torch.pi * ty[:, None] * fy[None, :] / ny)  # fmt: skip
    columns = torch.polar(weight[None, :].expand(kernel[1], -1) / nx,
                          2 * torch.pi * tx[:, None] * fx[None, :] / nx)  # fmt: skip
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return rows.to(device, complex_dtype), columns.to(device, complex_dtype)


def spectrum_to_kernel(
    spectrum: torch.Tensor, grid: tuple[int, int], kernel: tuple[int, int]
) -> torch.Tensor:
    """Frequency-major (F, m, n) correlation spectrum G^ -> kernel gradient (m, n, k, k).

    Only the k_y k_x taps of the correlation are needed, so they are read off by the inverse
    DFT at those taps, separably (rows, then columns): for 9 x 9 taps on a 36 x 36 grid, 7x
    fewer operations than one product with the 2-D tap basis, and no inverse FFT of m n maps.
    """
    _, m, n = spectrum.shape
    real = torch.float64 if spectrum.dtype == torch.complex128 else torch.float32
    rows, columns = _tap_bases(grid, kernel, real, spectrum.device)
    by_row = torch.mm(rows, spectrum.reshape(grid[0], -1))  # (k_y, (N_x/2+1) m n)
    taps = torch.matmul(columns, by_row.view(kernel[0], grid[1] // 2 + 1, m * n))
    return taps.real.permute(2, 0, 1).reshape(m, n, kernel[0], kernel[1])  # from (k_y, k_x, mn)


def mix(maps_hat: torch.Tensor, kernel_hat: torch.Tensor) -> torch.Tensor:
    """Forward channel mixing per frequency: (F, b, n) x (F, n, m) -> (F, b, m)."""
    return torch.bmm(maps_hat, kernel_hat)


def mix_adjoint(error_hat: torch.Tensor, kernel_hat: torch.Tensor) -> torch.Tensor:
    """Input-gradient mixing: (F, b, m) x conj(F, n, m)^T -> (F, b, n)."""
    return torch.bmm(error_hat, kernel_hat.transpose(1, 2).conj())


def correlate(error_hat: torch.Tensor, maps_hat: torch.Tensor) -> torch.Tensor:
    """Weight-gradient spectrum: conj(F, b, m)^T x (F, b, n) -> (F, m, n), summed over b."""
    return torch.bmm(error_hat.transpose(1, 2).conj(), maps_hat)


# ------------------------------------------------------------------------ plain layer
class FFTConv2dFunction(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=k // 2)`` by FFT, with a frequency-domain backward."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        size = tuple(x.shape[-2:])
        kernel = tuple(weight.shape[-2:])
        grid = fft_grid(size, kernel)
        x_hat = map_spectrum(x, grid)
        w_hat = kernel_spectrum(weight, grid)
        out = spectrum_to_maps(mix(x_hat, w_hat), grid, size)
        if bias is not None:
            out = out + bias.to(out.dtype).view(1, -1, 1, 1)
        ctx.grid, ctx.size, ctx.kernel = grid, size, kernel
        ctx.dtypes = (x.dtype, weight.dtype)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x_hat, w_hat)
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x_hat, w_hat = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if need_b and ctx.has_bias:
            grad_b = grad_output.sum((0, 2, 3)).to(ctx.dtypes[1])
        if need_x or need_w:
            delta_hat = map_spectrum(grad_output, ctx.grid)
            if need_x:
                grad_x = spectrum_to_maps(mix_adjoint(delta_hat, w_hat), ctx.grid, ctx.size)
                grad_x = grad_x.to(ctx.dtypes[0])
            if need_w:
                grad_w = spectrum_to_kernel(correlate(delta_hat, x_hat), ctx.grid, ctx.kernel)
                grad_w = grad_w.to(ctx.dtypes[1])
        return grad_x, grad_w, grad_b


def fft_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """'same'-padded stride-1 ``F.conv2d`` by FFT.

    Args:
        x: (b, n, H, W) input maps.
        weight: (m, n, k_y, k_x) kernel, odd sizes.
        bias: (m,) or None.

    Returns:
        (b, m, H, W), equal to ``F.conv2d(x, weight, bias, padding=(k_y // 2, k_x // 2))`` to
        floating-point tolerance; differentiable in all three inputs.
    """
    if x.dim() != 4 or weight.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fft_conv2d: expected x (b, n, H, W) and weight (m, n, k, k), got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if weight.shape[-1] % 2 == 0 or weight.shape[-2] % 2 == 0:
        raise ValueError(f"fft_conv2d: kernel sizes must be odd, got {tuple(weight.shape[-2:])}")
    return FFTConv2dFunction.apply(x, weight, bias)


class FFTConv2d(nn.Conv2d):
    """nn.Conv2d ('same' zero padding, stride 1) that computes by FFT where ``conv_impl`` says.

    Same parameters, init and state_dict as nn.Conv2d. ``conv_impl``: "fft", "direct" or "auto"
    (:func:`choose_conv_impl`, decided at each call from the input's device and size). The FFT
    output equals nn.Conv2d's to float tolerance, under ``torch.no_grad()`` too.
    """

    def __init__(self, *args, conv_impl: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_fft_geometry(self, f"FFTConv2d{tuple(self.weight.shape)}")
        self.conv_impl = check_conv_impl(conv_impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = choose_conv_impl(self.conv_impl, self.weight.shape, x.shape[-2:], x.device, x.dtype)
        if impl == "fft":
            return FFTConv2dFunction.apply(x, self.weight, self.bias)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, conv_impl={self.conv_impl}"


# --------------------------------------------------------------------- choosing an impl
def check_conv_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ConfigError(f"conv_impl: {impl!r} is not allowed (allowed: {', '.join(CONV_IMPLS)})")
    return impl


def choose_conv_impl(impl: str, weight_shape, image_size, device, dtype=None) -> str:
    """Resolve a conv_impl setting for one layer and input: "direct" or "fft".

    Args:
        impl: "auto", "direct" or "fft".
        weight_shape: (m, n, k_y, k_x) of the layer's kernel.
        image_size: (H, W) of its input maps.
        device: where the input lives.
        dtype: the dtype the convolution computes in, where it is not the autocast dtype
            (a backward pass of bf16 tensors runs with autocast off).

    The ``auto`` rule follows ``benchmarks/conv_impl.py`` (forward + both gradients, batch 64,
    32 x 32 images; docs/performance.md#parts): on a CPU the FFT wins for kernels of 7 and more
    with at least 4 input channels and loses for 5 x 5 and smaller kernels and for one input
    channel (retina_1). On CUDA, cuDNN chooses among its own algorithms (FFT ones included)
    under ``cudnn.benchmark``, so ``auto`` keeps the direct path there. Under CPU bf16 autocast
    ``auto`` convolves directly: CPU FFTs have no bf16 and stay float32, while oneDNN's bf16
    convolutions run on the bf16 units, which makes a whole step about twice as fast
    (``benchmarks/train_throughput.py``; docs/performance.md#bf16-autocast-on-the-cpu).
    """
    if impl != "auto":
        return impl
    device_type = torch.device(device).type
    half = dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(device_type)
    if device_type != "cpu" or half:
        return "direct"
    _, n_in, ky, kx = weight_shape
    large = min(ky, kx) >= 7 and min(image_size) >= 8
    return "fft" if large and n_in >= 4 else "direct"
