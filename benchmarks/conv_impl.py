"""Direct vs FFT convolution per layer shape: the measurements behind ``conv_impl: auto``.

For each (in channels, out channels, kernel, image size) the script times forward + input
gradient + weight gradient of one 'same' convolution at batch 64, direct (``F.conv2d`` and
autograd) and by FFT (:func:`retina_raf.fftconv.fft_conv2d`), interleaved, and prints the
median times, their ratio and what the ``auto`` rule picks (on this device).

    python benchmarks/conv_impl.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import retina_raf  # noqa: F401  (before torch: huge pages for large tensors, as in training)

# isort: split
import torch
import torch.nn.functional as F
from common import hardware

from retina_raf.fftconv import choose_conv_impl, fft_conv2d

SHAPES = [  # (n_in, n_out, kernel, image): the retina model's layers, then the rule's edges
    (1, 32, 9, 32),
    (32, 32, 9, 32),
    (32, 1, 9, 32),
    (32, 4, 9, 32),
    (4, 32, 9, 32),
    (32, 32, 7, 32),
    (32, 1, 7, 32),
    (32, 32, 5, 32),
    (32, 32, 3, 32),
    (64, 64, 3, 16),
    (32, 32, 9, 16),
    (2, 32, 9, 32),
]


def time_step(fn, x, w, b, grad, repeats: list[float]) -> None:
    start = time.perf_counter()
    out = fn(x, w, b)
    torch.autograd.grad(out, (x, w, b), grad)
    repeats.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"hardware: {hardware()}")
    print(f"batch {args.batch_size}, forward + both gradients, median of {args.repeats}")
    print(f"{'n':>3} {'m':>3} {'k':>3} {'size':>4} {'direct ms':>10} {'fft ms':>8} "
          f"{'direct/fft':>10} {'auto':>7}")  # fmt: skip
    for n, m, k, size in SHAPES:
        x = torch.randn(args.batch_size, n, size, size, requires_grad=True)
        w = torch.randn(m, n, k, k, requires_grad=True)
        b = torch.randn(m, requires_grad=True)
        grad = torch.randn(args.batch_size, m, size, size)

        def direct(x, w, b, pad=k // 2):
            return F.conv2d(x, w, b, padding=pad)

        times = {"direct": [], "fft": []}
        for i in range(args.repeats + 1):
            for name, fn in (("direct", direct), ("fft", fft_conv2d)):
                samples = times[name] if i else []  # the first round warms up
                time_step(fn, x, w, b, grad, samples)
        d, f = (statistics.median(times[key]) * 1e3 for key in ("direct", "fft"))
        auto = choose_conv_impl("auto", (m, n, k, k), (size, size), "cpu")
        print(f"{n:>3} {m:>3} {k:>3} {size:>4} {d:10.1f} {f:8.1f} {d / f:10.2f} {auto:>7}")


if __name__ == "__main__":
    main()
