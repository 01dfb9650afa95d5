"""RMSprop's update of one fc_1-sized tensor: torch's implementations against ours.

fc_1 of the retina model has 33.5 M weights (its RAF Q as many again), so the optimizer step
over it is a visible part of a training step on a CPU. Variants, timed interleaved (median):

- torch: ``torch.optim.RMSprop`` as a user would make it (its default multi-tensor loop);
- torch, single-tensor: ``foreach=False``;
- fused: :class:`retina_raf.optim.FusedRMSprop` (torch's fused Adam kernel at beta1 = 0).

    .venv/bin/python benchmarks/rmsprop_step.py [--numel 33554432] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import retina_raf  # noqa: F401  (before torch: huge pages for large tensors, as in training)

# isort: split
import torch
from common import hardware

from retina_raf.optim import FusedRMSprop

RECIPE = dict(lr=1e-4, alpha=0.9, eps=1e-7)  # Lindsey et al.'s RMSprop


def variants(numel: int) -> dict:
    """name -> one optimizer step, each over its own parameter with a fixed gradient."""

    def parameter() -> torch.nn.Parameter:
        param = torch.nn.Parameter(torch.randn(numel) * 0.01)
        param.grad = torch.randn(numel) * 1e-3
        return param

    torch_default = torch.optim.RMSprop([parameter()], **RECIPE)
    torch_single = torch.optim.RMSprop([parameter()], foreach=False, **RECIPE)
    fused = FusedRMSprop([parameter()], **RECIPE)
    return {"torch": torch_default.step, "torch, single-tensor": torch_single.step,
            "fused": fused.step}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1024 * 32 * 32 * 32, help="fc_1's weights")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = variants(args.numel)
    times = {name: [] for name in steps}
    for repeat in range(args.repeats + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if repeat:  # the first round allocates the state
                times[name].append(time.perf_counter() - start)
    print(f"hardware: {hardware()}")
    print(f"RMSprop step over {args.numel:,} float32 weights, median of {args.repeats}")
    reference = statistics.median(times["torch"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:22s} {median * 1e3:8.1f} ms  {reference / median:5.1f}x torch")


if __name__ == "__main__":
    main()
