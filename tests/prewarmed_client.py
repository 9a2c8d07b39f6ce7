"""The test side of tests/prewarmed.py: one prewarmed server per pytest worker, started on first use."""
import atexit
import io
import json
import locale
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prewarmed.py")
_lock = threading.Lock()
_servers = {}  # this process's pid -> Server (a forked test process starts its own)


class Server:
    def __init__(self, env: dict):
        self.env = env
        self.folder = tempfile.mkdtemp(prefix="prewarmed-")
        self.path = os.path.join(self.folder, "socket")
        # stdin is the server's lifeline: it exits when this process (and so the pipe) is gone
        self.process = subprocess.Popen([sys.executable, SERVER, self.path], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        line = self.process.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the prewarmed interpreter did not start (said {line!r}); run with PREWARMED=0")

    def run(self, argv: list, cwd: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
        """`python ARGV` forked from the server: as subprocess.run(capture_output=True, text=True) returns it."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.path)
            request = json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode() + b"\n"
            socket.send_fds(conn, [request], [0, out.fileno(), err.fileno()])
            replies = _Replies(conn)
            pid = int(replies.next(deadline=time.monotonic() + 60))
            try:
                code = int(replies.next(deadline=time.monotonic() + timeout))
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)  # as subprocess.run does when its timeout expires
                replies.next(deadline=time.monotonic() + 30)
                raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, _text(out), _text(err))
            return subprocess.CompletedProcess([sys.executable, *argv], code, _text(out), _text(err))


class _Replies:
    """Newline-ended replies read from the server's connection, each within a deadline."""

    def __init__(self, conn: socket.socket):
        self.conn, self.buffer = conn, b""

    def next(self, deadline: float) -> str:
        while b"\n" not in self.buffer:
            self.conn.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.conn.recv(4096)
            except socket.timeout:
                raise TimeoutError from None
            if not data:
                raise RuntimeError("the prewarmed interpreter closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def _text(file) -> str:
    """What subprocess's text mode makes of the bytes: the locale's encoding, universal newlines."""
    file.seek(0)
    return io.TextIOWrapper(io.BytesIO(file.read()), encoding=locale.getpreferredencoding(False)).read()


def server(env: dict):
    """This process's server if a run in `env` may fork from it (the suite's own environment, as the
    server started in it); None for a real `python`."""
    suite_env = dict(os.environ, PYTHONUNBUFFERED="1")
    if _settings(env) != _settings(suite_env) or env.get("PREWARMED") == "0":
        return None
    with _lock:
        found = _servers.get(os.getpid())
        if found is None:
            found = _servers[os.getpid()] = Server(env)
            atexit.register(shutil.rmtree, found.folder, True)
    return found if _settings(found.env) == _settings(env) else None


def _settings(env: dict) -> dict:
    """The environment but for the name of the test pytest is in (it changes at every test; the child
    gets the request's whole environment all the same)."""
    return {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}
