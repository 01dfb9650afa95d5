"""The readout through which a layer's feedback trains the layers below it
(analysis.feedback_readout).

Claims: a RAF convolution sends the layers below it conv2d_input(Q, P delta), the gradient of
<P delta, z> for the readout z = conv2d(h, Q) of its input h; so every parameter below gets,
from a training backward, exactly the gradient of <P delta, z>: the retina learns as if read
out by z's r units. Under backprop (Q = W, P = I) z is the layer's pre-activation without its
bias. A dRAF model and a layer of another kind have no such readout and are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis.feedback_readout import FeedbackReadout, readout_kernel
from retina_raf.errors import DataError
from retina_raf.models import build_model

SMALL = {"vvs_layers": 2, "fc_units": 16, "retina_channels": 4, "vvs_channels": 6,
         "kernel_size": 5}  # fmt: skip
RETINA = ("layers.retina_1.conv.weight", "layers.retina_1.conv.bias",
          "layers.retina_2.conv.weight", "layers.retina_2.conv.bias")  # fmt: skip


def _retina_gradients(model: nn.Module) -> list[torch.Tensor]:
    named = dict(model.named_parameters())
    return [named[name].grad.clone() for name in RETINA]


@pytest.mark.parametrize("preset", ["raf-r2", "raf-aligned-r2", "bp"])
def test_the_retina_learns_exactly_through_the_readout_of_the_feedback(preset):
    """A training backward (cross-entropy through the whole network) gives the retina the
    gradient of <e, z>: e = P delta the error the feedback of vvs_1 carries (delta at vvs_1's
    output; backprop: e = delta), z the readout of vvs_1's input."""
    torch.manual_seed(0)
    model = build_model(preset, others="bp", seed=0, **SMALL).double().eval()
    images, labels = torch.randn(3, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 7])
    conv = model.weight_layers()["vvs_1"]
    captured = {}

    def keep_output(_module, _inputs, output):
        output.retain_grad()
        captured["y"] = output

    handle = conv.register_forward_hook(keep_output)
    p = conv.p.detach().clone() if hasattr(conv, "p") else None
    nn.functional.cross_entropy(model(images), labels).backward()
    handle.remove()
    trained = _retina_gradients(model)
    delta = captured["y"].grad
    if p is None:
        p = torch.eye(delta.shape[1], dtype=delta.dtype)
    else:  # the P this backward projected with (raf_aligned sets P from the error in it)
        with torch.no_grad():
            conv.p.copy_(p)
    error = torch.einsum("rm,bmyx->bryx", p, delta)

    model.zero_grad()
    readout = FeedbackReadout(model, "vvs_1")
    z = readout(images)
    assert z.shape == error.shape  # (batch, r, H', W'): r = 2 at rank 2, 6 under backprop
    (z * error).sum().backward()
    for name, want, got in zip(RETINA, trained, _retina_gradients(model), strict=True):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), name


def test_under_backprop_the_readout_is_the_layers_pre_activation_without_bias():
    model = build_model("bp", seed=0, **SMALL).eval()
    conv = model.weight_layers()["vvs_1"]
    captured = {}
    handle = conv.register_forward_hook(lambda _m, _i, output: captured.update(y=output))
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model(images)
        handle.remove()
        z = FeedbackReadout(model, "vvs_1")(images)
    want = captured["y"] - conv.bias[None, :, None, None]
    assert torch.allclose(z, want, atol=1e-5)
    assert readout_kernel(conv) is conv.weight


def test_the_readout_of_a_raf_layer_is_q_and_under_tie_q_w_transported():
    raf = build_model("raf-r2", others="bp", seed=0, **SMALL).weight_layers()["vvs_1"]
    assert readout_kernel(raf) is raf.q and raf.q.shape[0] == 2
    aligned = build_model("raf-aligned-r2", others="bp", seed=0, **SMALL).weight_layers()["vvs_1"]
    assert torch.equal(readout_kernel(aligned), aligned.transported_weight())


def test_drAF_and_layers_without_a_convolutional_readout_are_refused():
    draf = build_model("draf-bottleneck-2", seed=0, **SMALL)
    with pytest.raises(DataError, match="dRAF"):
        FeedbackReadout(draf, "vvs_1")
    bp = build_model("bp", seed=0, **SMALL)
    with pytest.raises(DataError, match="unknown layer 'vvs_9'"):
        FeedbackReadout(bp, "vvs_9")
    with pytest.raises(DataError, match="convolutions"):
        readout_kernel(bp.weight_layers()["fc_1"])


# ------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, tiny_config):
    from retina_raf.train import train

    out = tmp_path_factory.mktemp("runs")
    raf = train(tiny_config("raf-r2", epochs=1), out, log=lambda m: None)
    bp = train(tiny_config("bp", epochs=1), out, log=lambda m: None)
    return raf, bp


def test_the_command_maps_the_readout_of_each_run_and_writes_its_files(
    trained_runs, run_cli, tmp_path
):
    """One table row per run (raf: 2 readout units; backprop: as many as vvs_1 has channels),
    the RFs and metrics as a results file, one montage per run."""
    from analysis.results import open_results

    raf, bp = trained_runs
    results, figures = tmp_path / "readout.nc", tmp_path / "figures"
    code, printed, err = run_cli("feedback-rfs", raf, bp, "--results", results,
                                 "--figures", figures, "--method", "gradient")  # fmt: skip
    assert code == 0, err
    rows = [row.split(" | ") for row in printed.strip().splitlines()[2:]]
    assert [(row[3], row[4]) for row in rows] == [("raf", "2"), ("bp", "4")]
    readout = open_results(results)
    assert readout.attrs["readout_of"] == "vvs_1" and readout.attrs["rf_layer"] == "vvs_1_readout"
    assert list(readout["readout_epoch"].values) == [1, 1]
    assert readout["present"].sum("channel").values.tolist() == [2, 4]
    assert sorted(p.name for p in figures.iterdir()) == sorted(
        f"readout_{run.name}.png" for run in (raf, bp)
    )


def test_the_command_refuses_a_results_file_that_is_not_netcdf_before_any_mapping(
    trained_runs, run_cli, tmp_path
):
    raf, _ = trained_runs
    code, _, err = run_cli("feedback-rfs", raf, "--results", tmp_path / "readout.txt")
    assert code == 2 and ".nc" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "readout.txt").exists()


def test_the_command_keeps_the_readout_of_a_run_whose_folder_is_gone(
    trained_runs, run_cli, tmp_path
):
    """With --keep-earlier, the runs of the existing --results file that are not read now
    keep their published readout (in_runs_dir False); without it, the file holds only the
    runs read now; --keep-earlier without --results is refused."""
    from analysis.results import open_results, write_results

    raf, bp = trained_runs
    results = tmp_path / "readout.nc"
    common = ("--results", results, "--method", "gradient")
    code, first_table, err = run_cli("feedback-rfs", raf, bp, *common)
    assert code == 0, err
    with open_results(results) as first:
        raf_rf = first["rf"].isel(run=0).where(first["present"].isel(run=0), drop=True)
    code, printed, err = run_cli("feedback-rfs", bp, *common, "--keep-earlier")
    assert code == 0, err
    assert f"{raf.name}: kept from" in err
    with open_results(results) as kept:
        assert kept["run_id"].values.tolist() == [bp.name, raf.name]
        assert kept["in_runs_dir"].values.tolist() == [True, False]
        np.testing.assert_array_equal(
            kept["rf"].isel(run=1).sel(channel=raf_rf["channel"]).values, raf_rf.values
        )
    assert sorted(printed.strip().splitlines()[2:]) == sorted(first_table.strip().splitlines()[2:])
    # raf started again: a readout of an earlier epoch than the file's does not replace it
    with open_results(results) as kept:
        ahead = kept.load().assign(readout_epoch=("run", [1, 5]))
    write_results(ahead, results)
    code, printed, err = run_cli("feedback-rfs", bp, raf, *common, "--keep-earlier")
    assert code == 0, err
    with open_results(results) as behind:
        assert behind["readout_epoch"].values.tolist() == [1, 5]
        assert behind["in_runs_dir"].values.tolist() == [True, False]
    code, _, err = run_cli("feedback-rfs", bp, *common)
    assert code == 0, err
    with open_results(results) as without:
        assert without["run_id"].values.tolist() == [bp.name]
    code, _, err = run_cli("feedback-rfs", bp, "--keep-earlier")
    assert code == 2 and "--keep-earlier needs --results" in err
