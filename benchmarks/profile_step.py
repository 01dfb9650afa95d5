"""torch.profiler's top operators for one training step of a preset (CPU, batch 64).

    python benchmarks/profile_step.py bp raf-r2 [--rows 10] [--set model.conv_impl=direct]

Prints, per preset, the operators that took the most self CPU time over a few steps after a
warm-up: where a step's time goes, for the notes of a speed change.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import hardware
from torch.profiler import ProfilerActivity, profile

from retina_raf.config import parse_overrides, resolve_run_config
from retina_raf.models import model_from_config
from retina_raf.train import make_optimizer


def profile_preset(preset: str, sets: list[str], batch_size: int, steps: int, rows: int) -> None:
    cfg = resolve_run_config(preset, 0, parse_overrides(sets))
    model = model_from_config(cfg.model, seed=0).train()
    optimizer = make_optimizer(model, cfg)
    x = torch.rand(batch_size, 1, 32, 32)
    y = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"\n== {preset} {' '.join(sets)} ({steps} steps, batch {batch_size})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    print(f"hardware: {hardware()}")
    for preset in args.presets:
        profile_preset(preset, args.sets, args.batch_size, args.steps, args.rows)


if __name__ == "__main__":
    main()
