"""The atomic-write helper: all or nothing, the user's umask, messages that name the user's path."""

from __future__ import annotations

import os
import stat

import pytest

from moshi_mlx.files import atomic_path, atomic_write, normal_mode


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(tmp_path, umask_027):
    with atomic_write(tmp_path / "a.txt") as f:
        f.write("hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert mode(tmp_path / "a.txt") == mode(plain) == 0o640 == normal_mode()
    assert normal_mode(directory=True) == 0o750


def test_a_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as f:
        f.write("new, half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "b.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"data")
        assert not target.exists() and tmp.parent == tmp_path
    assert target.read_bytes() == b"data" and sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_errors_name_the_target_not_the_temporary(tmp_path):
    with pytest.raises(FileNotFoundError) as e, atomic_write(tmp_path / "nodir" / "a.txt") as f:
        f.write("x")
    assert str(tmp_path / "nodir" / "a.txt") in str(e.value) and ".tmp" not in str(e.value)
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError) as e, atomic_write(tmp_path / "adir") as f:
        f.write("x")
    assert str(e.value).endswith(f"'{tmp_path / 'adir'}'") and ".tmp" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


def test_atomic_write_refuses_append_mode(tmp_path):
    with pytest.raises(ValueError, match="mode must start with 'w'"), atomic_write(tmp_path / "a.txt", "a"):
        pass
