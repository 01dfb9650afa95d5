"""Sweeps (docs/design.md#sweeps): experiment files expand into stable runs; a sweep trains each run
once, skips finished runs, resumes interrupted ones, and concurrent sweeps never collide."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

from retina_raf.errors import ConfigError
from retina_raf.sweep import (
    DONE_FILE,
    SlurmConfig,
    expand,
    load_experiment,
    lock_holder,
    run_dir,
    run_lock,
    run_slurm,
    run_state,
    run_sweep,
    train_run,
)

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
# A network and data set small enough that a run takes seconds on a CPU. Not deterministic:
# these tests compare no weights, and torch's deterministic mode costs seconds per process.
TINY = {
    "model": {
        "retina": {
            "retina_channels": 4,
            "vvs_channels": 4,
            "vvs_layers": 1,
            "kernel_size": 5,
            "fc_units": 16,
        }
    },
    "train": {"epochs": 1, "batch_size": 64, "progress": False, "deterministic": False},
    "data": {"train_limit": 128, "test_limit": 64},
}


def write_experiment(folder: Path, name: str = "exp", **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **fields}, sort_keys=False))
    return path


def ids(path: Path) -> list[str]:
    return [run.run_id for run in expand(load_experiment(path))]


def journal_events(out: Path) -> list[tuple[str, str, str]]:
    """(pid, event, run_id) of every line of the sweep journal."""
    events = []
    for line in (out / "sweep.log").read_text().splitlines():
        words = line.split()
        pid = next(w for w in words if w.startswith("pid="))
        i = words.index(pid) + 1
        while words[i].startswith(("job=", "gpu=")):
            i += 1
        events.append((pid, words[i], words[i + 1]))
    return events


# ------------------------------------------------------------------ experiment files
def test_fig4_file_is_the_papers_grid_and_recipe():
    """Fig. 4: bp, bp-bottleneck-{1,2,4}, raf-r{2,4,32}, draf-bottleneck-4, 5 seeds, RMSprop
    lr 1e-4, weight decay 1e-5, decay 0.985, 120 epochs (appendix C)."""
    exp = load_experiment(EXPERIMENTS / "fig4_feedback_bottleneck.yaml")
    runs = expand(exp)
    presets = ["bp", "bp-bottleneck-1", "bp-bottleneck-2", "bp-bottleneck-4"]
    presets += ["raf-r2", "raf-r4", "raf-r32", "draf-bottleneck-4"]
    assert sorted({(r.preset, r.seed) for r in runs}) == sorted(
        (p, s) for p in presets for s in range(5)
    )
    assert len(runs) == 40 and len({r.run_id for r in runs}) == 40
    for run in runs:
        t = run.config().train
        assert (t.optimizer, t.lr, t.weight_decay, t.lr_decay, t.epochs) == (
            "rmsprop", 1e-4, 1e-5, 0.985, 120,
        )  # fmt: skip
        assert run.config().model.retina.vvs_layers == 3
        assert run.run_id.startswith(f"{run.preset}-s{run.seed}")
    ranks = {r.preset: r.config().model.layer_rank.get("vvs_1") for r in runs}
    assert (ranks["raf-r2"], ranks["raf-r4"], ranks["raf-r32"]) == (2, 4, 32)


def test_lindsey_file_sweeps_the_bottleneck_width_with_backprop():
    """Lindsey et al.: N_bn in {1, 2, 4, 8, 16, 32}, backprop everywhere, 10 seeds."""
    runs = expand(load_experiment(EXPERIMENTS / "lindsey_bottleneck.yaml"))
    assert len(runs) == 60 and len({r.run_id for r in runs}) == 60
    configs = [r.config() for r in runs]
    assert sorted({c.model.retina.n_bn for c in configs}) == [1, 2, 4, 8, 16, 32]
    assert {c.seed for c in configs} == set(range(10))
    assert {c.model.rule for c in configs} == {"bp"} and not any(
        c.model.layer_rule for c in configs
    )
    assert all(f"n_bn{r.config().model.retina.n_bn}-" in r.run_id for r in runs)


def test_smoke_file_is_tiny():
    """smoke.yaml trains in seconds: a few runs, tiny network, few images, few epochs."""
    runs = expand(load_experiment(EXPERIMENTS / "smoke.yaml"))
    assert 2 <= len(runs) <= 4
    for run in runs:
        cfg = run.config()
        assert cfg.train.epochs <= 2 and cfg.data.train_limit <= 512
        assert cfg.model.retina.vvs_channels <= 8 and cfg.model.retina.fc_units <= 32


def test_ids_are_stable_unique_and_do_not_depend_on_spelling(tmp_path):
    """The same grid written two ways gives the same ids, in any process; every run of a
    grid has its own id; a changed setting changes the id; placement settings and the
    number of epochs (more epochs extend a run) do not."""
    a = write_experiment(
        tmp_path / "a", presets=["bp", "raf-r4"], seeds=2, ranks=[None],
        overrides={"train": {"epochs": 3, "lr": 1e-3}}, grid={"model.retina.n_bn": [8, 32]},
    )  # fmt: skip
    (tmp_path / "b").mkdir()
    b = tmp_path / "b" / "exp.yaml"  # short keys, dotted keys, other key order
    b.write_text(
        "grid: {n_bn: [8, 32]}\noverrides: {lr: 0.001, train.epochs: 3}\n"
        "seeds: [0, 1]\npresets: [bp, raf-r4]\nname: exp\n"
    )
    first = ids(a)
    assert first == ids(b) == ids(a)
    assert len(set(first)) == len(first) == 8
    assert first[0].startswith("bp-n_bn8-s0-") and first[-1].startswith("raf-r4-n_bn32-s1-")

    code = (
        "import json, sys; from retina_raf.sweep import load_experiment;"
        "from retina_raf.sweep import expand;"
        "print(json.dumps([r.run_id for r in expand(load_experiment(sys.argv[1]))]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", code, str(a)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert json.loads(other.stdout) == first, other.stderr

    plain = write_experiment(tmp_path, "plain", presets=["bp"], seeds=2)
    assert ids(plain) == ["bp-s0", "bp-s1"]  # nothing differs from the preset: no hash
    placed = write_experiment(
        tmp_path, "placed", presets=["bp"], seeds=2, data=str(tmp_path / "elsewhere.npz"),
        overrides={"train": {"device": "cpu", "progress": False, "epochs": 4}},
    )  # fmt: skip
    assert ids(placed) == ["bp-s0", "bp-s1"]
    changed = write_experiment(tmp_path, "changed", presets=["bp"], seeds=2,
                               overrides={"train": {"lr": 0.001}})  # fmt: skip
    assert ids(changed)[0].startswith("bp-s0-") and ids(changed)[0] != ids(plain)[0]


def test_ranks_axis_sets_the_rank_of_the_feedback_into_the_retina(tmp_path):
    """ranks x presets: rank r sets vvs_1's RAF rank; over a raf-r<k> preset it relabels the
    preset raf-r<r> (run id, preset, the results' preset coordinate), so that no run called
    raf-r32 has a rank-2 feedback."""
    path = write_experiment(tmp_path, presets=["raf-r32"], ranks=[2, 8], seeds=1)
    runs = expand(load_experiment(path))
    assert [r.config().model.layer_rank["vvs_1"] for r in runs] == [2, 8]
    assert [r.preset for r in runs] == ["raf-r2", "raf-r8"]
    assert [r.config().preset for r in runs] == ["raf-r2", "raf-r8"]
    assert [r.run_id for r in runs] == ["raf-r2-s0", "raf-r8-s0"]  # the presets' own runs
    clash = write_experiment(tmp_path, "clash", presets=["raf-r2", "raf-r4"], ranks=[2])
    with pytest.raises(ConfigError, match="same run 'raf-r2-s0'"):
        expand(load_experiment(clash))


def test_old_others_key_still_reads_as_unconstrained_rule(tmp_path):
    """Experiment files written with `others:` keep working (with a deprecation warning)."""
    path = write_experiment(tmp_path, presets=["raf-r4"], others="bp")
    with pytest.warns(FutureWarning, match="unconstrained_rule"):
        exp = load_experiment(path)
    assert exp.unconstrained_rule == "bp"
    assert expand(exp)[0].config().model.rule == "bp"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"seed": 3}, "'seed'"),
        ({"overrides": {"train": {"epoch": 3}}}, "train.epoch"),
        ({"overrides": {"epoch": 3}}, "'epoch'"),
        ({"overrides": {"model": {"n_bn": 0}}}, "model.retina.n_bn"),
        ({"grid": {"model.retina.n_bn": [4, 0]}}, "model.retina.n_bn"),
        ({"grid": {"model.retina.n_bn": 4}}, "grid.model.retina.n_bn"),
        ({"grid": {"model.retina.n_bn": [4, 4]}}, "grid.model.retina.n_bn"),
        ({"grid": {"seed": [1, 2]}}, "'seed'"),
        ({"presets": ["bp", "raf-rx"]}, "raf-rx"),
        ({"presets": []}, "presets"),
        ({"seeds": -1}, "seeds"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"ranks": [2]}, "ranks"),  # bp sends backprop, not RAF, into the retina
        ({"slurm": {"partiton": "gpu"}}, "slurm.partiton"),
        ({"slurm": {"time_min": 0}}, "slurm.time_min"),
        ({"unconstrained_rule": "fa"}, "unconstrained_rule"),
        ({"others": "bp", "unconstrained_rule": "bp"}, "only one"),
    ],
)
def test_invalid_file_names_the_bad_key(tmp_path, fields, named):
    """Validation on load: a bad key or value fails before anything runs, naming the file
    and the key."""
    path = write_experiment(tmp_path, **{"presets": ["bp"], **fields})
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert message.startswith(str(path)) and named in message, message


def test_cli_invalid_file_one_line_exit_2_nothing_written(tmp_path, run_cli):
    """The CLI prints one line naming the key, exits 2 and creates no output folder."""
    path = write_experiment(tmp_path, presets=["bp"], overrides={"model": {"n_bnn": 4}})
    code, out, err = run_cli("sweep", path, "--out", tmp_path / "out")
    assert code == 2 and "model.n_bnn" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli("sweep", EXPERIMENTS / "smoke.yaml", "--slurm", "time_min=-3")
    assert code == 2 and "slurm.time_min" in err


def test_missing_data_set_fails_before_anything_runs(tmp_path, run_cli):
    """A sweep whose data set is missing stops before training or submitting a run."""
    path = write_experiment(tmp_path, presets=["bp"], overrides=TINY)
    code, _, err = run_cli("sweep", path, "--out", tmp_path / "out", "--data", tmp_path / "no.npz")
    assert code == 2 and "no.npz" in err
    assert not list((tmp_path / "out").glob("bp-*"))


# ----------------------------------------------------------------- states and locks
def test_dry_run_lists_every_run_with_its_state(tmp_path, run_cli):
    """--dry-run shows done / running / failed / interrupted / pending, and writes nothing."""
    path = write_experiment(tmp_path, presets=["bp"], seeds=5, overrides=TINY)
    out = tmp_path / "out"
    done, running, failed, interrupted, pending = expand(load_experiment(path))
    run_dir(out, done).mkdir(parents=True)
    (run_dir(out, done) / DONE_FILE).write_text("finished 1 epochs\n")
    run_dir(out, interrupted).mkdir()
    (run_dir(out, interrupted) / "checkpoint.pt").write_bytes(b"")
    (out / "logs").mkdir()
    (out / "logs" / f"{failed.run_id}.err").write_text("Traceback...\nRunError: diverged\n")

    def files() -> list[Path]:
        return sorted(p.relative_to(out) for p in out.rglob("*") if ".locks" not in p.parts)

    before = files()
    with run_lock(out, running) as mine:
        assert mine
        code, text, _ = run_cli("sweep", path, "--out", out, "--dry-run")
    assert files() == before
    assert code == 0
    states = {line.split()[0]: line.split()[1] for line in text.splitlines()[:-1]}
    assert states == {done.run_id: "done", running.run_id: "running", failed.run_id: "failed",
                      interrupted.run_id: "interrupted", pending.run_id: "pending"}  # fmt: skip
    assert text.splitlines()[-1].startswith("5 runs:")


def test_lock_is_exclusive_and_released_when_its_holder_is_killed(tmp_path):
    """A run's lock excludes other processes; kill -9 of the holder frees it (a crashed job
    leaves its run resumable, not locked forever)."""
    path = write_experiment(tmp_path, presets=["bp"])
    (run,) = expand(load_experiment(path))
    out = tmp_path / "out"
    holder = (
        "import sys, time; from retina_raf.sweep import load_experiment;"
        "from retina_raf.sweep import expand, run_lock;"
        "run = expand(load_experiment(sys.argv[1]))[0];"
        "ctx = run_lock(sys.argv[2], run); print(ctx.__enter__(), flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(path), str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "True"
        assert f"pid={proc.pid}" in lock_holder(out, run)
        assert run_state(out, run) == "running"
        with run_lock(out, run) as mine:
            assert not mine
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_holder(out, run) is None and run_state(out, run) == "pending"
    with run_lock(out, run) as mine:
        assert mine


def test_local_executor_sees_the_gpus_cuda_visible_devices_names(monkeypatch):
    """One worker per visible GPU: the GPUs are those CUDA_VISIBLE_DEVICES names."""
    import torch

    from retina_raf.sweep import visible_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus() == []


def test_only_trains_the_named_conditions_and_leaves_the_others_as_they_are(tmp_path, run_cli):
    """--only raf-r4 (rank 4 over raf-r2, as --dry-run names it) trains that condition's runs
    alone: an interrupted run of another condition (one resting at its plateau) is neither
    resumed nor touched; --dry-run lists the same selection; a condition the experiment does
    not have is refused in one line, naming those it has, and so is --only with --collect."""
    path = write_experiment(tmp_path, presets=["raf-r2"], ranks=[2, 4], unconstrained_rule="bp",
                            overrides=TINY)  # fmt: skip
    out = tmp_path / "out"
    resting, chosen = expand(load_experiment(path))
    assert (resting.preset, chosen.preset) == ("raf-r2", "raf-r4")
    run_dir(out, resting).mkdir(parents=True)
    (run_dir(out, resting) / "checkpoint.pt").write_bytes(b"resting")

    code, text, err = run_cli("sweep", path, "--out", out, "--only", "raf-r4", "--dry-run")
    assert code == 0, err
    assert [line.split()[:2] for line in text.splitlines()[:-1]] == [[chosen.run_id, "pending"]]

    code, text, err = run_cli("sweep", path, "--out", out, "--only", "raf-r4")
    assert code == 0, err
    assert run_state(out, chosen) == "done" and run_state(out, resting) == "interrupted"
    assert (run_dir(out, resting) / "checkpoint.pt").read_bytes() == b"resting"
    assert {rid for _, _, rid in journal_events(out)} == {chosen.run_id}

    code, _, err = run_cli("sweep", path, "--out", out, "--only", "raf-r8")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "'raf-r8'" in err and "raf-r2, raf-r4" in err
    code, _, err = run_cli("sweep", path, "--out", out, "--only", "raf-r4", "--collect")
    assert code == 2 and "--collect" in err


def test_a_run_another_process_holds_is_skipped_not_trained(tmp_path):
    """train_run does not touch a run whose lock another sweep holds."""
    path = write_experiment(tmp_path, presets=["bp"], overrides=TINY)
    (run,) = expand(load_experiment(path))
    out = tmp_path / "out"
    with run_lock(out, run):
        # flock locks belong to open files: this process's second open is "another process"
        assert train_run(run, out) == "busy"
    assert not run_dir(out, run).exists()
    assert journal_events(out)[-1][1:] == ("busy", run.run_id)


# ---------------------------------------------------------------- training sweeps
@pytest.mark.slow
def test_interrupted_sweep_resumes_and_finishes_only_the_remaining_runs(tmp_path, run_cli):
    """A sweep killed (kill -9) mid-way and started again trains only the runs that were not
    finished, resuming the one that was cut off; --collect then combines every history."""
    tiny = {**TINY, "train": {**TINY["train"], "epochs": 2}}
    path = write_experiment(tmp_path, presets=["bp"], seeds=3, overrides=tiny)
    out = tmp_path / "out"
    runs = expand(load_experiment(path))
    cli = [sys.executable, "-m", "retina_raf", "sweep", str(path), "--out", str(out)]
    proc = subprocess.Popen(cli, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            log = out / "sweep.log"
            if log.exists() and any(e[1] == "done" for e in journal_events(out)):
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = [r for r in runs if (run_dir(out, r) / DONE_FILE).exists()]
    cut_off = [
        r for r in runs if r not in finished and (run_dir(out, r) / "checkpoint.pt").exists()
    ]
    assert 1 <= len(finished) < len(runs), "the sweep was not interrupted mid-way"
    stamps = {r.run_id: (run_dir(out, r) / "model.pt").stat().st_mtime_ns for r in finished}
    n_before = len(journal_events(out))

    code, text, err = run_cli("sweep", path, "--out", out)
    assert code == 0, err
    assert f"{len(finished)} finished" in text
    again = journal_events(out)[n_before:]
    started = {rid for _, event, rid in again if event in ("start", "resume")}
    assert started == {r.run_id for r in runs} - {r.run_id for r in finished}
    assert {rid for _, event, rid in again if event == "resume"} == {r.run_id for r in cut_off}
    assert all(run_state(out, r) == "done" for r in runs)
    assert stamps == {r.run_id: (run_dir(out, r) / "model.pt").stat().st_mtime_ns for r in finished}

    code, text, err = run_cli("sweep", path, "--out", out, "--collect", "--method", "gradient")
    assert code == 0, err
    with xr.open_dataset(out / "results_retina_2_gradient.nc", engine="h5netcdf") as ds:
        assert list(ds.run_id.values) == [r.run_id for r in runs]
        assert list(ds.seed.values) == [0, 1, 2] and set(ds.preset.values) == {"bp"}
        assert ds.sizes["epoch"] == 2 and bool(ds.test_acc.notnull().all())
        assert "rf" in ds and ds.attrs["experiment"] == "exp" and ds.attrs["missing_runs"] == ""


@pytest.mark.slow
def test_two_processes_on_one_sweep_never_train_a_run_twice(tmp_path, monkeypatch, capsys):
    """The local executor on a 2-GPU box: one worker process per GPU (CUDA_VISIBLE_DEVICES),
    both taking runs from the same list; every run is started and finished exactly once,
    whatever the interleaving. (Without those GPUs, the workers train on the CPU.)"""
    from retina_raf.sweep import local

    monkeypatch.setattr(local, "visible_gpus", lambda: ["0", "1"])
    path = write_experiment(tmp_path, presets=["bp"], seeds=3, overrides=TINY)
    out = tmp_path / "out"
    exp = load_experiment(path)
    rep = run_sweep(exp, out, executor="local")
    assert "2 workers on GPUs 0, 1" in capsys.readouterr().out
    assert rep.failed == [] and set(rep.states.values()) == {"done"}
    events = journal_events(out)
    for run in expand(exp):
        assert [e for _, e, rid in events if rid == run.run_id and e != "busy"] == ["start", "done"]
    lines = (out / "sweep.log").read_text().splitlines()
    assert {w for line in lines for w in line.split() if w.startswith("gpu=")} <= {"gpu=0", "gpu=1"}
    assert len({pid for pid, _, _ in events}) <= 2


def require_submitit() -> None:
    """submitit is the optional extra ``slurm``: skipped without it, except in CI."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("submitit must be installed in CI: pip install -e '.[slurm]'")
        pytest.skip("submitit not installed (pip install -e '.[slurm]')")


@pytest.mark.slow
def test_slurm_executor_reports_failed_runs_and_where_their_logs_are(tmp_path):
    """The slurm executor's job logic (through submitit's local executor, no SLURM needed):
    a good run finishes; a run that fails is reported with its error and its job logs."""
    require_submitit()
    good = load_experiment(write_experiment(tmp_path, "good", presets=["bp"], overrides=TINY))
    out = tmp_path / "out"
    (good_run,) = expand(good)
    bad = load_experiment(write_experiment(tmp_path, "bad", presets=["raf-r2"], overrides=TINY,
                                           data=str(tmp_path / "missing.npz")))  # fmt: skip
    (bad_run,) = expand(bad)
    rep = run_slurm([good_run, bad_run], out, "test", SlurmConfig(gpus_per_job=0), cluster="local",
                    poll_s=0.5)  # fmt: skip
    assert rep.states == {good_run.run_id: "done", bad_run.run_id: "failed"}
    assert rep.failed == [bad_run.run_id]
    assert "missing.npz" in rep.reasons[bad_run.run_id]
    logs = rep.logs[bad_run.run_id]
    assert logs[0].endswith(f"{bad_run.run_id}.err") and all(Path(p).exists() for p in logs)
    assert "missing.npz" in rep.summary() and logs[1] in rep.summary()


def test_collect_two_methods_into_a_chosen_file_accounts_for_every_planned_run(tmp_path, run_cli):
    """`sweep FILE --collect --method actmax --method gradient --results X.nc --base gray`
    (what `make publish` runs): one file with both RF methods mapped around a gray image;
    the finished runs are in it and the
    unfinished ones are named in `missing_runs`, so together they are every planned run."""
    from retina_raf.train import train

    path = write_experiment(tmp_path, presets=["bp", "raf-r2"], seeds=1, overrides=TINY)
    out = tmp_path / "out"
    runs = expand(load_experiment(path))
    train(runs[0].config(), out, name=runs[0].run_id, log=lambda m: None)  # raf-r2 never ran
    target = tmp_path / "published" / "results.nc"
    code, text, err = run_cli("sweep", path, "--out", out, "--collect", "--method", "actmax",
                              "--method", "gradient", "--results", target, "--base", "gray",
                              "--gray-level", "0.4")  # fmt: skip
    assert code == 0, err
    with xr.open_dataset(target, engine="h5netcdf") as ds:
        assert list(ds["rf_method"].values) == ["actmax", "gradient"]
        for options in json.loads(ds.attrs["rf_options_by_method"]).values():
            assert options["rf_base"] == "gray" and options["rf_gray_level"] == 0.4
        assert list(ds["run_id"].values) == [runs[0].run_id]
        assert ds.attrs["missing_runs"].split() == [runs[1].run_id]
    code, _, err = run_cli("sweep", path, "--out", out, "--collect", "--results", "x.csv")
    assert code == 2 and "must end in .nc" in err
