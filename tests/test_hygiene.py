"""The project speaks of itself only: no folder of one machine, no numbered work period and no
tracker reference in any file of the repository.

Checked: every text file git knows of (tracked, and untracked files that are not ignored), the
cell sources of notebooks (not their outputs); binary files and NetCDF data are skipped. A
finding names the file, the line and the text, so it can be fixed where it is. And the tests
stand alone: no test module imports another.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_SUFFIXES = {".nc", ".npz", ".png", ".pdf", ".svg", ".pt", ".whl", ".gz", ".zip"}

# A path that starts at the root of a machine's file system: /work/, /home/, /root/ or /tmp/
# where a path or a quoted string starts (not inside a longer relative path or a URL).
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|tmp)/")
# A numbered work period: the word for one, then its number or range.
WORK_PERIOD = re.compile(r"\b[Ss]essions? \d")
# A tracker reference: an issue, PR or pull request with its number, or "#" and a number (a
# colour such as "#000000" is all hex digits of length 3, 6 or 8 and is not one).
TRACKER = re.compile(r"\b(?:[Ii]ssues?|PRs?|[Pp]ull requests?) #?\d")
ISSUE_NUMBER = re.compile(r"(?<![\w&#])#(\d+)(?![0-9A-Za-z_])")
COLOUR_LENGTHS = {3, 6, 8}

# This file spells out examples of what it looks for (test_the_patterns_flag_what_they_should).
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
# What must stay, each with why: (path, text on the line).
ALLOWED = {
    # the default output folder of the GPU check on the (disposable) GPU machine, outside the
    # checkout that is copied there
    ("benchmarks/gpu_check.sh", "${OUT:-/tmp/gpu_check}"),
}


def repository_files() -> list[Path]:
    """Files git knows of, tracked or untracked-but-not-ignored, that exist in the work tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to list")
    names = sorted({name for name in listed.decode().split("\0") if name})
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of a text file; the cell sources of a notebook (numbered within the
    cell, after the cell's index: 1001 is cell 1, line 1); nothing for a binary file."""
    if path.suffix in SKIPPED_SUFFIXES:
        return []
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return []
    if path.suffix == ".ipynb":
        lines = []
        for index, cell in enumerate(json.loads(text).get("cells", [])):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            lines += [(1000 * index + n, line) for n, line in enumerate(source.splitlines(), 1)]
        return lines
    return list(enumerate(text.splitlines(), 1))


def findings(check) -> list[str]:
    """``path:line: text`` of every line where ``check(line)`` finds something not allowed."""
    found = []
    for path in repository_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative == SELF:
            continue
        for number, line in text_lines(path):
            if any(relative == where and text in line for where, text in ALLOWED):
                continue
            if check(line):
                found.append(f"{relative}:{number}: {line.strip()[:120]}")
    return found


def _issue_number(line: str) -> bool:
    return any(len(m.group(1)) not in COLOUR_LENGTHS for m in ISSUE_NUMBER.finditer(line))


def test_no_absolute_path_of_a_machine():
    found = findings(lambda line: MACHINE_PATH.search(line) is not None)
    assert not found, "absolute paths of a machine:\n" + "\n".join(found)


def test_no_numbered_work_period():
    found = findings(lambda line: WORK_PERIOD.search(line) is not None)
    assert not found, "numbered work periods:\n" + "\n".join(found)


def test_no_tracker_reference():
    found = findings(lambda line: TRACKER.search(line) is not None or _issue_number(line))
    assert not found, "tracker references:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ('out = "/tmp/x"', True),
        ("cd /home/user/project", True),
        ("see runs/tmp/x and https://example.org/home/page", False),
        ("as measured in ses" + "sion 8", True),  # split: this file is scanned too
        ("a session of training", False),
        ("(iss" + "ue 15)", True),
        ("see #" + "12 for the discussion", True),
        ('color = "#000000"', False),
        ('"#7a0177"', False),
        ("# 12 epochs", False),
    ],
)
def test_the_patterns_flag_what_they_should(line, flagged):
    hit = (
        MACHINE_PATH.search(line) is not None
        or WORK_PERIOD.search(line) is not None
        or TRACKER.search(line) is not None
        or _issue_number(line)
    )
    assert hit == flagged


def test_no_test_module_imports_another():
    """Test modules share helpers through tests/conftest.py (fixtures), never by importing
    one another (or conftest itself): each module runs alone, and moving a test moves no
    helper of another's."""
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top.startswith("test_") or top == "conftest":
                    found.append(f"tests/{path.name}:{node.lineno}: {name}")
    assert not found, "test modules importing test modules:\n" + "\n".join(found)
