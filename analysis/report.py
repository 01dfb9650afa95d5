"""Execute parameterized notebooks into reports (docs/design.md#reports).

``run_report("notebooks/compare_ranks.ipynb", {"results": "results/sweep.nc"})`` runs the
notebook with papermill (its cell tagged ``parameters`` overridden) in this environment's
``python3`` kernel and writes ``reports/compare_ranks/``:

    compare_ranks.ipynb   the executed notebook, outputs included
    compare_ranks.html    the same as one self-contained HTML page (images embedded)
    figures/              the panels the notebook exports (its ``figures_dir`` by default),
                          replaced as a whole by each run
    FAILED                only after a failed run: which cell failed, how, and the traceback

Absolute paths among the parameters are shown relative to the kernel's working folder
(the project, usually), so a report names no folder of the machine that made it.
A failed run keeps its partial report for inspection (HTML titled ``FAILED: <name>``); the
next successful run removes the ``FAILED`` marker. An interrupted run (Ctrl-C) writes nothing:
the report folder is left as it was before it, or not there if the run created it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from retina_raf.errors import ConfigError, DataError, RunError
from retina_raf.io import atomic_path, write_text

KERNEL_NAME = "python3"
FAILED_MARKER = "FAILED"
_REPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CELL_LINE = re.compile(r"Cell In\[\d*\], line (\d+)")


def parse_parameter_value(text: str):
    """A command-line parameter value as a YAML scalar: ``3`` -> 3, ``0.5`` -> 0.5,
    ``true`` -> True, ``null`` -> None, ``[2, 4]`` -> [2, 4], anything else a string.

    Only ``true``/``false`` become booleans (not YAML 1.1's ``yes``/``no``/``on``), and dates
    stay strings, so that names and paths pass through unchanged.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool) and text.strip().lower() not in {"true", "false"}:
        return text
    if isinstance(value, datetime.date) or (value is None and text.strip() == ""):
        return text
    return value


def notebook_parameters(notebook: str | Path) -> dict[str, dict]:
    """The parameters a notebook declares in its first cell tagged ``parameters``.

    Returns ``{name: {"name", "inferred_type_name", "default", "help"}}`` (papermill's
    Python translator reads the assignments and their trailing comments); an empty dict if
    the notebook has no such cell.
    """
    import nbformat
    from papermill.translators import papermill_translators

    path = _check_notebook(notebook)
    cells = [
        cell
        for cell in nbformat.read(path, as_version=4).cells
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    if not cells:
        return {}
    translator = papermill_translators.find_translator(KERNEL_NAME, "python")
    return {param.name: param._asdict() for param in translator.inspect(cells[0])}


def shown_path(value, base: Path):
    """A parameter as the executed report shows it: an absolute path becomes relative to
    ``base`` (the kernel's working folder, usually the project), so that a report shows no
    machine's folders and still runs where it was made; anything else is unchanged."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    try:
        return os.path.relpath(value, base)
    except ValueError:  # another drive (Windows): nothing relative to show
        return value


def _check_notebook(notebook: str | Path) -> Path:
    path = Path(notebook)
    if not path.is_file():
        raise DataError(f"notebook {path} does not exist")
    if path.suffix != ".ipynb":
        raise DataError(f"{path} is not a Jupyter notebook (.ipynb)")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"notebook {path} is not valid JSON: {exc}") from exc
    return path


def check_parameters(notebook: str | Path, parameters: dict) -> None:
    """Raise ConfigError if a parameter is not declared in the notebook's ``parameters`` cell."""
    if not parameters:
        return
    declared = notebook_parameters(notebook)
    unknown = sorted(set(parameters) - set(declared))
    if not unknown:
        return
    if not declared:
        raise ConfigError(
            f"notebook {notebook} has no cell tagged 'parameters' (or it assigns nothing), "
            f"so {', '.join(unknown)} cannot be set"
        )
    raise ConfigError(
        f"unknown parameter(s) {', '.join(unknown)} for notebook {notebook}; "
        f"it declares: {', '.join(declared)}"
    )


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    """Make sure ``kernel_name`` starts this environment's interpreter.

    The kernel spec that ipykernel installs into the environment (``<prefix>/share/jupyter``)
    runs ``python``, which jupyter_client replaces by ``sys.executable``. A spec from
    elsewhere (e.g. a user-wide ``~/.local/share/jupyter`` kernel of another Python) would
    execute the notebook without this package, so it is refused with the fix.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    install = f"{sys.executable} -m ipykernel install --sys-prefix"
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as exc:
        raise ConfigError(f"no Jupyter kernel named {kernel_name!r}; run `{install}`") from exc
    executable = spec.argv[0] if spec.argv else ""
    generic = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info)}
    if executable in generic or Path(executable).parent == Path(sys.executable).parent:
        return
    raise ConfigError(
        f"Jupyter kernel {kernel_name!r} ({spec.resource_dir}) runs {executable}, not this "
        f"environment's {sys.executable}; run `{install}`"
    )


def _short(line: str, width: int = 80) -> str:
    line = line.strip()
    return line if len(line) <= width else line[: width - 3] + "..."


def _describe_failure(error, executed_cells: list, notebook: Path) -> str:
    """One line naming the failed cell of the *input* notebook: its number, first source
    line and execution count, the failing line where the traceback tells it, then the
    exception."""

    # papermill counts cells of the executed notebook, which has the injected parameters
    # cell; the user knows the cells of their own notebook
    def injected(cell) -> bool:
        return "injected-parameters" in cell.get("metadata", {}).get("tags", [])

    n_cells = sum(not injected(cell) for cell in executed_cells)
    index = error.cell_index
    if index < len(executed_cells) and injected(executed_cells[index]):
        where = "the injected parameters cell"
    else:
        number = sum(not injected(cell) for cell in executed_cells[:index]) + 1
        source = str(error.source).splitlines()
        first_line = next((line for line in source if line.strip()), "")
        where = f"cell {number} of {n_cells} (In [{error.exec_count}]: `{_short(first_line)}`)"
        # IPython's traceback starts with "Cell In[3], line 2" for the frame in the cell
        match = _CELL_LINE.search(_ANSI.sub("", "\n".join(error.traceback or [])))
        if match and 0 < int(match.group(1)) <= len(source):
            failing_line = source[int(match.group(1)) - 1]
            if failing_line.strip() != first_line.strip():
                where += f", line {match.group(1)} `{_short(failing_line)}`"
    evalue = (str(error.evalue).strip().splitlines() or [""])[0]
    exception = f"{error.ename}: {evalue}" if evalue else str(error.ename)
    return f"notebook {notebook} failed in {where}: {exception}"


def _write_html(executed, html_path: Path, title: str, failure: str | None) -> None:
    """Render the executed notebook as one self-contained HTML page."""
    import nbformat
    from nbconvert import HTMLExporter

    page = copy.deepcopy(executed)
    page.metadata["title"] = title
    if failure:
        banner = nbformat.v4.new_markdown_cell(
            f"<div style='color:#b00020;font-weight:bold;font-size:1.3em'>Report FAILED</div>"
            f"\n\n{_markdown_escape(failure)}\n\nThe cells below are the partial run."
        )
        page.cells.insert(0, banner)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(
        page, resources={"metadata": {"name": title}}
    )
    write_text(body, html_path)


def _markdown_escape(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", text)


def run_report(
    notebook: str | Path,
    parameters: dict | None = None,
    out_dir: str | Path = "reports",
    name: str | None = None,
    kernel_name: str = KERNEL_NAME,
    progress_bar: bool = False,
    cwd: str | Path | None = None,
) -> Path:
    """Execute ``notebook`` with papermill into ``<out_dir>/<name>/`` (.ipynb and .html).

    Args:
        notebook: path of the template notebook (.ipynb with a cell tagged ``parameters``).
        parameters: values overriding the ``parameters`` cell; unknown names are refused
            before anything runs. Absolute paths among them are shown, and passed, relative
            to ``cwd`` (:func:`shown_path`), as are papermill's notebook paths.
        out_dir: folder of all reports; a notebook's panels go to ``<out_dir>/<name>/figures``
            unless ``figures_dir`` is given.
        name: report name (default: the notebook's stem).
        kernel_name: Jupyter kernel; must start this environment's Python (see check_kernel).
        progress_bar: papermill's per-cell progress bar.
        cwd: working folder of the kernel (default: the current one, so that relative paths
            given as parameters mean the same inside the notebook as on the command line).

    Returns:
        the HTML page; the executed notebook is next to it.

    Raises:
        DataError: bad input (nothing written).
        ConfigError: bad input (nothing written).
        RunError: a cell failed, after the partial report and ``FAILED`` (which names the cell
            and the exception) were written.
        KeyboardInterrupt: Ctrl-C, after the kernel was stopped and what the run wrote was
            removed (the previous panels put back).
    """
    import nbformat

    notebook = _check_notebook(notebook)
    parameters = dict(parameters or {})
    name = name or notebook.stem
    if not _REPORT_NAME.match(name):
        raise ConfigError(f"report name {name!r} must be a file name (letters, digits, _ - .)")
    check_parameters(notebook, parameters)
    check_kernel(kernel_name)

    report_dir = Path(out_dir) / name
    base = Path(cwd or Path.cwd()).resolve()
    own_figures = None
    if "figures_dir" in notebook_parameters(notebook) and "figures_dir" not in parameters:
        # panels belong to the report that shows them, never to a shared ./reports/figures
        own_figures = report_dir / "figures"
        parameters["figures_dir"] = str(own_figures)
    parameters = {key: shown_path(value, base) for key, value in parameters.items()}
    executed_path = report_dir / f"{name}.ipynb"
    html_path = report_dir / f"{name}.html"
    failed_path = report_dir / FAILED_MARKER
    # papermill saves the notebook after every cell: let it write into a private folder and
    # move the result into place, so the report folder never holds a half-written notebook;
    # an interrupt (Ctrl-C) leaves the report folder as it was before the run
    with (
        _new_folder(report_dir),
        tempfile.TemporaryDirectory(dir=report_dir, prefix=".running-") as scratch,
        _staged_figures(own_figures, Path(scratch)),
    ):
        running_path = Path(scratch) / f"{name}.ipynb"
        failure, details = _execute(
            notebook, running_path, parameters, kernel_name, progress_bar, cwd
        )
        if running_path.exists():
            executed = nbformat.read(running_path, as_version=4)
            papermill_metadata = executed.metadata.get("papermill", {})
            papermill_metadata["input_path"] = shown_path(str(notebook.resolve()), base)
            papermill_metadata["output_path"] = shown_path(str(executed_path.resolve()), base)
            title = f"FAILED: {name}" if failure else name
            _write_html(executed, html_path, title, failure)
            with atomic_path(executed_path) as tmp:
                nbformat.write(executed, tmp)
    if failure:
        write_text(f"{failure}\n\n{details}".rstrip() + "\n", failed_path)
        raise RunError(f"{failure} (partial report in {report_dir}/)")
    failed_path.unlink(missing_ok=True)
    return html_path


def _execute(
    notebook: Path,
    running_path: Path,
    parameters: dict,
    kernel_name: str,
    progress_bar: bool,
    cwd: str | Path | None,
) -> tuple[str | None, str]:
    """Run the notebook with papermill into ``running_path``; return ``(failure, details)``:
    None and "" when every cell ran, else one line naming the failed cell and the traceback.
    KeyboardInterrupt (Ctrl-C) propagates, the kernel already stopped."""
    import nbformat
    import papermill
    from jupyter_client.manager import KernelManager
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    config = Config()
    if "transport_encryption" in KernelManager.class_trait_names():  # jupyter_client >= 8.10
        # encrypt the local kernel channels (CurveZMQ) where the kernel supports it, instead
        # of plain-text TCP (and ipykernel's warning about it on every report)
        config.KernelManager.transport_encryption = "auto"
    try:
        papermill.execute_notebook(
            str(notebook),
            str(running_path),
            parameters=parameters,
            kernel_name=kernel_name,
            language="python",  # also for notebooks saved without language metadata
            progress_bar=progress_bar,
            cwd=None if cwd is None else str(cwd),
            config=config,
            # the kernel is stopped after the last cell ran or failed, or on Ctrl-C; asked to
            # shut down while a cell runs, it prints a traceback on our stderr as its sockets
            # close under it, so it is killed instead (it has nothing left to save)
            shutdown_kernel="immediate",
        )
    except PapermillExecutionError as error:
        executed = nbformat.read(running_path, as_version=4)
        cells = [
            cell
            for cell in executed.cells
            if "papermill-error-cell-tag" not in cell.metadata.get("tags", [])
        ]
        return _describe_failure(error, cells, notebook), _ANSI.sub("", "\n".join(error.traceback))
    except (DeadKernelError, CellTimeoutError) as error:
        return f"notebook {notebook} stopped: {type(error).__name__}: {error}", ""
    return None, ""


@contextlib.contextmanager
def _new_folder(folder: Path) -> Iterator[None]:
    """Create ``folder`` (and its missing parents); if the block raises (Ctrl-C, a kernel that
    does not start), remove the folders this created again, so that the run leaves no trace."""
    missing = [folder, *folder.parents]
    missing = [path for path in missing if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in missing:  # deepest first; one that holds something else stays
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


@contextlib.contextmanager
def _staged_figures(figures: Path | None, scratch: Path) -> Iterator[None]:
    """Let a run replace the report's own panel folder ``figures`` as a whole.

    The previous panels wait in ``scratch`` (deleted with it), so that a run leaves no panel
    of an earlier one (a montage of an epoch no longer shown); if the block raises (Ctrl-C),
    the panels this run wrote are removed and the previous ones put back. A cell that
    fails is not an exception here: its partial report keeps the panels it wrote.
    """
    if figures is None:
        yield
        return
    previous = scratch / "previous-figures"
    if figures.exists():
        figures.rename(previous)
    try:
        yield
    except BaseException:
        shutil.rmtree(figures, ignore_errors=True)
        if previous.exists():
            previous.rename(figures)
        raise
