"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A reader (or a crash) never sees half a file, and a failed write leaves the old file as
it was. Every result file of the project goes through here.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xai_lab.errors import UserError

FULL_BELOW = 1 << 20  # bytes free under which a failed write is put down to a full disk


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    Raises:
        UserError: the disk filled while writing (``ENOSPC``, a quota, or whatever a library raised with under
            :data:`FULL_BELOW` bytes left, as torch.save does): one line naming ``path``. The temporary file is
            removed and ``path``, if it existed, is as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise_if_full(e, path)
        raise
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and disk_full(e, path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise UserError(full_message(path)) from None
        raise


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a new temporary folder beside ``path`` to fill; the caller renames it into place (it may find
    ``path`` made by another process first). On any failure it is removed; a full disk is a one-line UserError
    naming ``path``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # unlike tempfile.mkdtemp, keeps the umask's permissions for the final folder
        yield tmp
    except Exception as e:
        raise_if_full(e, path)  # before the folder is removed: what it took is part of the evidence
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # on failure, or left over when the caller's rename did not happen


def disk_full(e: BaseException, folder: Path) -> bool:
    """Whether ``e``, raised while writing into ``folder``, came from a full disk."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


def full_message(path: Path) -> str:
    return (f"no space left on the device to write {path}: nothing written there (an earlier {path.name} is as it "
            "was); free some space and run the command again")


def raise_if_full(e: BaseException, path: Path) -> None:
    """Raise the one-line UserError for ``path`` when ``e`` came from a full disk."""
    if disk_full(e, path.parent if path.parent.exists() else Path("/")):
        raise UserError(full_message(path)) from None


def atomic_write_with(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_with(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
