"""What ``python -m monai.bundle run`` prints when a user gets something wrong: one line
naming the file and the problem, not a traceback of the engine that met it."""

import sys
from collections.abc import Sequence
from pathlib import Path

from bundle.atomic import DiskFullError
from bundle.checkpoints import CheckpointError
from bundle.data import DataFileError
from bundle.overrides import check_overrides

# Errors about the user's files, folders and settings, whose message says all there is to say.
USER_ERRORS = (DataFileError, CheckpointError, DiskFullError, FileNotFoundError)


def user_error(error: BaseException | None) -> BaseException | None:
    """``error`` or the first exception it was raised from (MONAI wraps errors of a config item) that is a user error, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _short_excepthook(kind, error, traceback, default=sys.excepthook) -> None:
    found = user_error(error)
    if found is None:
        default(kind, error, traceback)
    else:
        print(f"error: {found}", file=sys.stderr)


def is_bundle_run(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is that of ``python -m monai.bundle run``."""
    return len(argv) > 1 and Path(argv[0]).parts[-2:] == ("bundle", "__main__.py") and argv[1] == "run"


def command_line_checks(argv: Sequence[str] | None = None) -> None:
    """First item of every workflow's ``initialize``: under ``python -m monai.bundle run``, user
    errors end with one line (``error: <file>: <problem>``, exit status 1) and the overrides
    are checked (:func:`bundle.overrides.check_overrides`). Elsewhere, nothing."""
    argv = list(sys.argv if argv is None else argv)
    if not is_bundle_run(argv):
        return
    sys.excepthook = _short_excepthook
    check_overrides(argv[2:])
