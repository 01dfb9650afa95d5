"""Atomic writes: either the old file or the complete new one, with the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from retina_raf.io import atomic_path, write_text


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    """An exception while writing keeps the previous file and removes the temporary one."""
    target = tmp_path / "out.txt"
    write_text("old", target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_written_file_gets_umask_permissions(tmp_path):
    """Files are readable by others as with open() (not mkstemp's 0600)."""
    mask = os.umask(0o022)
    try:
        path = write_text("x", tmp_path / "a.txt")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
