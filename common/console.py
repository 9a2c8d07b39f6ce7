"""The console must never stop a run: a closed pipe (`| head`) or a full device (/dev/full)
turns that stream off, with one warning on the other stream, and training goes on."""
from __future__ import annotations

import errno
import os
import sys

from common.errors import os_reason

LOG_INTERVAL_ENV = "CIFAR_LOG_INTERVAL_S"  # seconds between progress lines when not on a terminal (default 30)


class TolerantStream:
    """A text stream whose write or flush failure silences it (the fd is pointed at /dev/null,
    so Python's own flush at exit stays quiet too)."""

    def __init__(self, stream, name: str):
        self._stream = stream
        self._name = name
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
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
        if isinstance(other, TolerantStream) and not other.broken:
            why = "the pipe was closed (EPIPE)" if e.errno == errno.EPIPE else os_reason(e)
            other.write(f"warning: standard {'output' if self._name == 'stdout' else 'error'} failed ({why}): "
                        f"training goes on; train.json and test.json say how it went\n")
            other.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the wrapped stream's
        return getattr(self._stream, name)


def guard_console() -> None:
    if not isinstance(sys.stdout, TolerantStream):
        sys.stdout = TolerantStream(sys.stdout, "stdout")
    if not isinstance(sys.stderr, TolerantStream):
        sys.stderr = TolerantStream(sys.stderr, "stderr")
