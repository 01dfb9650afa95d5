"""The benchmarks compare the package with what a user would otherwise write: that reference
must be the same network, or a ratio says nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # a benchmark imports its neighbours
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plain_pytorch_copy_computes_the_models_logits(monkeypatch):
    """train_throughput's plain copy (nn.Conv2d, nn.Linear, autograd) of the default retina
    model has its weights and gives its logits, in eval mode (dropout off)."""
    bench = _load("train_throughput", monkeypatch)
    model = bench.build_model("bp", seed=0).eval()
    plain = bench.plain_copy(model).eval()
    images = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(plain(images), model(images), rtol=1e-4, atol=1e-5)
    dropouts = [m.p for m in plain.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [model.cfg.retina.dropout]
