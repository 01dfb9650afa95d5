"""Run folders you can trust (docs/cli.md#run-folders): one owner (retina_raf.runs), one run id,
one lock, SIGTERM checkpoints, resumes from checkpoints written on another device, bad input
refused before anything is created, logs and provenance, checkpoints every N epochs."""

from __future__ import annotations

import ast
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.serialization
import xarray as xr

import retina_raf.train as train_module
from retina_raf import runs
from retina_raf.errors import EXIT_INTERRUPTED, RunError, RunInterrupted
from retina_raf.sweep import expand, load_experiment, run_state
from retina_raf.train import config_from_cli, train

REPO = Path(__file__).resolve().parents[1]


def quiet(message):
    pass


@pytest.fixture
def cli_sets(tiny_sets):
    """``cli_sets(extra=())``: the tiny settings as `--set` options of `retina-raf train
    raf-r2` (n_bn stays the preset's)."""

    def as_options(extra=()) -> list[str]:
        sets = [s for s in tiny_sets if not s.startswith("model.retina.n_bn")] + list(extra)
        return [arg for s in sets for arg in ("--set", s)]

    return as_options


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=False)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        if isinstance(wa[key], torch.Tensor):
            assert torch.equal(wa[key], wb[key]), key
        else:  # a feedback layer's extra state
            assert wa[key] == wb[key], key


def history(run_dir: Path) -> xr.Dataset:
    with xr.open_dataset(run_dir / "history.nc", engine="h5netcdf") as ds:
        return ds.load()


def signal_at_call(monkeypatch, signum: int, call: int) -> None:
    """Send ``signum`` to this process during the ``call``-th cross-entropy (a real signal,
    in the middle of a batch): 4 training batches and 1 evaluation per tiny epoch, so call 7
    is the second batch of epoch 2."""
    real = train_module.F.cross_entropy
    count = {"n": 0}

    def cross_entropy(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module.F, "cross_entropy", cross_entropy)


# ------------------------------------------------------------------------- one owner
PACKAGES = ("retina_raf", "analysis", "retina_raf_cli")  # each imports only those before it


def module_imports() -> dict[str, dict[str, int]]:
    """Module -> {module of PACKAGES it imports: first line}, over every module of PACKAGES,
    at module level and inside functions alike (a lazy import is an import). ``from a.b
    import c`` counts as importing ``a.b.c`` where that is a module, else ``a.b``; a
    package's ``__init__`` is the module named after the package."""
    paths = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in paths.items():
        edges = {}
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:  # relative: resolved against the importing module's package
                    package = module.split(".")[: None if path.name == "__init__.py" else -1]
                    package = package[: len(package) - node.level + 1]
                    source = ".".join(package + ([node.module] if node.module else []))
                targets = [f"{source}.{alias.name}" for alias in node.names]
                targets = [name if name in paths else source for name in targets]
            for target in map(known, targets):
                if target and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def test_retina_raf_does_not_import_analysis():
    """`retina_raf` trains, `analysis` reads what it wrote and `retina_raf_cli` is the command
    line over both: no module of `retina_raf` imports `analysis` or the command line, and no
    module of `analysis` imports the command line. The one exception is the entry point
    `python -m retina_raf` (retina_raf/__main__.py), which runs the command line."""
    offenders = []
    for module, imported in module_imports().items():
        level = PACKAGES.index(module.split(".")[0])
        for target, line in imported.items():
            if PACKAGES.index(target.split(".")[0]) <= level:
                continue
            if (module, target) == ("retina_raf.__main__", "retina_raf_cli"):
                continue
            offenders.append(f"{module}:{line} imports {target}")
    assert offenders == []


def test_no_import_cycles_between_modules():
    """The modules of retina_raf, analysis and retina_raf_cli import each other without a
    cycle, counting imports inside functions: every module can be understood (and tested)
    from the ones below it."""
    graph = module_imports()
    done: set[str] = set()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join(path[path.index(module) :] + [module]))
            return
        if module in done:
            return
        for target in graph[module]:
            visit(target, path + [module])
        done.add(module)

    for module in graph:
        visit(module, [])
    assert cycles == []


def test_train_and_a_sweep_put_a_run_in_the_same_folder(tmp_path):
    """One run id: `retina-raf train` and a sweep give the same config the same folder; the
    number of epochs is not part of it (more epochs extend the run)."""
    overrides = {"model": {"retina": {"vvs_channels": 4, "fc_units": 16}}, "train": {"epochs": 3}}
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: exp\npresets: [raf-r2]\nseeds: [1]\noverrides: {overrides}\n")
    (run,) = expand(load_experiment(path))
    sets = ("model.retina.vvs_channels=4", "model.retina.fc_units=16")
    for epochs in (3, 7):
        cfg = config_from_cli("raf-r2", 1, epochs, sets=sets)
        assert runs.run_id(cfg) == run.run_id
    assert re.fullmatch(r"raf-r2-s1-[0-9a-f]{8}", run.run_id)
    assert runs.run_id(config_from_cli("bp", 0, 2, device="cpu")) == "bp-s0"


def test_a_run_another_process_trains_is_refused(tmp_path, run_cli, cli_sets):
    """Two trains on one folder: the second is refused (one line, exit 2) while the first
    holds the run's lock, and writes nothing into the run folder."""
    out, name = tmp_path / "runs", "shared"
    holder = (
        "import fcntl, os, sys, time; p = sys.argv[1]; os.makedirs(os.path.dirname(p));"
        "fd = os.open(p, os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX);"
        "os.write(fd, b'otherhost pid=4242'); print('locked', flush=True); time.sleep(600)"
    )
    lock = out / ".locks" / f"{name}.lock"
    proc = subprocess.Popen([sys.executable, "-c", holder, str(lock)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        code, _, err = run_cli("train", "--preset", "raf-r2", "--epochs", "1", "--out", out,
                               "--name", name, "--device", "cpu", *cli_sets())  # fmt: skip
    finally:
        proc.kill()
        proc.wait()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "being trained by another process" in err and "pid=4242" in err
    assert not (out / name).exists()
    with open(lock) as handle:  # and the lock is free again once its holder is gone
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ------------------------------------------------------------- resume and checkpoints
def test_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path, monkeypatch, tiny_config):
    """A checkpoint whose tensors were saved from cuda:0 (as a GPU run writes it) loads to
    the CPU and resumes; RNG states stay CPU ByteTensors, and every load maps to "cpu"
    whatever the training device (mapping to the device put the RNG states on the GPU, where
    torch.set_rng_state refuses them); the run ends bitwise equal to an uninterrupted one."""
    cfg = tiny_config(epochs=2)
    whole = train(cfg, tmp_path / "whole", log=quiet)
    split = train(tiny_config(epochs=1), tmp_path / "split", log=quiet)
    state = torch.load(split / "checkpoint.pt", weights_only=False)
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save(state, split / "checkpoint.pt")  # every storage tagged cuda:0
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(split / "checkpoint.pt", weights_only=False)

    loaded = runs.load_checkpoint(split)
    assert all(t.device.type == "cpu" for t in loaded["model"].values() if torch.is_tensor(t))
    for name in ("torch", "shuffle", "augment"):
        rng = loaded["rng"][name]
        assert rng.device.type == "cpu" and rng.dtype == torch.uint8, name

    real_load, locations = torch.load, []

    def spy(*args, **kwargs):
        locations.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    messages = []
    train(cfg, tmp_path / "split", log=messages.append)
    assert any("resuming after epoch 1" in m for m in messages)
    assert locations and set(locations) == {"cpu"}
    assert_same_weights(whole, split)


def test_a_damaged_checkpoint_is_one_line_exit_2_and_changes_nothing(
    tmp_path, run_cli, tiny_config, cli_sets
):
    """Resuming from a truncated checkpoint.pt: one line naming it, exit 2, no traceback,
    and the run folder is left exactly as it was."""
    args = ["train", "--preset", "raf-r2", "--epochs", "2", "--out", tmp_path, "--name", "r",
            "--device", "cpu", *cli_sets()]  # fmt: skip
    run_dir = tmp_path / "r"
    with pytest.raises(RunInterrupted):  # a run stopped after its first epoch
        train(tiny_config(epochs=2), tmp_path, name="r", log=stop_after_epoch(1))
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*")}
    code, _, err = run_cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "checkpoint.pt is damaged" in err and "Traceback" not in err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*")} == before


def stop_after_epoch(n):
    """A log that stops training (as a signal would) once epoch ``n`` is logged."""

    def log(message):
        if f"epoch {n}/" in message:
            raise RunInterrupted("stopped by the test", signal.SIGTERM)

    return log


def test_temp_files_of_killed_writes_are_removed_when_the_run_starts_again(tmp_path, tiny_config):
    """A write killed mid-way leaves `.checkpoint.*.pt.tmp` (up to a checkpoint's size);
    the next start of the run, holding its lock, removes them."""
    cfg = tiny_config(epochs=2)
    with pytest.raises(RunInterrupted):
        train(cfg, tmp_path, log=stop_after_epoch(1))
    run_dir = tmp_path / runs.run_id(cfg)
    stale = [run_dir / ".checkpoint.k3j2_x.pt.tmp", run_dir / ".history.a8b9.nc.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 100_000)
    train(cfg, tmp_path, log=quiet)
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "DONE", "checkpoint.pt", "config.yaml", "history.nc", "model.pt", "train.log",
    ]  # fmt: skip


def test_checkpoints_every_n_epochs_keeping_only_the_latest(tmp_path, monkeypatch, tiny_config):
    """train.checkpoint_every=2 over 5 epochs: checkpoints after epochs 2, 4 and 5 (the last
    one always), one checkpoint.pt on disk; the history is written every epoch."""
    real_save, saved = runs.save_checkpoint, []

    def counting_save(run_dir, state):
        saved.append(len(state["history"]))
        real_save(run_dir, state)

    monkeypatch.setattr(runs, "save_checkpoint", counting_save)
    cfg = tiny_config(epochs=5, extra=["train.checkpoint_every=2"])
    run_dir = train(cfg, tmp_path, log=quiet)
    assert saved == [2, 4, 5]
    assert len(torch.load(run_dir / "checkpoint.pt", weights_only=False)["history"]) == 5
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["checkpoint.pt", "model.pt"]
    assert not list(run_dir.glob(".*.tmp"))
    assert history(run_dir).sizes["epoch"] == 5
    assert runs.run_id(cfg) == runs.run_id(tiny_config(epochs=5))  # not part of the id


def test_a_checkpoint_past_the_epochs_asked_for_is_refused(tmp_path, tiny_config):
    """A run checkpointed after epoch 3 cannot be finished as a 2-epoch run (its weights
    are past epoch 2)."""
    with pytest.raises(RunInterrupted):
        train(tiny_config(epochs=4), tmp_path, log=stop_after_epoch(3))
    with pytest.raises(RunError, match="trained 3 epochs already"):
        train(tiny_config(epochs=2), tmp_path, log=quiet)


# ------------------------------------------------------------------------------ SIGTERM
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_checkpoints_the_partial_epoch_and_resumes_bitwise(
    signum, tmp_path, monkeypatch, tiny_config
):
    """SIGTERM (a scheduler) or SIGINT (Ctrl-C) in the middle of a batch: the batch
    finishes, training stops at the boundary with a checkpoint of the partial epoch (2 of
    its 4 batches), and the resumed run ends with bitwise the weights and history of an
    uninterrupted run."""
    cfg = tiny_config(epochs=3, extra=["train.checkpoint_every=5"])
    whole = train(cfg, tmp_path / "whole", log=quiet)
    handler = signal.getsignal(signum)
    signal_at_call(monkeypatch, signum, call=7)
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg, tmp_path / "split", log=quiet)
    assert stopped.value.signum == signum
    name = signal.Signals(signum).name
    assert f"stopped by {name} in epoch 2 after batch 2" in str(stopped.value)
    assert signal.getsignal(signum) == handler  # the handler is put back
    monkeypatch.undo()
    split = tmp_path / "split" / whole.name
    state = torch.load(split / "checkpoint.pt", weights_only=False)
    assert len(state["history"]) == 1 and state["partial"]["batches"] == 2
    assert not (split / "DONE").exists()

    messages = []
    train(cfg, tmp_path / "split", log=messages.append)
    assert any("resuming epoch 2 of 3 after batch 2" in m for m in messages)
    assert_same_weights(whole, split)
    a, b = history(whole), history(split)
    for var in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "alignment_deg"):
        assert a[var].equals(b[var]), var


def test_a_previous_handler_of_the_signal_runs_after_the_checkpoint(
    tmp_path, monkeypatch, tiny_config
):
    """submitit listens to SIGUSR2 (its job nears the time limit) and requeues the job: the
    run checkpoints at the next batch boundary first, then that handler runs."""
    seen = []

    def submitit_like(signum, frame):
        state = torch.load(next(tmp_path.glob("*/checkpoint.pt")), weights_only=False)
        seen.append((signum, state["partial"]["batches"]))

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        signal_at_call(monkeypatch, signal.SIGUSR2, call=7)
        with pytest.raises(RunInterrupted, match="stopped by SIGUSR2"):
            train(tiny_config(epochs=3), tmp_path, log=quiet)
        assert seen == [(signal.SIGUSR2, 2)]
        assert signal.getsignal(signal.SIGUSR2) is submitit_like
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.slow
def test_sigterm_to_a_training_process_exits_143_and_the_same_command_resumes(
    tmp_path, run_cli, tiny_sets
):
    """A real SIGTERM to a real `retina-raf train` (output to a pipe, as under SLURM): it
    logs one line per epoch without progress-bar codes, stops with a checkpoint, exits 143
    with one line; the same command resumes, ending bitwise equal to an uninterrupted run."""
    values = [s for s in tiny_sets if not s.startswith(("model.retina.n_bn", "train.progress"))]
    values.append("data.train_limit=1000")  # 20 batches an epoch: SIGTERM lands in one
    sets = [arg for value in values for arg in ("--set", value)]
    args = ["train", "--preset", "raf-r2", "--epochs", "3", "--device", "cpu", *sets]
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "retina_raf", *args, "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "epoch 1/3" in line:
                time.sleep(0.3)  # most likely into epoch 2's batches; any boundary will do
                proc.send_signal(signal.SIGTERM)
                break
        stdout, rest = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines) + rest
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "\r" not in stderr and "\x1b[" not in stderr
    last = stderr.strip().splitlines()[-1]
    boundary = r"(in epoch 2 after batch \d+|after epoch [12])"
    assert re.match(rf"retina-raf: \S+: stopped by SIGTERM {boundary}", last), last
    assert "run the same command again to resume" in last and stdout == ""
    cfg = config_from_cli("raf-r2", None, 3, None, "cpu", sets=tuple(values))
    run_dir = out / runs.run_id(cfg)
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "DONE").exists()
    assert "stopped by SIGTERM" in (run_dir / "train.log").read_text()

    code, stdout, err = run_cli(*args, "--out", out)
    assert code == 0, err
    assert "resuming" in err and err.count("epoch 3/3") == 1
    whole = train(cfg, tmp_path / "whole", log=quiet)
    assert_same_weights(whole, run_dir)


# ---------------------------------------------------------------------- logs, provenance
def test_train_log_and_history_provenance(tmp_path, tiny_config):
    """Each run keeps train.log (one line per epoch, the start and the end), and history.nc
    says what trained it: versions, git commit, device, amp, TF32."""
    run_dir = train(tiny_config(epochs=2), tmp_path, log=quiet)
    log = (run_dir / "train.log").read_text().splitlines()
    assert sum(" epoch " in line and "train loss" in line for line in log) == 2
    assert "training 2 epochs on cpu" in log[0] and "finished 2 epochs" in log[-1]
    attrs = history(run_dir).attrs
    for key in ("retina_raf_version", "git_commit", "torch_version", "device", "amp", "tf32"):
        assert key in attrs, key
    assert attrs["torch_version"] == torch.__version__ and attrs["device"] == "cpu"
    assert attrs["amp"] == 0 and attrs["tf32"] == 0


def test_amp_on_a_cpu_trains_in_bf16_and_keeps_the_state_float32(tmp_path, run_cli, cli_sets):
    """`--amp` on a CPU trains under bf16 autocast (the weights differ from a float32 run's
    and history.nc records amp = 1), while the weights, the optimizer state and the feedback
    layers' error covariances (their Gram matrices) stay float32."""
    args = ["train", "--preset", "raf-r2", "--epochs", "1", "--device", "cpu", *cli_sets()]
    code, _, err = run_cli(*args, "--out", tmp_path, "--name", "bf16", "--amp")
    assert code == 0, err
    code, _, err = run_cli(*args, "--out", tmp_path, "--name", "fp32")
    assert code == 0, err
    bf16_run, fp32_run = tmp_path / "bf16", tmp_path / "fp32"
    assert history(bf16_run).attrs["amp"] == 1 and history(fp32_run).attrs["amp"] == 0
    state = torch.load(bf16_run / "checkpoint.pt", weights_only=False)
    floats = {k: v for k, v in state["model"].items()
              if torch.is_tensor(v) and v.is_floating_point()}  # fmt: skip
    assert any(k.endswith(".q") for k in floats) and any(k.endswith(".p") for k in floats)
    assert any("error_covariance" in k for k in floats)
    assert all(v.dtype == torch.float32 for v in floats.values()), {
        k: v.dtype for k, v in floats.items() if v.dtype != torch.float32
    }
    moments = [v for s in state["optimizer"]["state"].values() for v in s.values()
               if torch.is_tensor(v) and v.is_floating_point()]  # fmt: skip
    assert moments and all(v.dtype == torch.float32 for v in moments)
    fp32 = weights(fp32_run)
    assert any(not torch.equal(v, fp32[k]) for k, v in weights(bf16_run).items())


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lr=nan"], "train.lr: nan is not a finite number"),
        (
            ["--set", "model.retina.dropout=.nan"],
            "model.retina.dropout: nan is not a finite number",
        ),
        (["--set", "train.lr_decay=inf"], "train.lr_decay: inf is not a finite number"),
        (["--set", "train.weight_decay=-.inf"], "not a finite number"),
        (
            ["--set", "model.retina.input_noise=NaN"],
            "model.retina.input_noise: nan is not a finite number",
        ),
        (["--name", "../../x"], "--name: '../../x' is not a run folder name"),
        (["--name", "a/b"], "is not a run folder name"),
        (["--name", ".hidden"], "is not a run folder name"),
        (["--data", "missing.npz"], "no such file or folder"),
        (["--data", "not_cifar.npz"], "is not an .npz file"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(
    tmp_path, run_cli, args, message, cli_sets
):
    """Non-finite numbers, names leaving --out, bad data: refused before anything exists."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "not_cifar.npz").write_text("a text file\n")
    args = [str(work / a) if a.endswith(".npz") else a for a in args]
    out = work / "deep" / "runs"
    code, _, err = run_cli("train", "--preset", "raf-r2", "--epochs", "1", "--out", out,
                           "--device", "cpu", *cli_sets(), *args)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["not_cifar.npz", "work"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_creates_nothing(tmp_path, run_cli, cli_sets):
    code, _, err = run_cli("train", "--preset", "raf-r2", "--epochs", "1", "--out", tmp_path,
                           "--device", "cuda", *cli_sets())  # fmt: skip
    assert code == 2 and "no CUDA device" in err and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ finished
def test_a_run_being_extended_is_not_finished(tmp_path, tiny_config):
    """Extending a finished run removes DONE first: until it ends, the run is unfinished for
    the analysis (its old model.pt is not used) and for a sweep asking for the new epochs."""
    train(tiny_config(epochs=1), tmp_path, log=quiet)
    with pytest.raises(RunInterrupted):  # extension to 3 epochs, stopped after epoch 2
        train(tiny_config(epochs=3), tmp_path, log=stop_after_epoch(2))
    run_dir = tmp_path / runs.run_id(tiny_config())
    assert (run_dir / "model.pt").is_file() and not runs.is_finished(run_dir)
    assert runs.find_runs(tmp_path) == []
    with pytest.raises(RunError, match="not finished"):
        runs.load_model(run_dir)
    with pytest.raises(RunError, match="not finished"):
        runs.check_finished(run_dir)
    train(tiny_config(epochs=3), tmp_path, log=quiet)
    assert runs.find_runs(tmp_path) == [run_dir] and runs.finished_epochs(run_dir) == 3
    assert runs.is_finished(run_dir, epochs=3) and not runs.is_finished(run_dir, epochs=4)


def test_a_done_file_that_names_no_epochs_counts_those_of_the_history(tmp_path, tiny_config):
    """A DONE of the earlier layout, without "finished <N> epochs", is read as today's: N is
    the epochs history.nc holds (runs.upgrade_done); the run stays finished."""
    run_dir = train(tiny_config(epochs=2), tmp_path, log=quiet)
    (run_dir / "DONE").write_text("")
    assert runs.upgrade_done("", run_dir) == "finished 2 epochs\n"
    assert runs.finished_epochs(run_dir) == 2 and runs.find_runs(tmp_path) == [run_dir]
    assert runs.is_finished(run_dir, epochs=2) and not runs.is_finished(run_dir, epochs=3)
    (run_dir / "history.nc").unlink()
    assert runs.finished_epochs(run_dir) == 0
    assert runs.upgrade_done("finished 5 epochs\n", run_dir) == "finished 5 epochs\n"


def test_sweep_state_counts_epochs(tmp_path):
    """A sweep asking for more epochs than a run finished sees it as not done."""
    overrides = {"model": {"retina": {"retina_channels": 4, "vvs_channels": 4, "vvs_layers": 1,
                                      "kernel_size": 5, "fc_units": 16}},
                 "train": {"epochs": 1, "batch_size": 50, "progress": False},
                 "data": {"train_limit": 100, "test_limit": 50}}  # fmt: skip
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: exp\npresets: [bp]\noverrides: {overrides}\n")
    (run,) = expand(load_experiment(path))
    out = tmp_path / "out"
    train(run.config(), out, name=run.run_id, log=quiet)
    assert run_state(out, run) == "done"
    path.write_text(path.read_text().replace("'epochs': 1", "'epochs': 2"))
    (longer,) = expand(load_experiment(path))
    assert longer.run_id == run.run_id and run_state(out, longer) == "interrupted"


def test_lock_is_released_after_training(tmp_path, tiny_config):
    """The lock lives in <out>/.locks and is free once training ends (even by an error)."""
    cfg = tiny_config(epochs=1)
    run_dir = train(cfg, tmp_path, log=quiet)
    assert runs.lock_path(run_dir) == tmp_path / ".locks" / f"{run_dir.name}.lock"
    assert runs.lock_holder(run_dir) is None
    with runs.run_lock(run_dir) as mine:
        assert mine
