"""Through what does a layer's feedback train the layers below it? Its readout, and the RFs
of the readout's units.

A RAF convolution (docs/design.md#learning-rules-conv2d) with input h (b, n, H, W), weight
W (m, n, kh, kw), feedback Q (r, n, kh, kw) and P (r, m) sends the layers below it

    g = conv2d_input(h.shape, Q, e),    e = P delta    (b, r, H', W')

where delta is the error at its output. ``conv2d_input`` is the adjoint of the convolution
``z = conv2d(h, Q)`` (W's stride, padding and dilation), so g is the gradient of <e, z>
with respect to h, and every parameter theta below the layer gets

    dL/dtheta = <g, dh/dtheta> = <e, dz/dtheta>:

the layers below learn exactly as if their output h were read out by the r channels of z,
and z received the error e. z is the **readout** of the feedback, the bottleneck that a
rank-r feedback puts behind the retina: the backward counterpart of Lindsey et al.'s
feedforward bottleneck, whose units are the retina's own output channels. The RFs of z's
units (:func:`readout_rfs`) say which patterns of the image the error trains the retina to
signal. Backprop is the case Q = W, P = I (z is the layer's pre-activation without its bias,
m channels); under ``tie_q`` Q = W^T P^T in Q's layout (z = P applied to the pre-activation).

A run's checkpoint holds W, Q and P of its latest epoch only (the retina snapshots keep the
retina alone), so the readout is mapped at each run's checkpoint: finished or in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import xarray as xr
import yaml
from torch import nn

from retina_raf.errors import DataError


def readout_kernel(module: nn.Module) -> torch.Tensor:
    """The kernel K of the readout ``z = conv2d(h, K)`` of a convolution's feedback,
    (r, n, kh, kw): Q for a RAF layer, W^T P^T (:meth:`transported_weight`) under ``tie_q``
    (Q is set to it before every backward), W for a backprop convolution.

    Raises:
        DataError: not a convolution, or a feedback layer of another kind (dRAF).
    """
    if not isinstance(module, nn.Conv2d):
        raise DataError(f"the readout is defined for convolutions, not {type(module).__name__}")
    if hasattr(module, "q") and hasattr(module, "transported_weight"):
        return module.transported_weight() if module.tie_q else module.q
    if hasattr(module, "q") or hasattr(module, "p"):
        raise DataError(f"no readout for the feedback of {type(module).__name__}")
    return module.weight


class FeedbackReadout(nn.Module):
    """``z = conv2d(h, K)``: the readout through which the feedback of ``layer`` trains the
    layers below it (module docstring), with h the input of ``layer``'s convolution and K
    :func:`readout_kernel` (detached: the readout is probed, not trained).

    It stands in the model's place for :func:`analysis.rf.extract_rfs`: ``layer_names`` are
    the model's layers below ``layer`` and then ``name`` (``"<layer>_readout"``), at
    ``layer``'s depth (so that its center unit sees the same pixels, the crop box of its
    RFs), and ``activation(x, name)`` (or ``forward(x)``) is z, (B, r, H', W') for images
    (B, C, S, S). The forward pass of the model stops at ``layer``'s input.
    """

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        layers = model.weight_layers()
        if layer not in layers:
            raise DataError(f"unknown layer {layer!r} (the model's: {', '.join(layers)})")
        if getattr(model, "direct", None) is not None:
            raise DataError(
                "a dRAF model: the layers below its direct target learn through the direct "
                f"feedback, not through {layer}'s"
            )
        self.model, self.conv, self.cfg = model, layers[layer], model.cfg
        self.kernel = readout_kernel(self.conv).detach().clone()
        self.name = f"{layer}_readout"
        names = list(model.layer_names)
        self.layer_names = [*names[: names.index(layer)], self.name]

    def activation(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """z for ``layer == name``, else the model's activation of a layer below."""
        if layer == self.name:
            return self(x)
        if layer not in self.layer_names:
            raise DataError(f"unknown layer {layer!r} (allowed: {', '.join(self.layer_names)})")
        return self.model.activation(x, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured = {}

        class _InputReached(Exception):
            pass

        def hook(_module, inputs):
            captured["h"] = inputs[0]
            raise _InputReached  # nothing from the layer on is needed

        handle = self.conv.register_forward_pre_hook(hook)
        try:
            self.model(x)
        except _InputReached:
            pass
        finally:
            handle.remove()
        h = captured["h"]
        return F.conv2d(h, self.kernel.to(h.device, h.dtype), None, self.conv.stride,
                        _padding(self.conv), self.conv.dilation)  # fmt: skip


def _padding(conv: nn.Conv2d):
    return getattr(conv, "explicit_padding", conv.padding)


def readout_rfs(
    run_dir: str | Path, layer: str = "vvs_1", method: str = "actmax", **rf_options
) -> xr.DataArray:
    """RFs of the center units of the readout of ``layer``'s feedback (module docstring), at
    the run's checkpoint (its latest epoch; finished or in flight).

    Returns:
        :func:`analysis.rf.extract_rfs`'s DataArray ``rf`` (channel: the readout's r units,
        y, x), with the attributes ``readout_of`` (``layer``), ``readout_rule`` and
        ``readout_epoch`` (the checkpoint's last finished epoch; one written mid-epoch, by
        a stop signal, holds a few steps more).

    Raises:
        RunError: no checkpoint; DataError: ``layer`` is no convolution or has no readout.
    """
    from analysis.alignment import checkpoint_layer
    from analysis.rf import extract_rfs

    run_dir = Path(run_dir)
    cfg, state, model, _ = checkpoint_layer(run_dir, layer)
    model.eval()
    readout = FeedbackReadout(model, layer).eval()
    rfs = extract_rfs(readout, readout.name, method, input_shape=_input_shape(cfg),
                      progress=False, **rf_options)  # fmt: skip
    return rfs.assign_attrs(
        readout_of=layer,
        readout_rule=cfg.model.layer_rule.get(layer, cfg.model.rule),
        readout_epoch=len(state["history"]),
    )


def _input_shape(cfg) -> tuple[int, int, int]:
    return (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)


def readout_dataset(
    run_dirs: Sequence[str | Path], layer: str = "vvs_1", method: str = "actmax", **rf_options
) -> xr.Dataset:
    """:func:`readout_rfs` and their metrics (:func:`analysis.metrics.rf_metrics`) of several
    runs stacked along ``run`` (a results-style dataset: run coordinates with ``finished``,
    ``rf`` (run, channel, y, x), ``responsive``, ``activation``, every metric and ``rf_class``
    (run, channel), ``present`` False where a run has fewer readout units, ``readout_epoch``
    (run): the checkpoint's last finished epoch; attribute ``readout_of``: the layer). Write
    it with :func:`analysis.results.write_results`, read it with
    :func:`analysis.results.open_results`."""
    from analysis import stacking
    from analysis.metrics import rf_metrics
    from analysis.provenance import KIND_RF_RESULTS

    if not run_dirs:
        raise DataError("no run folders given")

    def reduce(run) -> xr.Dataset:
        rfs = readout_rfs(run.path, layer, method, **rf_options)
        metrics = rf_metrics(rfs)
        ds = metrics.drop_vars([c for c in metrics.coords if c != "channel"], errors="ignore")
        ds["rf"] = rfs.reset_coords(drop=True)
        for name in ("responsive", "activation"):
            ds[name] = rfs[name].reset_coords(drop=True)
        ds["readout_epoch"] = rfs.attrs["readout_epoch"]
        options = {f"rf_{k}": v for k, v in rfs.attrs.items() if not k.startswith("readout")}
        measured = {k: v for k, v in metrics.attrs.items() if not k.startswith("readout")}
        return ds.drop_attrs(deep=False).assign_attrs({**options, **measured,
                                                       "readout_of": layer})  # fmt: skip

    def identity(run) -> dict:
        return {**stacking.run_coords(run), "finished": run.finished}

    return stacking.stack_runs([Path(d) for d in run_dirs], reduce, kind=KIND_RF_RESULTS,
                               identity=identity, attrs="first",
                               require_finished=False)  # fmt: skip


def experiment_runs_with_readout(
    experiment: str | Path, runs_dir: str | Path, layer: str = "vvs_1"
) -> list[Path]:
    """Run folders of an experiment that have a checkpoint and whose retina learns through
    ``layer``'s feedback (any rule of ``layer``; not dRAF), in the experiment's order."""
    from analysis.alignment import experiment_runs_with_learned_feedback
    from retina_raf import runs
    from retina_raf.plan import RULE_NAMES

    found = experiment_runs_with_learned_feedback(experiment, runs_dir, layer, rules=RULE_NAMES)
    return [run for run in found if runs.load_config(run).model.direct_target is None]


def with_earlier_readouts(
    readout: xr.Dataset | None, earlier: xr.Dataset, planned: Sequence[str] | None = None
) -> xr.Dataset:
    """:func:`readout_dataset` of the runs read now (or None) with the runs of an earlier
    readout file that it lacks (:func:`analysis.stacking.with_earlier_runs`; ``planned``:
    the run ids that may be kept, in their order). A run read now at an earlier epoch than
    the earlier file's (started again from scratch) keeps the earlier readout until it has
    caught up with it."""
    from analysis.stacking import with_earlier_runs

    published = dict(zip(earlier["run_id"].values.astype(str),
                         earlier["readout_epoch"].values.astype(int), strict=True))  # fmt: skip
    behind = [] if readout is None else [
        run_id for run_id, epoch in zip(readout["run_id"].values.astype(str),
                                        readout["readout_epoch"].values, strict=True)
        if epoch < published.get(run_id, -1)
    ]  # fmt: skip
    return with_earlier_runs(readout, earlier, keep=planned, order=planned,
                             prefer_earlier=behind)  # fmt: skip


def readout_table(readout: xr.Dataset) -> str:
    """A Markdown table of :func:`readout_dataset`: per run its condition, seed, epoch, the
    rule of the layer, the readout's units and how many respond, their mean symmetry and
    OSI, and the fractions center-surround and oriented (of the responsive units)."""
    layer = readout.attrs.get("readout_of", "?")
    header = ["condition", "seed", "epoch", f"rule of {layer}", "readout units", "responsive",
              "symmetry", "OSI", "center-surround", "oriented"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in range(readout.sizes["run"]):
        one = readout.isel(run=run)
        present = one["present"].values.astype(bool)
        responsive = present & one["responsive"].values.astype(bool)
        classes = one["rf_class"].values[responsive]
        n = int(responsive.sum())
        means = [float(one[name].values[responsive].mean()) if n else None
                 for name in ("symmetry", "osi")]  # fmt: skip
        fractions = [float((classes == c).mean()) if n else None
                     for c in ("center-surround", "oriented")]  # fmt: skip
        config = yaml.safe_load(str(one["config"].values)) if "config" in one else {}
        model = (config or {}).get("model", {})
        rule = model.get("layer_rule", {}).get(layer, model.get("rule", "?"))
        cells = [str(one["preset"].values), str(int(one["seed"].values)),
                 str(int(one["readout_epoch"].values)), str(rule), str(int(present.sum())),
                 str(n)]  # fmt: skip
        cells += ["\u2013" if v is None else f"{v:.2f}" for v in means + fractions]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
