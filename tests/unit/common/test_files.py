from pathlib import Path

import pytest

from services.common.files import atomic_write


def leftovers(folder: Path, keep: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p != keep]


@pytest.mark.parametrize(
    ("name", "old", "data"),
    [
        ("error_distribution.png", None, b"\x89PNG first"),
        ("out.bin", b"old content that is longer than the new one", b"new"),
        ("logs/nested/metric.png", None, b"data"),
        ("empty", b"something", b""),
    ],
    ids=["creates_the_file", "replaces_the_content", "creates_missing_folders", "of_empty_data_gives_an_empty_file"],
)
def test_atomic_write(tmp_path: Path, name: str, old: bytes | None, data: bytes) -> None:
    target = tmp_path / name
    if old is not None:
        target.write_bytes(old)
    atomic_write(target, data)
    assert target.read_bytes() == data


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    for i in range(20):
        atomic_write(target, f"version {i}".encode())
    assert target.read_bytes() == b"version 19"
    assert leftovers(tmp_path, target) == []


def test_a_failed_write_keeps_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]  # wrong on purpose: the write fails half-way
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path, target) == []


def test_the_written_file_is_readable_by_others(tmp_path: Path) -> None:
    # The PNG is served and read by other processes; mkstemp alone would make it 0600.
    target = tmp_path / "out.bin"
    atomic_write(target, b"x")
    assert target.stat().st_mode & 0o644 == 0o644
