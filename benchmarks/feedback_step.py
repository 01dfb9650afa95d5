"""Training-step time of RAF conv stacks against backprop on the CPU.

Why RAF can cost less than backprop: docs/design.md#learning-rules-conv2d.

One step = forward + backward + RMSprop step (the paper's optimizer, with weight decay).
Stacks: the retina model's 9x9, 32-channel convolutions on 32x32 images (three layers, the
first fed by the image, which needs no input gradient) and a VGG block of two 3x3,
256-channel convolutions on 16x16 maps (inside a network: its input needs a gradient).
Variants: backprop (plain nn.Conv2d) and RAF (Oja P, Kolen-Pollack Q) at ranks m, m/2, m/8.
The variants are timed interleaved (the order rotates every repeat) and the median is kept,
so that the ratios RAF / BP come from one run on one machine under the same load.

The "work" column is the multiply-accumulate count of a step relative to BP's: forward,
weight gradient and (where needed) input gradient are N m n k^2 each for BP; RAF replaces the
input gradient by N r n k^2, adds Q's gradient (N r n k^2) and the projections P delta and
Oja's P C (2 N r m).

    .venv/bin/python benchmarks/feedback_step.py [--repeats 7] [--threads N] [--case retina]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from common import cpu_name
from torch import nn

from retina_raf.feedback import convert


def retina_stack() -> nn.Sequential:
    """retina_1, retina_2, vvs_1 of the Lindsey model: 9x9 convolutions, 32 channels."""
    layers = []
    for channels_in in (1, 32, 32):
        layers += [nn.Conv2d(channels_in, 32, 9, padding=4), nn.ReLU()]
    return nn.Sequential(*layers)


def vgg_block() -> nn.Sequential:
    """Two 3x3 convolutions with 256 channels, as in a VGG block."""
    return nn.Sequential(
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()
    )


# name -> (build, input shape without batch, does the input need a gradient, channels m)
CASES = {
    "retina": (retina_stack, (1, 32, 32), False, 32),
    "vgg": (vgg_block, (256, 16, 16), True, 256),
}


def step_macs(model: nn.Module, input_shape: tuple, input_needs_grad: bool, rank) -> float:
    """Multiply-accumulates of one training step of a conv stack; rank None = backprop."""
    total = 0.0
    x = torch.zeros(1, *input_shape)
    needs_grad = input_needs_grad
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            out = layer(x)
            pixels = out.shape[0] * out.shape[2] * out.shape[3]
            m, n = layer.out_channels, layer.in_channels
            k2 = layer.kernel_size[0] * layer.kernel_size[1]
            total += 2 * pixels * m * n * k2  # forward and weight gradient
            if rank is None:
                total += pixels * m * n * k2 if needs_grad else 0
            else:
                r = min(rank, m)
                total += pixels * r * n * k2 * (2 if needs_grad else 1)  # input grad, Q grad
                total += 2 * pixels * r * m  # P delta and Oja's P C
            x, needs_grad = out, True
    return total


def make_step(model: nn.Module, inputs: torch.Tensor):
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4, weight_decay=1e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(inputs).square().mean().backward()
        optimizer.step()

    return step


def run_case(name: str, batch: int, repeats: int, channels_last: bool) -> list[dict]:
    build, input_shape, input_needs_grad, channels = CASES[name]
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    inputs = torch.randn(batch, *input_shape).to(memory_format=memory_format)
    inputs.requires_grad_(input_needs_grad)
    backprop = build()
    variants = [("BP", None, backprop)]
    ranks = (("RAF r=m", channels), ("RAF r=m/2", channels // 2), ("RAF r=m/8", channels // 8))
    for label, rank in ranks:
        variants.append((label, rank, convert(copy.deepcopy(backprop), "raf", rank=rank)))
    steps = [make_step(model.to(memory_format=memory_format), inputs) for _, _, model in variants]
    for step in steps:  # warm-up: allocator, oneDNN primitive caches
        step()
        step()
    wall, cpu = [[] for _ in variants], [[] for _ in variants]
    for repeat in range(repeats):
        order = list(range(len(variants)))
        order = order[repeat % len(order) :] + order[: repeat % len(order)]
        for index in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[index]()
            wall[index].append(time.perf_counter() - start)
            cpu[index].append(time.process_time() - start_cpu)
    bp_wall, bp_cpu = statistics.median(wall[0]), statistics.median(cpu[0])
    bp_macs = step_macs(backprop, input_shape, input_needs_grad, None)
    rows = []
    for index, (label, rank, _) in enumerate(variants):
        median = statistics.median(wall[index])
        rows.append(
            dict(
                case=name,
                variant=label,
                rank=rank if rank is not None else channels,
                ms=1e3 * median,
                spread=1e3 * (max(wall[index]) - min(wall[index])),
                ratio=median / bp_wall,
                cpu_ratio=statistics.median(cpu[index]) / bp_cpu,
                work=step_macs(backprop, input_shape, input_needs_grad, rank) / bp_macs,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC tensors and weights")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores, load average {load:.1f})")
    layout = "channels-last" if args.channels_last else "NCHW"
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, batch {args.batch}, {layout}")
    print(f"step = forward + backward + RMSprop step; median of {args.repeats} interleaved repeats")
    print("RAF/BP: ratio of median wall-clock times; cpu: ratio of median process CPU times")
    print()
    header = (
        f"{'case':8} {'variant':10} {'rank':>4} {'ms/step':>9} {'range':>8} "
        f"{'RAF/BP':>7} {'cpu':>6} {'work':>6}"
    )
    print(header)
    print("-" * len(header))
    for name in CASES if args.case == "all" else [args.case]:
        for row in run_case(name, args.batch, args.repeats, args.channels_last):
            print(
                f"{row['case']:8} {row['variant']:10} {row['rank']:>4} {row['ms']:>9.1f} "
                f"{row['spread']:>8.1f} {row['ratio']:>7.2f} {row['cpu_ratio']:>6.2f} "
                f"{row['work']:>6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
