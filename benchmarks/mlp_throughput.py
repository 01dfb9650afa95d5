"""Training throughput of the Fig. 3 MLP (4 x 512, batch 32, Adam with AMSGrad): images/s of
the project's training loop against a plain PyTorch copy, in the same run.

Variants, interleaved chunk by chunk so that they share the machine's state (median over
chunks):

    plain    nn.Sequential of nn.Linear / ReLU, torch's Adam(amsgrad=True) and a plain loop
             over index batches of the same on-device uint8 data
    bp       retina_raf.nets's MLP through retina_raf.train.train_epoch (the real loop:
             on-device data, batches by indexing, divergence checks)
    raf      RAF at full rank in every layer
    raf-r10  RAF with every feedback matrix at rank 10

    python benchmarks/mlp_throughput.py                        # CPU, real CIFAR-10 if present
    python benchmarks/mlp_throughput.py --threads 1 --clock cpu   # robust to other load
    python benchmarks/mlp_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import retina_raf  # noqa: F401  (before torch: huge pages for large tensors, as in training)

# isort: split
import numpy as np
import torch
import torch.nn.functional as F
from common import hardware

from retina_raf.config import resolve_run_config
from retina_raf.data import DeviceData, load_cifar10, resolve_data
from retina_raf.models import model_from_config
from retina_raf.train import make_optimizer, train_epoch

RECIPE = {"optimizer": "adam", "amsgrad": True, "lr": 6e-4, "weight_decay": 4e-4,
          "batch_size": 32, "progress": False, "deterministic": False}  # fmt: skip
VARIANTS = {"bp": ("bp", {}), "raf": ("raf", {}), "raf-r10": ("raf", {"rank": 10})}


def images(n: int, data: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """n RGB training images and labels: CIFAR-10 (``data``, else the data set ``cifar10``
    of the data root) when present, else noise."""
    path = Path(data) if data else resolve_data("cifar10", must_exist=False)
    if path.exists():
        ds = load_cifar10(path, rgb=True)
        return ds.x_train[:n], ds.y_train[:n], f"CIFAR-10 ({path.name})"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return x, rng.integers(0, 10, n), "random images (no CIFAR-10 file)"


def plain_copy(net: torch.nn.Module) -> torch.nn.Sequential:
    """The same MLP (and weights) as nn.Linear / ReLU, what a user would otherwise write."""
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    names = net.names
    for name in names:
        layer = net._modules[name]
        plain = torch.nn.Linear(layer.in_features, layer.out_features)
        plain.load_state_dict({"weight": layer.weight, "bias": layer.bias})
        layers.append(plain)
        if name != names[-1]:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def plain_epoch(model, data: DeviceData, optimizer, batch_size: int, generator) -> None:
    """A plain training loop: shuffled index batches of the on-device images."""
    model.train()
    for x, y in data.batches(batch_size, generator, drop_last=True):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=3200, help="images per timed chunk")
    parser.add_argument("--chunks", type=int, default=5, help="timed chunks per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed chunks per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or this process's CPU time (robust to other load "
                        "with --threads 1)")  # fmt: skip
    parser.add_argument("--data", default=None,
                        help="RGB CIFAR-10 .npz (default: cifar10 in the data root)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    x, y, source = images(args.images, args.data)
    pixels = x.reshape(-1, 3).astype(np.float64) / 255.0
    data = DeviceData(x, y, device, tuple(pixels.mean(0)), tuple(pixels.std(0)))

    models, optimizers, configs = {}, {}, {}
    for name, (preset, model_fields) in VARIANTS.items():
        overrides = {"model": {"arch": "mlp", "in_channels": 3, **model_fields},
                     "data": {"rgb": True}, "train": {**RECIPE, "device": args.device}}  # fmt: skip
        configs[name] = resolve_run_config(preset, 0, overrides)
        models[name] = model_from_config(configs[name].model, seed=0).to(device)
        optimizers[name] = make_optimizer(models[name], configs[name])
    plain = plain_copy(models["bp"]).to(device)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=RECIPE["lr"], amsgrad=True,
                                       weight_decay=RECIPE["weight_decay"])  # fmt: skip
    generator = torch.Generator(device=device).manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in ("plain", *models)}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for chunk in range(args.warmup + args.chunks):
        for name in times:
            sync()
            start = clock()
            if name == "plain":
                plain_epoch(plain, data, plain_optimizer, RECIPE["batch_size"], generator)
            else:
                train_epoch(models[name], data, optimizers[name], configs[name], generator,
                            None, device)  # fmt: skip
            sync()
            if chunk >= args.warmup:
                times[name].append(clock() - start)
    n_seen = len(data) // RECIPE["batch_size"] * RECIPE["batch_size"]
    what = "CPU time" if clock is time.process_time else "wall time"
    print(f"hardware: {hardware()}")
    print(f"MLP 3072-512x4-10, batch 32, Adam (AMSGrad); {source}, {n_seen} images per chunk, "
          f"median {what} of {args.chunks} interleaved chunks")  # fmt: skip
    print(f"{'variant':<8} {'ms/step':>8} {'images/s':>9} {'x plain':>8}")
    plain_rate = n_seen / statistics.median(times["plain"])
    for name, values in times.items():
        rate = n_seen / statistics.median(values)
        step_ms = 1000 * RECIPE["batch_size"] / rate
        print(f"{name:<8} {step_ms:8.2f} {rate:9.0f} {rate / plain_rate:8.2f}")


if __name__ == "__main__":
    main()
