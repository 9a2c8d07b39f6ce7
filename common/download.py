"""Downloads with limits: data archives and ImageNet weights, from http(s) or file:// URLs.

A mirror can fail in ways that would hang a run or fill the disk: accept the connection and
never answer, trickle one byte a second, or stream forever. Here every connect and every
read gives up after CIFAR_DOWNLOAD_TIMEOUT seconds, a download slower than MIN_RATE_BPS
(averaged over that many seconds) is cut off, and so is one larger than the file it claims
to be. Every failure is one line naming the URL. The file is streamed to a temporary name
beside its destination and renamed into place only when complete and its checksum matches
(common.files), so a failed or killed download leaves nothing that the next run would read.
"""
from __future__ import annotations

import hashlib
import http.client
import math
import os
import socket
import time
import urllib.error
import urllib.request

from tqdm import tqdm

from common.errors import UserError, first_line, os_reason
from common.files import atomic_write, remove_stale_temp_files

TIMEOUT_ENV = "CIFAR_DOWNLOAD_TIMEOUT"  # seconds; how long one connect or read may wait
DOWNLOAD_TIMEOUT_S = 30.0
MIN_RATE_BPS = 10_000  # bytes/s: the CIFAR archives take under 5 hours even at this floor
CHUNK = 1 << 16


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DOWNLOAD_TIMEOUT_S
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{TIMEOUT_ENV} must be a finite number of seconds above 0, got {text}")
    return value


def fetch(url: str, path: str, digest: str, expected: str | None, what: str, max_bytes: int) -> None:
    """Download `url` to `path`; `expected`: the hex digest (or its prefix) the file must have;
    more than `max_bytes` is refused."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the {what} into {folder}: {os_reason(e)}") from None
    remove_stale_temp_files(folder, os.path.basename(path))  # left by a killed download

    def write(out) -> None:
        actual = _stream(url, out, hashlib.new(digest), what, max_bytes)
        if expected and not actual.startswith(expected):
            raise UserError(f"downloaded {url} but its {digest} is {actual[:16]}..., not {expected}; "
                            f"nothing was kept, try again")

    atomic_write(path, write, what=f"the {what} into {folder}")


def _stream(url: str, out, hasher, what: str, max_bytes: int) -> str:
    timeout = timeout_s()
    failed = f"downloading the {what} from {url}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = _content_length(response)
            if total is not None and total > max_bytes:
                raise UserError(f"{failed} refused: it announces {total:,} bytes, more than the "
                                f"{max_bytes:,} expected")
            _copy(response, out, hasher, total, max_bytes, timeout, failed, os.path.basename(url))
    except (socket.timeout, TimeoutError):
        raise UserError(f"{failed} timed out: no answer within {timeout:g} s (set {TIMEOUT_ENV} to wait "
                        f"longer)") from None
    except urllib.error.URLError as e:
        reason = e.reason if not isinstance(e.reason, OSError) else os_reason(e.reason)
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:g} s"
        raise UserError(f"{failed} failed ({first_line(Exception(reason))})") from None
    except (http.client.HTTPException, ValueError) as e:  # not HTTP, broken chunks, bad headers
        raise UserError(f"{failed} failed (the server's answer is not valid HTTP: {type(e).__name__}: "
                        f"{first_line(e, 120)})") from None
    except OSError as e:
        raise UserError(f"{failed} failed ({os_reason(e)})") from None
    return hasher.hexdigest()


def _content_length(response) -> int | None:
    text = response.headers.get("Content-Length")
    try:
        return int(text) if text else None
    except ValueError:
        return None  # a broken header: the size cap still applies while streaming


def _copy(response, out, hasher, total, max_bytes: int, window_s: float, failed: str, name: str) -> None:
    """Stream to `out`, cut off past max_bytes or below MIN_RATE_BPS over the last window_s seconds."""
    done, mark_time, mark_bytes = 0, time.monotonic(), 0
    read = getattr(response, "read1", response.read)  # what has arrived, not a full chunk: a trickle is seen
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}", leave=False, disable=None) as bar:
        while chunk := read(CHUNK):
            done += len(chunk)
            if done > max_bytes:
                raise UserError(f"{failed} stopped: more than the {max_bytes:,} bytes expected")
            _write(out, chunk, failed)
            hasher.update(chunk)
            bar.update(len(chunk))
            now = time.monotonic()
            if now - mark_time >= window_s:
                rate = (done - mark_bytes) / (now - mark_time)
                if rate < MIN_RATE_BPS:
                    raise UserError(f"{failed} stopped: {rate:,.0f} bytes/s over {now - mark_time:.0f} s, below "
                                    f"the {MIN_RATE_BPS:,} bytes/s floor")
                mark_time, mark_bytes = now, done


def _write(out, chunk: bytes, failed: str) -> None:
    try:
        out.write(chunk)
    except OSError as e:  # our disk, not the network: name the folder
        raise UserError(f"{failed}: cannot write into {os.path.dirname(out.name)}: {os_reason(e)}") from None
