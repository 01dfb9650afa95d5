"""RF extraction: all channels in one batched pass on the center units' support, against the
whole image and against one channel at a time.

The principle: docs/design.md#performance-principles.

Times ``analysis.rf.extract_rfs`` on the full retina/VVS model (``build_model("bp")``,
32 retina_2 channels) for each method: as it runs (every channel in one batch, the layer
computed on the 17 x 17 window its center units see, ``CenterUnits.restrict_to``), with the
layer computed on the whole 32 x 32 image (the window refused), and looped (``channels=[c]``
for each channel c, on the whole image), and prints the ratios measured in the same run and
the largest difference the window makes to an RF (max |RF - RF whole| / max |RF whole|).
Weights are random: the cost does not depend on training. The step and sample counts are
smaller than the defaults so that the loop finishes on a laptop CPU; both sides use the
same options, so the ratio is what matters.

    .venv/bin/python benchmarks/rf_extraction.py [--threads N] [--device cpu|cuda] ...
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from common import cpu_name

from analysis.rf import extract_rfs
from analysis.rf.objectives import CenterUnits
from retina_raf.models import build_model


@contextlib.contextmanager
def whole_image():
    """Inside the block the center units refuse every window: the layer sees all pixels."""
    restrict = CenterUnits.restrict_to
    CenterUnits.restrict_to = lambda self, support: False
    try:
        yield
    finally:
        CenterUnits.restrict_to = restrict


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` wall-clock runs, in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="retina_2")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--starts", type=int, default=2, help="actmax n_starts")
    parser.add_argument("--steps", type=int, default=5, help="actmax n_steps")
    parser.add_argument("--samples", type=int, default=256, help="sta n_samples")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", default="gradient,actmax,sta")
    parser.add_argument("--no-loop", action="store_true", help="skip the slow channel loop")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model("bp", seed=0).to(args.device)
    n_channels = model.activation(torch.zeros(1, 1, 32, 32, device=args.device), args.layer)
    n_channels = n_channels.shape[1]
    options = {
        "gradient": {},
        "actmax": {"n_starts": args.starts, "n_steps": args.steps},
        "sta": {"n_samples": args.samples, "batch_size": args.samples},
    }
    common = {"device": args.device, "progress": False}

    print(f"RF extraction, layer {args.layer} of build_model('bp'): {n_channels} channels")
    print(f"hardware: {cpu_name()}; device {args.device}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} CPU threads")  # fmt: skip
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    print()
    header = (f"{'method':<9} {'options':<26} {'window s':>9} {'whole s':>9} {'loop s':>9} "
              f"{'whole/window':>13} {'loop/window':>12} {'RF difference':>14}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for method in args.methods.split(","):
        opts = options[method]

        def batched(method=method, opts=opts):
            return extract_rfs(model, args.layer, method, **common, **opts)

        def looped(method=method, opts=opts):
            with whole_image():
                return [
                    extract_rfs(model, args.layer, method, channels=[c], **common, **opts)
                    for c in range(n_channels)
                ]

        t_window = best_time(batched, args.repeats)
        with whole_image():
            t_whole = best_time(batched, args.repeats)
            whole = batched()
        t_looped = float("nan") if args.no_loop else best_time(looped, args.repeats)
        windowed = batched()
        scale = float(abs(whole.values).max()) or 1.0
        difference = float(abs(windowed.values - whole.values).max()) / scale
        described = ", ".join(f"{k}={v}" for k, v in opts.items()) or "-"
        print(f"{method:<9} {described:<26} {t_window:>9.3f} {t_whole:>9.3f} {t_looped:>9.3f} "
              f"{t_whole / t_window:>12.1f}x {t_looped / t_window:>11.1f}x "
              f"{difference:>14.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
