"""The output folder of a tile-inference run: one run at a time, no leftovers of killed runs,
and a manifest of which model wrote each tile."""

import atexit
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from bundle.atomic import atomic_path

logger = logging.getLogger(__name__)

LOCK_NAME = ".inference.lock"
MANIFEST_NAME = "manifest.json"
PARTIAL_PREFIX = ".partial-"


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``path`` (a model file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputFolder:
    """Claim ``path`` for one inference run with the model at ``model_path``.

    - A lock file (created exclusively, holding the pid) refuses a second live run on the same
      folder; the lock of a dead run is taken over. It is removed when the process exits.
    - Leftovers of a killed run (hidden ``.partial-*`` folders, ``.*.tmp*`` files) are removed.
    - ``manifest.json`` maps each tile's stem to the model (path and SHA-256 prefix) that wrote
      it; a folder holding another model's tiles is refused unless ``overwrite``.

    Raises:
        SystemExit: another live run holds the folder, or it holds another model's outputs.
    """

    def __init__(self, path: str | os.PathLike, model_path: str | os.PathLike, overwrite: bool = False):
        self.path, self.model_path = Path(path), Path(model_path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._remove_leftovers()
        self.model = {
            "path": str(self.model_path.resolve()),
            "sha256": file_digest(self.model_path) if self.model_path.is_file() else None,
        }
        manifest = self.path / MANIFEST_NAME
        self.tiles: dict[str, dict] = json.loads(manifest.read_text()) if manifest.is_file() else {}
        others = sorted({entry["model"]["sha256"] for entry in self.tiles.values()} - {self.model["sha256"]})
        if others and not overwrite:
            self._unlock()
            raise SystemExit(
                f"{self.path}: holds outputs of another model (sha256 {', '.join(others)}; see {MANIFEST_NAME}); "
                "choose another --output_dir, or rerun with --overwrite True to replace them"
            )

    def _lock(self) -> None:
        lock = self.path / LOCK_NAME
        for _ in range(2):
            try:
                handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock.read_text().strip() or "0"
                if holder.isdigit() and _alive(int(holder)) and int(holder) != os.getpid():
                    raise SystemExit(
                        f"{self.path}: another inference run (pid {holder}) is writing to this folder; "
                        "wait for it to end or choose another --output_dir"
                    ) from None
                logger.warning(
                    "%s: taking over the lock of a run that is no longer running (pid %s)", self.path, holder
                )
                lock.unlink(missing_ok=True)
                continue
            os.write(handle, str(os.getpid()).encode())
            os.close(handle)
            atexit.register(self._unlock)
            return
        raise SystemExit(f"{lock}: could not take the lock of the output folder")

    def _unlock(self) -> None:
        lock = self.path / LOCK_NAME
        if lock.is_file() and lock.read_text().strip() == str(os.getpid()):
            lock.unlink()

    def _remove_leftovers(self) -> None:
        leftovers = list(self.path.glob(f"{PARTIAL_PREFIX}*")) + list(self.path.glob(".*.tmp*"))
        for item in leftovers:
            shutil.rmtree(item) if item.is_dir() else item.unlink(missing_ok=True)
        if leftovers:
            logger.warning("%s: removed %d leftover(s) of an interrupted run", self.path, len(leftovers))

    def record(self, stem: str, files: list[str]) -> None:
        """Note in the manifest that this run's model wrote ``files`` for ``stem``."""
        self.tiles[stem] = {
            "model": self.model,
            "files": files,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with atomic_path(self.path / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(self.tiles, indent=1, sort_keys=True))
