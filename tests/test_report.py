"""Notebook reports (docs/design.md#reports): ``retina-raf report NOTEBOOK -p key value``
executes a papermill template into reports/<name>/ as an executed .ipynb plus HTML."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from analysis import report
from retina_raf.errors import ConfigError, DataError

# a 1x1 PNG, referenced from a markdown cell: the HTML must embed it
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def write_notebook(path: Path, cells: list[str], parameters: str | None) -> Path:
    """A notebook whose first code cell (tagged ``parameters``) is ``parameters``."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        notebook.cells.append(cell)
    for source in cells:
        if source.startswith("#md "):
            notebook.cells.append(nbformat.v4.new_markdown_cell(source[4:]))
        else:
            notebook.cells.append(nbformat.v4.new_code_cell(source))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def greeting_notebook(tmp_path):
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "pixel.png").write_bytes(PIXEL_PNG)
    return write_notebook(
        tmp_path / "nb" / "greeting.ipynb",
        ["#md ![pixel](pixel.png)", "message = greeting * repeats\nprint(message)"],
        parameters='greeting = "hello"  # what to say\nrepeats = 1',
    )


def _cli(args, capsys):
    from retina_raf_cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# ------------------------------------------------------------------------ fast checks
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0.5", 0.5),
        ("1e-4", "1e-4"),  # YAML 1.1 needs a dot for floats; papermill passes it as text
        ("true", True),
        ("False", False),
        ("null", None),
        ("yes", "yes"),  # not YAML 1.1's boolean: a word stays a word
        ("2024-01-31", "2024-01-31"),
        ("[2, 4, 32]", [2, 4, 32]),
        ("results/sweep.nc", "results/sweep.nc"),
        ("a: b: c", "a: b: c"),
    ],
)
def test_parameter_values_are_read_as_yaml_scalars(text, value):
    assert report.parse_parameter_value(text) == value


def test_notebook_parameters_lists_the_parameters_cell(greeting_notebook):
    params = report.notebook_parameters(greeting_notebook)
    assert set(params) == {"greeting", "repeats"}
    assert params["greeting"]["help"] == "what to say"


def test_unknown_parameter_is_refused_before_executing(greeting_notebook, tmp_path):
    """A typo in a parameter name is a clear error naming the declared ones; nothing runs."""
    with pytest.raises(ConfigError, match="unknown parameter.*greting.*declares: greeting"):
        report.run_report(greeting_notebook, {"greting": "hi"}, out_dir=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_parameters_for_notebook_without_parameters_cell_are_refused(tmp_path):
    notebook = write_notebook(tmp_path / "plain.ipynb", ["x = 1"], parameters=None)
    with pytest.raises(ConfigError, match="no cell tagged 'parameters'"):
        report.run_report(notebook, {"x": 2}, out_dir=tmp_path / "reports")


def test_missing_or_invalid_notebook_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        report.run_report(tmp_path / "none.ipynb", out_dir=tmp_path / "reports")
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        report.run_report(tmp_path / "broken.ipynb", out_dir=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_kernel_resolves_to_this_environment():
    """The python3 kernel runs this interpreter (the venv's), so notebooks import retina_raf."""
    report.check_kernel("python3")


def test_kernel_of_another_python_is_refused(tmp_path, monkeypatch):
    """A python3 kernel spec that starts another interpreter is refused with the fix."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    "/opt/other/bin/python",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "Other",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    with pytest.raises(ConfigError, match="ipykernel install --sys-prefix"):
        report.check_kernel("python3")


def test_cli_missing_notebook_exits_2_with_one_line(tmp_path, capsys):
    code, out, err = _cli(["report", str(tmp_path / "none.ipynb"), "--out", str(tmp_path)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "none.ipynb" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_parameter_name_exits_2(greeting_notebook, tmp_path, capsys):
    out_dir = tmp_path / "reports"
    code, _, err = _cli(
        ["report", str(greeting_notebook), "-p", "nope", "1", "--out", str(out_dir)], capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "nope" in err
    assert not out_dir.exists()


def test_cli_repeated_parameter_exits_2(greeting_notebook, tmp_path, capsys):
    args = ["report", str(greeting_notebook), "-p", "repeats", "1", "-p", "repeats", "2"]
    code, _, err = _cli([*args, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "twice" in err


# ------------------------------------------------------------------ executions (slow)
@pytest.mark.slow
def test_report_executes_with_parameters_into_ipynb_and_html(greeting_notebook, tmp_path, capsys):
    """-p values override the parameters cell (YAML: '3' is an int); the report folder
    holds the executed notebook and an HTML page with images embedded; a stale FAILED
    marker from an earlier run is removed."""
    out_dir = tmp_path / "reports"
    (out_dir / "hello").mkdir(parents=True)
    (out_dir / "hello" / "FAILED").write_text("old failure")
    args = ["report", str(greeting_notebook), "-p", "greeting", "hi", "-p", "repeats", "3"]
    code, out, err = _cli(
        [*args, "--out", str(out_dir), "--name", "hello", "--no-progress"], capsys
    )
    assert code == 0, err
    folder = out_dir / "hello"
    assert sorted(p.name for p in folder.iterdir()) == ["hello.html", "hello.ipynb"]
    assert str(folder / "hello.html") in out
    executed = nbformat.read(folder / "hello.ipynb", as_version=4)
    outputs = [
        o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs
    ]
    assert "hihihi\n" in outputs
    html = (folder / "hello.html").read_text()
    assert "hihihi" in html and "<title>hello</title>" in html
    assert "data:image/png;base64," in html  # the markdown image is embedded


@pytest.mark.slow
def test_report_to_a_log_has_no_progress_bar(greeting_notebook, tmp_path, capsys):
    """Claim: stderr that is not a terminal (a log, a pipe) gets no per-cell progress bar
    unless --progress asks for it."""
    args = ["report", str(greeting_notebook), "--out", str(tmp_path / "reports")]
    code, _, err = _cli(args, capsys)
    assert code == 0, err
    assert "Executing" not in err and "cell/s" not in err
    code, _, err = _cli([*args, "--name", "again", "--progress"], capsys)
    assert code == 0 and "Executing" in err


@pytest.mark.slow
def test_failing_cell_keeps_partial_report_marked_failed(tmp_path, capsys):
    """A failing cell: exit 1, a message naming the cell (number, first line, exception),
    the partial report kept with a FAILED marker and an HTML titled FAILED."""
    notebook = write_notebook(
        tmp_path / "broken.ipynb",
        ["total = 0", "# sum the things\nvalue = 1 / total", "print('never')"],
        parameters="scale = 1",
    )
    out_dir = tmp_path / "reports"
    code, out, err = _cli(["report", str(notebook), "--out", str(out_dir), "--no-progress"], capsys)
    assert code == 1
    message = err.strip()
    assert len(message.splitlines()) == 1
    assert "cell 3 of 4" in message and "# sum the things" in message
    assert "line 2 `value = 1 / total`" in message  # the failing line, from the traceback
    assert "ZeroDivisionError: division by zero" in message
    folder = out_dir / "broken"
    failed = (folder / "FAILED").read_text()
    assert "cell 3 of 4" in failed and "ZeroDivisionError" in failed
    assert "\x1b[" not in failed  # traceback without terminal colors
    html = (folder / "broken.html").read_text()
    assert "<title>FAILED: broken</title>" in html and "Report FAILED" in html
    executed = nbformat.read(folder / "broken.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in executed.cells for o in c.get("outputs", []))
    assert not any(p.name.startswith(".running") for p in folder.iterdir())


def test_failure_message_counts_cells_of_the_input_notebook():
    """papermill counts the injected parameters cell; the message counts the user's cells."""
    from papermill.exceptions import PapermillExecutionError

    cells = [nbformat.v4.new_code_cell("a = 1"), nbformat.v4.new_code_cell("a = 2")]
    cells[0].metadata["tags"] = ["parameters"]
    cells[1].metadata["tags"] = ["injected-parameters"]
    cells += [nbformat.v4.new_code_cell("\n\nraise KeyError('k')  " + "x" * 100)]
    error = PapermillExecutionError(2, 3, cells[2].source, "KeyError", "'k'", [])
    message = report._describe_failure(error, cells, Path("nb.ipynb"))
    assert message.startswith("notebook nb.ipynb failed in cell 2 of 2 (In [3]: `raise KeyError")
    assert message.endswith("...`): KeyError: 'k'")
    cells[2].source = "d = {}\nd['k']"
    traceback = [
        "\x1b[0;31mKeyError\x1b[0m",
        "Cell \x1b[0;32mIn[3], line 2\x1b[0m",
        "----> 2 d['k']",
    ]
    error = PapermillExecutionError(2, 3, cells[2].source, "KeyError", "'k'", traceback)
    message = report._describe_failure(error, cells, Path("nb.ipynb"))
    assert "(In [3]: `d = {}`), line 2 `d['k']`: KeyError: 'k'" in message


@pytest.mark.slow
def test_report_shows_no_absolute_path_and_keeps_panels_in_its_folder(
    tmp_path, monkeypatch, capsys
):
    """The executed report shows paths relative to the project (the kernel's
    folder), not this machine's absolute ones, and `report --out X` puts the notebook's
    panels under X/<name>/figures, not ./reports/figures."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "results.nc").write_text("stand-in")
    notebook = write_notebook(
        project / "nb" / "panels.ipynb",
        [
            "from pathlib import Path\nPath(figures_dir).mkdir(parents=True, exist_ok=True)\n"
            "(Path(figures_dir) / 'panel.png').write_bytes(b'png')\nprint(results, figures_dir)"
        ],
        parameters='results = "data/results.nc"\nfigures_dir = "reports/panels/figures"',
    )
    monkeypatch.chdir(project)
    absolute = str(project / "data" / "results.nc")
    code, _, err = _cli(
        ["report", str(notebook), "-p", "results", absolute, "--out", str(project / "X"),
         "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert (project / "X" / "panels" / "figures" / "panel.png").is_file()
    assert not (project / "reports").exists()
    for page in ("panels.ipynb", "panels.html"):
        text = (project / "X" / "panels" / page).read_text()
        assert str(tmp_path) not in text  # no absolute path of this machine
        assert "data/results.nc" in text and "X/panels/figures" in text


def _slow_notebook(folder: Path) -> Path:
    """A report whose one cell exports a panel, notes the kernel's process id and that it
    started, then sleeps."""
    return write_notebook(
        folder / "slow.ipynb",
        [
            "import os, time\nfrom pathlib import Path\n"
            "Path(figures_dir).mkdir(parents=True, exist_ok=True)\n"
            "(Path(figures_dir) / 'panel.svg').write_text('this run')\n"
            "Path(started).write_text(str(os.getpid()))\ntime.sleep(seconds)"
        ],
        parameters='seconds = 600\nstarted = "started"\nfigures_dir = "reports/slow/figures"',
    )


def _press_ctrl_c_during(notebook: Path, out: Path, started: Path) -> tuple[int, str, int]:
    """Run `retina-raf report NOTEBOOK --out OUT` in a process of its own and send it SIGINT
    (what Ctrl-C sends) once the notebook's cell runs; return its exit status, its stderr
    and the kernel's process id."""
    command = [sys.executable, "-m", "retina_raf_cli", "report", str(notebook), "--out", str(out),
               "-p", "started", str(started), "--no-progress"]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT raises KeyboardInterrupt as in a terminal, even where this test's own
        # process was started with SIGINT ignored (a background job)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not started.is_file() or not started.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the notebook never started: {process.communicate()[1]}")
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    return process.returncode, err, int(started.read_text())


def _stopped(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


@pytest.mark.slow
@pytest.mark.parametrize("earlier_report", [False, True], ids=["new", "over-an-earlier-one"])
def test_ctrl_c_stops_a_report_in_one_line_and_writes_nothing(tmp_path, earlier_report):
    """SIGINT while the kernel runs a cell: exit status 130, one line on stderr and no
    traceback (of this process or the kernel's), the kernel stopped, and the report folder as
    it was before: not there, or an earlier report with its panels, without a FAILED
    marker or the run's scratch folder."""
    notebook = _slow_notebook(tmp_path / "nb")
    out = tmp_path / "reports"
    if earlier_report:
        (out / "slow" / "figures").mkdir(parents=True)
        (out / "slow" / "figures" / "panel.svg").write_text("earlier run")
        (out / "slow" / "slow.ipynb").write_text("earlier run")
    before = _tree(tmp_path / "reports") if earlier_report else None
    code, err, kernel = _press_ctrl_c_during(notebook, out, tmp_path / "started")
    assert code == 130
    assert "Traceback" not in err
    assert err.splitlines() == ["retina-raf: interrupted: report not written"], err
    assert _stopped(kernel)
    if earlier_report:
        assert _tree(out) == before
    else:
        assert not out.exists()


@pytest.mark.slow
def test_a_report_replaces_its_panels_as_a_whole(tmp_path):
    """The panels of an earlier run (a montage of an epoch no longer shown) do not outlive
    the next run of the report, which leaves only the panels it wrote."""
    notebook = _slow_notebook(tmp_path / "nb")
    figures = tmp_path / "reports" / "slow" / "figures"
    figures.mkdir(parents=True)
    (figures / "montage_of_an_earlier_epoch.svg").write_text("earlier run")
    report.run_report(
        notebook, {"seconds": 0, "started": str(tmp_path / "started")}, tmp_path / "reports"
    )
    assert [path.name for path in figures.iterdir()] == ["panel.svg"]
    assert [path.name for path in figures.parent.iterdir() if path.name.startswith(".")] == []
