"""The GPU side of the speed work, in one short run on one GPU (about 5 minutes).

1. ``bp``, ``raf-r2`` and ``draf-bottleneck-4`` each train one epoch on the full grayscale
   CIFAR-10 through ``retina_raf.train.train`` (whole data set on the device, the default
   recipe): epoch time, images/s, test accuracy.
2. One of them resumes from a mid-run checkpoint: a 2-epoch run killed after epoch 1 and
   restarted ends where the uninterrupted 2-epoch run ends (GPU: to float tolerance).
3. fp32 against bf16 autocast: training losses of 200 steps from the same init.
4. Step throughput per preset with ``conv_impl`` direct and fft, and ``torch.compile``d.

    python benchmarks/gpu_check.py --data data/full/cifar10_gray_uint8.npz --out data/gpu_check

Prints one table per part and exits 0; a part that fails prints its error and the others
still run (the exit status is then 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import retina_raf  # noqa: F401  (before torch, as in training)

# isort: split
import torch
import torch.nn.functional as F
from common import hardware

from retina_raf.config import parse_overrides, resolve_run_config
from retina_raf.models import model_from_config
from retina_raf.train import make_optimizer, train

PRESETS = ("bp", "raf-r2", "draf-bottleneck-4")
DEVICE = "cuda"
SMOKE: list[str] = []  # --smoke: settings that shrink every part to seconds (a CPU dry run)


def run_config(preset: str, data: str, sets: list[str]):
    base = [f"train.device={DEVICE}", f"data.path={data}", "train.progress=false", *SMOKE]
    return resolve_run_config(preset, 0, parse_overrides(base + sets))


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def one_epoch_each(data: str, out: Path) -> None:
    print("\n== 1. one epoch per preset (full data, default recipe)")
    print(f"{'preset':<20} {'epoch s':>8} {'images/s':>9} {'test acc':>8}")
    for preset in PRESETS:
        cfg = run_config(preset, data, ["train.epochs=1"])
        run_dir = train(cfg, out / "epoch", log=lambda *_: None)
        row = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        row = row["history"][-1]
        images = row.get("train_images", 50_000)
        print(f"{preset:<20} {row['epoch_time_s']:8.1f} {images / row['epoch_time_s']:9.0f} "
              f"{row['test_acc']:8.3f}")  # fmt: skip


def resume_from_checkpoint(data: str, out: Path) -> None:
    print("\n== 2. resume after epoch 1 of 2 (bp)")
    sets = [] if SMOKE else ["data.train_limit=10000", "data.test_limit=2000"]
    whole = train(run_config("bp", data, sets + ["train.epochs=2"]), out / "whole",
                  log=lambda *_: None)  # fmt: skip
    train(run_config("bp", data, sets + ["train.epochs=1"]), out / "split", log=lambda *_: None)
    split = train(run_config("bp", data, sets + ["train.epochs=2"]), out / "split",
                  log=lambda *_: None)  # fmt: skip
    a = torch.load(whole / "model.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(split / "model.pt", map_location="cpu", weights_only=False)["model"]
    worst = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item()
                for k in a if a[k].is_floating_point())  # fmt: skip
    print(f"resumed run vs uninterrupted: largest relative weight difference {worst:.2e}")


def steps(model, optimizer, x, y, n: int, amp: bool) -> list[float]:
    losses = []
    for i in range(n):
        batch = slice((i * 64) % (len(x) - 64), (i * 64) % (len(x) - 64) + 64)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x[batch]).float(), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def training_batch(data: str, n: int = 200 * 64):
    from retina_raf.data import load_cifar10

    ds = load_cifar10(data, gray="mean")
    x = torch.as_tensor(ds.x_train[:n], dtype=torch.float32, device=DEVICE) / 255.0
    x = ((x - x.mean()) / x.std()).unsqueeze(1)
    return x, torch.as_tensor(ds.y_train[:n], dtype=torch.long, device=DEVICE)


def fp32_vs_bf16(data: str) -> None:
    print("\n== 3. fp32 vs bf16 autocast, 200 steps of bp from one init")
    n_steps = 5 if SMOKE else 200
    x, y = training_batch(data, n_steps * 64 + 64)
    losses = {}
    for amp in (False, True):
        cfg = run_config("bp", data, [])
        model = model_from_config(cfg.model, seed=0).to(DEVICE).train()
        losses[amp] = steps(model, make_optimizer(model, cfg), x, y, n_steps, amp)
    for at in sorted({1, n_steps // 4, n_steps // 2, n_steps} - {0}):
        print(f"step {at:>3}: fp32 {losses[False][at - 1]:.4f}  bf16 {losses[True][at - 1]:.4f}")
    tail = [abs(a - b) for a, b in zip(losses[False][-20:], losses[True][-20:], strict=True)]
    print(f"mean |fp32 - bf16| over the last {len(tail)} steps: {statistics.mean(tail):.4f}")


def throughput(data: str) -> None:
    warmup, timed = (1, 2) if SMOKE else (20, 50)
    print(f"\n== 4. images/s of a training step (batch 64, median of {timed} after {warmup})")
    x, y = training_batch(data, 64 * 8)
    print(f"{'preset':<20} {'direct':>8} {'fft':>8} {'compiled':>9}")
    for preset in PRESETS:
        rates = []
        for impl, compiled in (("direct", False), ("fft", False), ("direct", True)):
            cfg = run_config(preset, data, [f"model.conv_impl={impl}"])
            model = model_from_config(cfg.model, seed=0).to(DEVICE).train()
            optimizer = make_optimizer(model, cfg)
            step_model = torch.compile(model) if compiled else model
            times = []
            for i in range(warmup + timed):
                sync()
                start = time.perf_counter()
                steps(step_model, optimizer, x, y, 1, amp=False)
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            rates.append(64 / statistics.median(times))
        print(f"{preset:<20} {rates[0]:8.0f} {rates[1]:8.0f} {rates[2]:9.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="full grayscale CIFAR-10 (.npz)")
    parser.add_argument("--out", default=None, help="run folders (default: a temp folder)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a dry run of every part in seconds, on the CPU if there is no GPU",
    )
    args = parser.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        SMOKE.extend(["data.train_limit=256", "data.test_limit=128", "model.retina.vvs_layers=1",
                      "model.retina.fc_units=32"])  # fmt: skip
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --smoke for a dry run)", file=sys.stderr)
        return 2
    print(f"hardware: {hardware()}")
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check-"))
    status = 0
    parts = (
        lambda: one_epoch_each(args.data, out),
        lambda: resume_from_checkpoint(args.data, out),
        lambda: fp32_vs_bf16(args.data),
        lambda: throughput(args.data),
    )
    for part in parts:
        start = time.perf_counter()
        try:
            part()
        except Exception:  # report and go on: one failing part must not hide the others
            traceback.print_exc()
            status = 1
        print(f"({time.perf_counter() - start:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
