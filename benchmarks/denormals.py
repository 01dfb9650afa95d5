"""How much denormal floats slow a trained run's training step on a CPU.

As a run trains, some values of its state fall below float32's smallest normal number
(1.2e-38); arithmetic on them runs in microcode, many times slower. ``train.flush_denormal``
(on by default) treats them as zero. This times one training step of a run's checkpoint and of
the same network at its initialization, each with and without flushing, side by side in one
process, and counts the denormal values in the checkpoint's weights and optimizer state::

    python benchmarks/denormals.py RUN_DIR [--threads 1] [--steps 8] [--repeats 2]

RUN_DIR is a run folder with a ``checkpoint.pt`` (a run in flight, or one trained with
``train.checkpoint_every``). The batch is random (64 standardized-size images): the step's
cost does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from retina_raf.models import model_from_config
from retina_raf.runs import load_checkpoint, load_config
from retina_raf.train import make_optimizer

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def denormal_counts(state: dict) -> dict[str, tuple[int, int]]:
    """Where the checkpoint's denormals are: group -> (denormal values, all values), for the
    weights and each optimizer state tensor (e.g. RMSprop's ``square_avg``)."""
    counts: dict[str, list[int]] = {}

    def add(group: str, tensor: torch.Tensor) -> None:
        if tensor.dtype != torch.float32:
            return
        tiny = ((tensor != 0) & (tensor.abs() < SMALLEST_NORMAL)).sum().item()
        entry = counts.setdefault(group, [0, 0])
        entry[0], entry[1] = entry[0] + tiny, entry[1] + tensor.numel()

    for tensor in state["model"].values():
        if isinstance(tensor, torch.Tensor):
            add("weights", tensor)
    for per_param in state["optimizer"]["state"].values():
        for key, tensor in per_param.items():
            if isinstance(tensor, torch.Tensor):
                add(f"optimizer {key}", tensor)
    return {group: (n, total) for group, (n, total) in counts.items()}


def step_seconds(model, optimizer, batch, amp: bool, steps: int) -> float:
    """Median seconds of a training step (after two warm-up steps)."""
    x, y = batch
    model.train()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y) + model.penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = load_config(args.run_dir)
    state = load_checkpoint(args.run_dir)
    if state is None:
        raise SystemExit(f"{args.run_dir} has no checkpoint.pt")
    generator = torch.Generator().manual_seed(0)
    size, channels = cfg.model.image_size, cfg.model.in_channels
    batch = (torch.randn(64, channels, size, size, generator=generator),
             torch.randint(0, cfg.model.num_classes, (64,), generator=generator))  # fmt: skip

    print(f"{args.run_dir}: {len(state['history'])} epochs trained; denormal values:")
    for group, (tiny, total) in denormal_counts(state).items():
        print(f"  {group:<28} {tiny:>9,} of {total:>10,} ({tiny / total:.2%})")
    print(f"s/step, median of {args.steps}, {args.threads} thread(s), amp={cfg.train.amp}:")
    for _ in range(args.repeats):
        for trained in (False, True):
            row = []
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                model = model_from_config(cfg.model, seed=cfg.seed)
                optimizer = make_optimizer(model, cfg)
                if trained:
                    model.load_state_dict(state["model"])
                    optimizer.load_state_dict(state["optimizer"])
                row.append(step_seconds(model, optimizer, batch, cfg.train.amp, args.steps))
            label = "checkpoint" if trained else "initialization"
            print(f"  {label:<15} kept {row[0]:.3f}  flushed {row[1]:.3f}  "
                  f"ratio {row[0] / row[1]:.2f}x")  # fmt: skip
    torch.set_flush_denormal(False)


if __name__ == "__main__":
    main()
