"""Atomic file writes: write to a temporary name in the same folder, then rename.

A run killed mid-write leaves either the old file or the new one, never half a file.
"""

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary name keeps ``path``'s suffix so writers that choose a format by
    extension (tifffile, Pillow, torch) behave as they would on the final name.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as error:
        # torch.save reports a full disk as RuntimeError("... PytorchStreamWriter failed writing file ...: file write failed")
        if not (getattr(error, "errno", None) == errno.ENOSPC or "file write failed" in str(error)):
            raise
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        tmp_path.unlink(missing_ok=True)  # before measuring the free space
        raise DiskFullError(path, written) from error
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class DiskFullError(OSError):
    """A write that ran out of space: names the file, the free space and what was written; nothing was replaced."""

    def __init__(self, path: Path, written: int):
        free = shutil.disk_usage(path.parent).free
        super().__init__(
            errno.ENOSPC,
            f"{path}: no space left on the device ({free / 2**20:.0f} MiB free; the file needs more than "
            f"the {written / 2**20:.0f} MiB written before the disk filled); the earlier file, if any, "
            "is unchanged and no partial file is left",
        )
        self.path = path

    def __str__(self) -> str:
        return self.strerror
