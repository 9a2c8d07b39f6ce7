"""What reaches the console, and where it goes.

The console must never stop a run: a closed pipe (`| head`) or a full device (/dev/full)
turns that stream off, with one warning on the other stream, and training goes on. A plan's
member in a process of its own sends its console to its log.txt (`output_to`); the --jobs
launcher shows one line per running member (`LiveView`)."""
from __future__ import annotations

import contextlib
import errno
import os
import sys

from common.errors import os_reason
from common.files import FILE_MODE

LOG_INTERVAL_ENV = "CIFAR_LOG_INTERVAL_S"  # seconds between progress lines when not on a terminal (default 30)


class TolerantStream:
    """A text stream whose write or flush failure silences it (the fd is pointed at /dev/null,
    so Python's own flush at exit stays quiet too)."""

    def __init__(self, stream, name: str, warn: bool = True):
        self._stream = stream
        self._name = name
        self._warn = warn
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:  # a console that cannot show ± or ·: '?' in their place
                encoding = getattr(self._stream, "encoding", None) or "ascii"
                return self._stream.write(text.encode(encoding, "replace").decode(encoding))
            except OSError as e:
                self._silence(e)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError as e:
                self._silence(e)

    def _silence(self, e: OSError) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        other = sys.stderr if self._name == "stdout" else sys.stdout
        if self._warn and isinstance(other, TolerantStream) and not other.broken:
            why = "the pipe was closed (EPIPE)" if e.errno == errno.EPIPE else os_reason(e)
            other.write(f"warning: standard {'output' if self._name == 'stdout' else 'error'} failed ({why}): "
                        f"training goes on; train.json and test.json say how it went\n")
            other.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the wrapped stream's
        return getattr(self._stream, name)


def guard_console(warn: bool = True) -> None:
    """Both streams tolerant; warn: say on the other stream that training goes on (a run), or stay
    quiet (a listing or a table whose reader closed the pipe: `| head` wanted only the start)."""
    if not isinstance(sys.stdout, TolerantStream):
        sys.stdout = TolerantStream(sys.stdout, "stdout", warn)
    if not isinstance(sys.stderr, TolerantStream):
        sys.stderr = TolerantStream(sys.stderr, "stderr", warn)


@contextlib.contextmanager
def output_to(log_path: str | None):
    """stdout and stderr (the file descriptors, so tqdm and C libraries too) appended to log_path,
    put back afterwards; None: left alone."""
    if log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, original in zip((1, 2), saved):
            os.dup2(original, target)
            os.close(original)


def last_line(path: str) -> str:
    """The last non-empty line of a log (a progress bar's latest state), or ''."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
