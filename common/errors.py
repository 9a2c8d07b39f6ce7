"""The one exception a user can act on: printed as one line (`error: ...`), exit code 1.

Anything that reads a file, a flag, the network or the disk turns its failure into a
UserError that names the file, folder, flag or URL and what to do. Programming errors stay
ordinary exceptions with their tracebacks.
"""
from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user can fix; the scripts print it as one line and exit 1."""


class Diverged(UserError):
    """The loss became nan or infinite: the recipe fails, so resuming the same run would fail again."""


class OutOfMemory(UserError):
    """The batch did not fit in the device's memory: a smaller batch or image fits; the run stays resumable."""


def os_reason(e: OSError) -> str:
    """'No space left on device (ENOSPC)': the system's words plus the errno name to search for."""
    name = errno.errorcode.get(e.errno or 0)
    text = e.strerror or str(e) or type(e).__name__
    return f"{text} ({name})" if name else text


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty line (a library's message can be empty or many lines long)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(e).__name__
