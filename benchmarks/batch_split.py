"""FFT transforms split over torch's threads, or in one call: a whole training step, in one process.

``fftconv.BATCH_PARALLEL`` is switched between interleaved steps of one model (the same
weights, data and optimizer), so both modes share the machine's state. With one torch thread
the two modes are the same code path.

    python benchmarks/batch_split.py [bp raf-r2 ...] [--repeats 11]

Measurements, with their dates and hardware: docs/performance.md#parts.
"""

from __future__ import annotations

import argparse
import time

import retina_raf  # noqa: F401  (before torch: huge pages for large tensors, as in training)

# isort: split
import torch
import torch.nn.functional as F
from common import hardware, interleaved

from retina_raf import fftconv
from retina_raf.config import resolve_run_config
from retina_raf.models import build_model
from retina_raf.train import make_optimizer


def steps(preset: str, batch_size: int) -> dict:
    cfg = resolve_run_config(preset)
    model = build_model(preset, seed=0).train()
    optimizer = make_optimizer(model, cfg)
    x = torch.rand(batch_size, 1, 32, 32)
    y = torch.randint(0, 10, (batch_size,))

    def step(split: bool) -> None:
        fftconv.BATCH_PARALLEL = split
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"split": lambda: step(True), "one call": lambda: step(False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=["bp", "raf-r2"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"hardware: {hardware()}")
    print(f"batch {args.batch_size}, median wall time of {args.repeats} interleaved steps")
    print(f"{'preset':<20} {'one call s':>11} {'split s':>9} {'ratio':>7}")
    for preset in args.presets:
        median = interleaved(steps(preset, args.batch_size), args.repeats, args.warmup,
                             time.perf_counter)  # fmt: skip
        one, split = median["one call"], median["split"]
        print(f"{preset:<20} {one:11.3f} {split:9.3f} {split / one:7.3f}")
    fftconv.BATCH_PARALLEL = True


if __name__ == "__main__":
    main()
