"""Writing user-named output files: atomic for regular files, never replacing a link or device."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from labeller.errors import UserError
from labeller.output_files import open_output


def test_a_regular_file_is_replaced_whole_and_no_partial_remains(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("old")
    with open_output(out) as handle:
        handle.write("new")
        assert out.read_text() == "old"  # readers see the old file until the new one is whole
    assert out.read_text() == "new"
    assert list(tmp_path.iterdir()) == [out]


def test_a_failure_keeps_the_old_file_and_removes_the_partial(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("old")
    with pytest.raises(RuntimeError), open_output(out) as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert out.read_text() == "old"
    assert list(tmp_path.iterdir()) == [out]


def test_a_symlink_is_followed_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with open_output(link) as handle:
        handle.write("new")
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == "new"


def test_a_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    with open_output(fifo) as handle:
        handle.write("streamed")
    reader.join(timeout=10)
    assert received == ["streamed"]
    assert fifo.exists() and not fifo.is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_device_is_an_error_not_a_success() -> None:
    full = pytest.raises(UserError, match="cannot write /dev/full: No space left")
    with full, open_output(Path("/dev/full")) as handle:
        handle.write("x" * 100_000)
    assert Path("/dev/full").is_char_device()


def test_an_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    refused = pytest.raises(UserError, match=r"cannot write .*choose another path")
    with refused, open_output(blocked / "sub" / "out.json") as handle:
        handle.write("x")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"), open_output(tmp_path):
        pass
