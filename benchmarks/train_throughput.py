"""Training throughput of the full retina/VVS model: bp vs raf-r2 vs raf-r32.

CPU (default): images/s of a training step (forward, backward, RMSprop step) for each preset,
the presets interleaved over repeats so that they share the machine's state, median of the
repeats, with the ratios to bp.

GPU (``--device cuda --epochs N --data PATH``): trains ``bp`` and ``raf-r4`` on the full
grayscale training set for N epochs with the paper's recipe (whole data set on the device,
channels_last, optional ``--amp``) and reports images/s, epoch time and test accuracy.

    python benchmarks/train_throughput.py                      # CPU, side by side
    python benchmarks/train_throughput.py --epoch-check        # fft vs direct: same losses
    python benchmarks/train_throughput.py --device cuda --epochs 3 --data PATH [--amp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import retina_raf  # noqa: F401  (before torch: huge pages for large tensors, as in training)

# isort: split
import torch
import torch.nn.functional as F
from common import hardware

from retina_raf.config import parse_overrides, resolve_run_config
from retina_raf.models import build_model
from retina_raf.train import make_optimizer, train


def plain_copy(model: torch.nn.Module) -> torch.nn.Sequential:
    """What a user would otherwise write: the same network (and weights) from nn.Conv2d and
    nn.Linear, trained by autograd and torch's own RMSprop."""
    layers = []
    for name, block in model.layers.items():
        if hasattr(block, "conv"):
            conv = block.conv
            plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                    padding=conv.padding)  # fmt: skip
            plain.load_state_dict({"weight": conv.weight, "bias": conv.bias})
            layers += [plain, torch.nn.ReLU()]
        else:
            linear = block.linear
            plain = torch.nn.Linear(linear.in_features, linear.out_features)
            plain.load_state_dict({"weight": linear.weight, "bias": linear.bias})
            layers += [torch.nn.Flatten(), plain]
            if name != "fc_2":
                layers += [torch.nn.ReLU(), torch.nn.Dropout(model.cfg.retina.dropout)]
    return torch.nn.Sequential(*layers)


def cpu_side_by_side(
    presets, batch_size: int, repeats: int, warmup: int, clock=time.perf_counter
) -> None:
    """Images/s of one training step per variant, interleaved, with ratios to the plain copy
    and to bp. Variants: the plain copy, then each preset (``name`` or ``name:conv_impl``)."""
    models, optimizers, autocast = {}, {}, {}
    for variant in presets:
        spec, _, precision = variant.partition("+")  # bp+bf16: the step under CPU bf16 autocast
        if precision not in ("", "bf16"):
            raise SystemExit(f"unknown precision {precision!r} in {variant!r} (only +bf16)")
        autocast[variant] = precision == "bf16"
        name, _, others = spec.partition("@")  # raf-r2@bp: the other layers backprop
        preset, _, impl = name.partition(":")
        others = others or "raf"
        sets = [f"model.conv_impl={impl}"] if impl else []
        cfg = resolve_run_config(preset, 0, parse_overrides(sets), others=others)
        models[variant] = build_model(preset, seed=0, others=others,
                                      **parse_overrides(sets).get("model", {}))  # fmt: skip
        optimizers[variant] = make_optimizer(models[variant], cfg)
    plain = plain_copy(build_model("bp", seed=0))
    models = {"plain": plain, **models}
    autocast["plain"] = False
    cfg = resolve_run_config("bp")
    optimizers["plain"] = torch.optim.RMSprop(plain.parameters(), lr=cfg.train.lr,
                                              weight_decay=cfg.train.weight_decay)  # fmt: skip
    for model in models.values():
        model.train()
    x = torch.rand(batch_size, 1, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    times = {name: [] for name in models}
    for i in range(warmup + repeats):
        for name, model in models.items():
            optimizer = optimizers[name]
            start = clock()
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast[name]):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= warmup:
                times[name].append(clock() - start)
    print(f"hardware: {hardware()}")
    what = "CPU time" if clock is time.process_time else "wall time"
    print(f"full model, batch {batch_size}, median {what} of {repeats} interleaved steps")
    print(f"{'variant':<24} {'s/step':>8} {'images/s':>9} {'x plain':>8} {'step/bp':>8}")
    plain_step = statistics.median(times["plain"])
    bp_step = statistics.median(times["bp"]) if "bp" in times else float("nan")
    for name in models:
        step = statistics.median(times[name])
        print(f"{name:<24} {step:8.3f} {batch_size / step:9.1f} {plain_step / step:8.2f} "
              f"{step / bp_step:8.2f}")  # fmt: skip


def epoch_check(preset: str = "bp", others: str = "raf") -> None:
    """One epoch on the embedded sample with conv_impl fft, with direct under CPU bf16
    autocast and with direct in float32, from the same init, data order and dropout masks,
    next to a float-noise reference: direct again with every initial weight moved by about one
    ulp (relative 2^-23). Training amplifies any rounding difference, so a variant is "equal
    within float noise" when its distance from float32 direct is of the size of that
    reference's."""
    from retina_raf.data import Augmenter, DeviceData, load_cifar10

    print(f"hardware: {hardware()}")
    cfg = resolve_run_config(preset, 0, others=others)
    sample = load_cifar10(None)
    mean = float(sample.x_train.mean() / 255.0)
    std = float((sample.x_train / 255.0).std())
    data = DeviceData(sample.x_train, sample.y_train, torch.device("cpu"), mean, std)
    losses = {}
    variants = ("direct", "fft", "direct, bf16 autocast", "direct, init + 1 ulp")
    for variant in variants:
        impl = variant.split(",")[0]
        model = build_model(preset, seed=0, others=others, conv_impl=impl).train()
        if "ulp" in variant:
            with torch.no_grad():
                noise = torch.Generator().manual_seed(1)
                for p in model.parameters():
                    sign = torch.randint(0, 2, p.shape, generator=noise) * 2 - 1
                    p.mul_(1 + sign * 2.0**-23)
        optimizer = make_optimizer(model, cfg)
        shuffle = torch.Generator().manual_seed(0)
        augmenter = Augmenter(seed=1, device=torch.device("cpu"), max_shift=0.1, flip_prob=0.5)
        torch.manual_seed(2)  # the same dropout masks in every variant
        losses[variant] = []
        for x, y in data.batches(cfg.train.batch_size, shuffle, augmenter, drop_last=True):
            with torch.autocast("cpu", torch.bfloat16, enabled="bf16" in variant):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[variant].append(loss.item())
    steps = len(losses["direct"])
    print(f"{preset} (other layers {others}), one epoch of the embedded sample ({steps} steps "
          f"of {cfg.train.batch_size}): |loss - float32 direct's loss|")  # fmt: skip
    print(f"{'variant':<22} {'step 1':>9} {'step 10':>9} {'max':>9} {'epoch mean':>11}")
    reference = torch.tensor(losses["direct"])
    for variant in variants[1:]:
        diff = (torch.tensor(losses[variant]) - reference).abs()
        epoch = abs(sum(losses[variant]) - sum(losses["direct"])) / steps
        print(f"{variant:<22} {diff[0]:9.2e} {diff[9]:9.2e} {diff.max():9.2e} {epoch:11.2e}")


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
    parser.add_argument("--presets", nargs="+",
                        default=["bp", "bp:direct", "raf-r2", "raf-r32", "raf-r2@bp"],
                        help="CPU: presets to time, as preset[:conv_impl][@unconstrained rule], "
                        "e.g. bp:direct or raf-r2@bp; a +bf16 suffix times the step under CPU bf16 "
                        "autocast, e.g. raf-r2:direct@bp+bf16")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or this process's CPU time (robust to other load "
                        "with --threads 1)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="GPU: epochs per preset")
    parser.add_argument("--data", default=None, help="GPU: full CIFAR-10 (npz or folder)")
    parser.add_argument("--amp", action="store_true", help="GPU: bf16 autocast")
    parser.add_argument("--epoch-check", metavar="PRESET[@OTHERS]", nargs="?", const="bp",
                        help="one epoch of the sample: fft and bf16 autocast vs float32 direct "
                        "losses (default preset bp)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epoch_check:
        preset, _, others = args.epoch_check.partition("@")
        epoch_check(preset, others or "raf")
    elif args.device == "cpu":
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        cpu_side_by_side(args.presets, args.batch_size, args.repeats, args.warmup, clock)
    else:
        if args.data is None:
            parser.error("--device cuda needs --data (the full grayscale CIFAR-10)")
        gpu_epochs(("bp", "raf-r4"), args.epochs, args.data, args.amp)


if __name__ == "__main__":
    main()
