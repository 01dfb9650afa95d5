"""fc_1 with W row-major (nn.Linear) against column-major (retina_raf.dense), in one process.

Two comparisons, the variants interleaved step by step so they share the machine's state:

- fc_1 alone (32,768 -> 1,024, batch 64): forward, backward (input and weight gradients)
  and the fused RMSprop step on W;
- a whole ``bp`` training step of the retina model, built as training builds it (dense layers
  column-major), against the same model with its dense layers swapped for nn.Linear holding
  the same weights.

    python benchmarks/dense_layout.py [--threads 2] [--clock wall|cpu] [--repeats 11]

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

from retina_raf.config import resolve_run_config
from retina_raf.dense import ColumnMajorLinear
from retina_raf.models import build_model
from retina_raf.train import make_optimizer


def row_major_copy(layer: ColumnMajorLinear) -> torch.nn.Linear:
    plain = torch.nn.Linear(layer.in_features, layer.out_features)
    plain.load_state_dict(layer.state_dict())
    return plain


def fc1_steps(batch_size: int) -> dict:
    cfg = resolve_run_config("bp")
    torch.manual_seed(0)
    column = ColumnMajorLinear(32 * 32 * 32, 1024)
    layers = {"row-major": row_major_copy(column), "column-major": column}
    x = torch.randn(batch_size, column.in_features)
    steps = {}
    for name, layer in layers.items():
        optimizer = make_optimizer(torch.nn.Sequential(layer), cfg)

        def step(layer=layer, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            layer(x.requires_grad_()).square().mean().backward()
            optimizer.step()

        steps[name] = step
    return steps


def model_steps(batch_size: int) -> dict:
    cfg = resolve_run_config("bp")
    models = {"row-major": build_model("bp", seed=0), "column-major": build_model("bp", seed=0)}
    for name in ("fc_1", "fc_2"):
        block = models["row-major"].layers[name]
        block.linear = row_major_copy(block.linear)
    x = torch.rand(batch_size, 1, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    steps = {}
    for name, model in models.items():
        model.train()
        optimizer = make_optimizer(model, cfg)

        def step(model=model, optimizer=optimizer):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[name] = step
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"hardware: {hardware()}")
    print(f"batch {args.batch_size}, median {args.clock} time of {args.repeats} interleaved steps")
    print(f"{'what':<22} {'row-major s':>12} {'column-major s':>15} {'ratio':>7}")
    for what, steps in (("fc_1 fwd+bwd+RMSprop", fc1_steps(args.batch_size)),
                        ("bp training step", model_steps(args.batch_size))):  # fmt: skip
        median = interleaved(steps, args.repeats, args.warmup, clock)
        row, column = median["row-major"], median["column-major"]
        print(f"{what:<22} {row:12.4f} {column:15.4f} {column / row:7.3f}")


if __name__ == "__main__":
    main()
