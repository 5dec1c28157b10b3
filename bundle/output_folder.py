"""The output folder of a tile-inference run: one run at a time, no leftovers of killed runs,
a manifest of which model wrote each tile, and finished tiles known to a rerun."""

import atexit
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from bundle.atomic import atomic_path
from bundle.wsi.cohort import barrier, process_rank

logger = logging.getLogger(__name__)

LOCK_NAME = ".inference.lock"
MANIFEST_NAME = "manifest.json"
JOURNAL_GLOB = ".manifest-rank*.jsonl"
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
      it, when, and in which process (rank); a folder holding another model's tiles is refused unless ``overwrite``.
    - :meth:`finished` tells a rerun which tiles this model has already written in full.

    Under ``torch.distributed`` every rank opens the folder: rank 0 takes the lock and removes
    the leftovers before any rank writes. Each rank appends its tiles to its own journal
    (``.manifest-rank<r>.jsonl``, one line per tile, so a tile costs the same whatever the
    folder holds); :meth:`close` merges the journals into ``manifest.json``. Journals left by a
    killed run are read, and merged, by the next.

    Raises:
        SystemExit: another live run holds the folder, or it holds another model's outputs.
    """

    def __init__(self, path: str | os.PathLike, model_path: str | os.PathLike, overwrite: bool = False):
        self.path, self.model_path, self.overwrite = Path(path), Path(model_path), overwrite
        self.rank = process_rank()[0]
        self.path.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            self._lock()
            self._remove_leftovers()
        self.model = {
            "path": str(self.model_path.resolve()),
            "sha256": file_digest(self.model_path) if self.model_path.is_file() else None,
        }
        self.tiles = self._read_manifest()
        barrier()  # no rank writes before rank 0 holds the lock, has cleaned up, and every rank has read
        others = sorted({entry["model"]["sha256"] for entry in self.tiles.values()} - {self.model["sha256"]})
        if others and not overwrite:
            self._unlock()
            raise SystemExit(
                f"{self.path}: holds outputs of another model (sha256 {', '.join(others)}; see {MANIFEST_NAME}); "
                "choose another --output_dir, or rerun with --overwrite True to replace them"
            )
        self.journal = self.path / f".manifest-rank{self.rank}.jsonl"

    def _read_manifest(self) -> dict[str, dict]:
        """``manifest.json`` updated by every journal's lines (a line cut by a kill is ignored)."""
        manifest = self.path / MANIFEST_NAME
        tiles = json.loads(manifest.read_text()) if manifest.is_file() else {}
        for journal in sorted(self.path.glob(JOURNAL_GLOB)):
            for line in journal.read_text().splitlines():
                try:
                    tiles.update(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("%s: ignoring an incomplete line (a run was killed while writing it)", journal)
        return tiles

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
        """Note in this rank's journal that this run's model wrote ``files`` for ``stem``."""
        written = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry = {"model": self.model, "files": files, "written": written, "rank": self.rank}
        self.tiles[stem] = entry
        with open(self.journal, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({stem: entry}, sort_keys=True) + "\n")

    def finished(self, stem: str) -> bool:
        """Whether this model wrote every output of ``stem`` here already (never with ``overwrite``)."""
        entry = self.tiles.get(stem)
        return (
            not self.overwrite
            and entry is not None
            and entry["model"]["sha256"] == self.model["sha256"]
            and all((self.path / name).is_file() for name in entry["files"])
        )

    def close(self) -> None:
        """After every rank has written its tiles, rank 0 merges the journals into ``manifest.json``."""
        barrier()
        if self.rank != 0:
            return
        tiles = self._read_manifest()
        with atomic_path(self.path / MANIFEST_NAME) as tmp:
            tmp.write_text(json.dumps(tiles, indent=1, sort_keys=True))
        for journal in self.path.glob(JOURNAL_GLOB):
            journal.unlink()
