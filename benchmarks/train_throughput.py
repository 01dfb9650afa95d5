"""Training throughput of the full retina/VVS model: bp vs raf-r2 vs raf-r32.

CPU (default): images/s of a training step (forward, backward, RMSprop step) for each preset,
the presets interleaved over repeats so that they share the machine's state, median of the
repeats, with the ratios to bp.

GPU (``--device cuda --epochs N --data PATH``): trains ``bp`` and ``raf-r4`` on the full
grayscale training set for N epochs with the paper's recipe (whole data set on the device,
channels_last, optional ``--amp``) and reports images/s, epoch time and test accuracy.

    python benchmarks/train_throughput.py                      # CPU, side by side
    python benchmarks/train_throughput.py --device cuda --epochs 3 --data PATH [--amp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from common import hardware

from retina_raf.config import parse_overrides, resolve_run_config
from retina_raf.models import build_model
from retina_raf.train import make_optimizer, train


def cpu_side_by_side(presets, batch_size: int, repeats: int, warmup: int) -> None:
    models, optimizers = {}, {}
    for preset in presets:
        models[preset] = build_model(preset, seed=0).train()
        optimizers[preset] = make_optimizer(models[preset], resolve_run_config(preset))
    x = torch.rand(batch_size, 1, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    times = {p: [] for p in presets}
    for i in range(warmup + repeats):
        for preset in presets:
            model, optimizer = models[preset], optimizers[preset]
            start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= warmup:
                times[preset].append(time.perf_counter() - start)
    print(f"hardware: {hardware()}")
    print(f"full model, batch {batch_size}, median of {repeats} interleaved steps")
    print(f"{'preset':<10} {'s/step':>8} {'images/s':>9} {'vs bp':>7}")
    base = statistics.median(times[presets[0]])
    for preset in presets:
        step = statistics.median(times[preset])
        print(f"{preset:<10} {step:8.3f} {batch_size / step:9.1f} {step / base:7.2f}")


def gpu_epochs(presets, epochs: int, data: str, amp: bool) -> None:
    print(f"hardware: {hardware()}")
    print(f"{'preset':<8} {'epoch':>5} {'epoch s':>8} {'images/s':>9} {'test acc':>8}")
    with tempfile.TemporaryDirectory() as out:
        for preset in presets:
            sets = [
                f"train.epochs={epochs}",
                "train.device=cuda",
                f"train.amp={str(amp).lower()}",
                f"data.path={data}",
                "train.progress=false",
                "train.diagnostics=false",
            ]
            cfg = resolve_run_config(preset, 0, parse_overrides(sets))
            rows = []
            run_dir = train(cfg, out, log=rows.append)
            history = torch.load(run_dir / "checkpoint.pt", weights_only=False)["history"]
            n_train = 50_000 if cfg.data.train_limit is None else cfg.data.train_limit
            for row in history:
                seconds = row["epoch_time_s"]
                print(f"{preset:<8} {row['epoch']:>5} {seconds:8.1f} {n_train / seconds:9.0f} "
                      f"{row['test_acc']:8.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="GPU: epochs per preset")
    parser.add_argument("--data", default=None, help="GPU: full CIFAR-10 (npz or folder)")
    parser.add_argument("--amp", action="store_true", help="GPU: bf16 autocast")
    args = parser.parse_args()
    if args.device == "cpu":
        cpu_side_by_side(("bp", "raf-r2", "raf-r32"), args.batch_size, args.repeats, args.warmup)
    else:
        if args.data is None:
            parser.error("--device cuda needs --data (the full grayscale CIFAR-10)")
        gpu_epochs(("bp", "raf-r4"), args.epochs, args.data, args.amp)


if __name__ == "__main__":
    main()
