"""Temp-then-rename: every file and folder this repo creates appears whole or not at all.

A file is written to a temporary name beside its destination, flushed to disk and renamed
over it; a folder (an unpacked archive, synthetic data) is filled under a temporary name
and renamed into place. A kill at any moment leaves the old version or the new one, never
half of either; what a SIGKILL leaves behind carries TEMP_SUFFIX and is removed by the next
writer of that folder. Files get the user's umask. A full or read-only disk is a UserError
naming the path and the errno (ENOSPC, EROFS).
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile

from common import stopping
from common.errors import UserError, os_reason

TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file
FOLDER_MODE = 0o777 & ~_current_umask()


def _temp_prefix(path: str) -> str:
    return "." + os.path.basename(os.path.normpath(path)) + "."


def atomic_write(path: str, write, what: str | None = None) -> None:
    """Call write(file) on a temp file beside `path`, fsync, then rename it over `path`.

    `path` may be a symlink: its target is replaced, the link stays. An exception inside
    `write` (a failed checksum, a signal) leaves nothing behind and propagates.
    """
    stopping.check()  # a stop recorded but not yet raised (see common.stopping) stops here, before the write
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600: a teammate could not read the file
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            remove_quietly(tmp)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {what or path}: {os_reason(e)}") from None
        raise


def write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_folder(path: str, fill, what: str) -> bool:
    """Create folder `path` by fill(temp_folder) and one rename. False if another process made
    `path` first (its copy is kept, ours dropped). Failures leave no temp folder."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
        os.chmod(tmp, FOLDER_MODE)
        fill(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if os.path.isdir(path):
                return False
            raise
        tmp = None
        return True
    except OSError as e:
        raise UserError(f"cannot write {what} into {parent}: {os_reason(e)}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temp_files(folder: str, name: str | None = None) -> None:
    """Temp files and folders left by a SIGKILL in `folder` (of `name` only, if given): never
    read, so safe to delete by the next writer."""
    pattern = (_temp_prefix(name) if name else ".") + "*" + TEMP_SUFFIX
    for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            remove_quietly(path)


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def check_writable(folder: str, what: str = "output folder") -> None:
    """Fail before training, not after an hour of it."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", suffix=TEMP_SUFFIX):
            pass
    except OSError as e:
        raise UserError(f"{what} {folder} is not writable: {os_reason(e)}") from None
