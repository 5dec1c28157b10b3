import errno

import pytest
from bundle.atomic import DiskFullError, atomic_path


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.suffix == ".txt"
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_gives_the_usual_file_mode(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),  # what write() raises when the disk fills
        RuntimeError(
            "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: file write failed"
        ),  # torch.save
    ],
    ids=["write", "torch.save"],
)
def test_a_full_disk_names_the_file_and_the_space_and_keeps_the_old_file(tmp_path, failure):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(DiskFullError) as error:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 3 * 2**20)
            raise failure
    message = str(error.value)
    assert (
        message.startswith(f"{target}: no space left on the device (")
        and "MiB free; the file needs more than the 3 MiB written" in message
    )
    assert error.value.errno == errno.ENOSPC and isinstance(error.value, OSError)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="^something else$"):
        with atomic_path(tmp_path / "a.txt"):
            raise RuntimeError("something else")
