"""Downloads with time-outs: data archives and ImageNet weights, from http(s) or file:// URLs.

A mirror that accepts the connection and never answers would otherwise hang a run
forever; here every connect and every read gives up after DOWNLOAD_TIMEOUT_S seconds and
the run stops with one line naming the URL. The file is streamed to a temporary name
beside its destination and renamed into place only when complete (and its checksum
matches), so an interrupted or failed download leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import urllib.error
import urllib.request

from tqdm import tqdm

from common.errors import UserError, os_reason

TIMEOUT_ENV = "CIFAR_DOWNLOAD_TIMEOUT"  # seconds; how long one connect or read may wait
DOWNLOAD_TIMEOUT_S = 30.0
CHUNK = 1 << 20


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DOWNLOAD_TIMEOUT_S
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise UserError(f"{TIMEOUT_ENV} must be above 0 seconds, got {text}")
    return value


def fetch(url: str, path: str, digest: str = "md5", expected: str | None = None, what: str = "file") -> None:
    """Download `url` to `path`; `expected`: the hex digest (or its prefix) the file must have."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
    except OSError as e:
        raise UserError(f"cannot write the {what} into {folder}: {os_reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, hashlib.new(digest), what, folder)
        if expected and not actual.startswith(expected):
            raise UserError(f"downloaded {url} but its {digest} is {actual[:16]}..., not {expected}; "
                            f"nothing was kept, try again")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _stream(url: str, out, hasher, what: str, folder: str) -> str:
    timeout = timeout_s()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {os.path.basename(url)}",
                      leave=False, disable=None) as bar:
                while chunk := response.read(CHUNK):
                    _write(out, chunk, what, folder)
                    hasher.update(chunk)
                    bar.update(len(chunk))
    except (socket.timeout, TimeoutError):
        raise UserError(f"downloading the {what} from {url} timed out: no answer within {timeout:g} s "
                        f"(set {TIMEOUT_ENV} to wait longer)") from None
    except urllib.error.URLError as e:
        reason = e.reason if not isinstance(e.reason, OSError) else os_reason(e.reason)
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:g} s"
        raise UserError(f"downloading the {what} from {url} failed ({reason})") from None
    except OSError as e:
        raise UserError(f"downloading the {what} from {url} failed ({os_reason(e)})") from None
    return hasher.hexdigest()


def _write(out, chunk: bytes, what: str, folder: str) -> None:
    try:
        out.write(chunk)
    except OSError as e:  # our disk, not the network: name the folder
        raise UserError(f"cannot write the {what} into {folder}: {os_reason(e)}") from None
