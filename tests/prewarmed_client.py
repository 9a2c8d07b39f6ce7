"""The test side of tests/prewarmed.py: one prewarmed server per pytest worker, started on first use."""
import atexit
import io
import json
import locale
import os
import selectors
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
_servers = {}  # (this process's pid, the environment's settings) -> Server


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

    def close(self) -> None:
        """Stop the server (its children, if any, run on) and remove its socket's folder."""
        self.process.stdin.close()
        self.process.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)

    def popen(self, argv: list, cwd: str, env: dict, stdout=None, stderr=None) -> "Process":
        """`python ARGV` forked from the server, as subprocess.Popen(ARGV, stdout=, stderr=, text=True)
        starts it (PIPE, DEVNULL, STDOUT, a file or None)."""
        ours, theirs = [None, None], []  # the pipe ends this side reads; the fds handed to the child
        for i, choice in enumerate((stdout, stderr)):
            if choice == subprocess.PIPE:
                ours[i], write = os.pipe()
                theirs.append(write)
            elif choice == subprocess.STDOUT:
                theirs.append(os.dup(theirs[0]))
            elif choice == subprocess.DEVNULL:
                theirs.append(os.open(os.devnull, os.O_WRONLY))
            else:  # a file, or this process's own stream
                theirs.append(os.dup(choice.fileno() if choice is not None else i + 1))
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            request = json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode() + b"\n"
            socket.send_fds(conn, [request], [0, *theirs])
        finally:
            for fd in theirs:
                os.close(fd)
        replies = _Replies(conn)
        pid = int(replies.next(deadline=time.monotonic() + 60))
        return Process([sys.executable, *argv], pid, conn, replies, *ours)

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

    def next(self, deadline: float | None) -> str:
        """The next reply; None waits as long as it takes."""
        while b"\n" not in self.buffer:
            self.conn.settimeout(None if deadline is None else max(0.01, deadline - time.monotonic()))
            try:
                data = self.conn.recv(4096)
            except socket.timeout:
                raise TimeoutError from None
            if not data:
                raise RuntimeError("the prewarmed interpreter closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


class Process:
    """What subprocess.Popen(..., text=True) returns, for a process forked from the server: its pid,
    stdout and stderr (text, where piped), poll, wait, communicate, send_signal, kill, returncode."""

    def __init__(self, args: list, pid: int, conn: socket.socket, replies: _Replies, stdout_fd, stderr_fd):
        self.args, self.pid, self.returncode = args, pid, None
        self._conn, self._replies = conn, replies
        encoding = locale.getpreferredencoding(False)  # subprocess's text mode
        self.stdout = None if stdout_fd is None else open(stdout_fd, encoding=encoding)
        self.stderr = None if stderr_fd is None else open(stderr_fd, encoding=encoding)

    def poll(self):
        if self.returncode is None:
            try:
                self._ended(self._replies.next(deadline=time.monotonic()))
            except TimeoutError:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self._ended(self._replies.next(None if timeout is None else time.monotonic() + timeout))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def _ended(self, reply: str) -> None:
        self.returncode = int(reply)
        self._conn.close()

    def communicate(self, timeout: float | None = None):
        """(stdout, stderr) read to their ends, then the exit: as Popen.communicate without input."""
        deadline = None if timeout is None else time.monotonic() + timeout
        streams = [s for s in (self.stdout, self.stderr) if s is not None and not s.closed]
        texts = {id(s): [] for s in streams}
        with selectors.DefaultSelector() as selector:
            for stream in streams:
                selector.register(stream.fileno(), selectors.EVENT_READ, stream)
            while selector.get_map():
                ready = selector.select(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in ready:
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        texts[id(key.data)].append(data)
                    else:
                        selector.unregister(key.fd)
        self.wait(None if deadline is None else max(0.01, deadline - time.monotonic()))
        out = [_decoded(b"".join(texts[id(s)])) if s in streams else None for s in (self.stdout, self.stderr)]
        for stream in streams:
            stream.close()
        return tuple(out)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never a signal to a pid that may have been reused
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _decoded(data: bytes) -> str:
    return io.TextIOWrapper(io.BytesIO(data), encoding=locale.getpreferredencoding(False)).read()


def _text(file) -> str:
    """What subprocess's text mode makes of the bytes: the locale's encoding, universal newlines."""
    file.seek(0)
    return io.TextIOWrapper(io.BytesIO(file.read()), encoding=locale.getpreferredencoding(False)).read()


def server(env: dict):
    """A server for a run in `env` (the suite's own environment, as a test that set a variable with
    monkeypatch left it: each distinct one gets a server of its own); None for a real `python`."""
    suite_env = dict(os.environ, PYTHONUNBUFFERED="1")
    if _settings(env) != _settings(suite_env) or env.get("PREWARMED") == "0":
        return None
    key = (os.getpid(), tuple(sorted(_settings(env).items())))  # a forked test process starts its own
    with _lock:
        found = _servers.get(key)
        if found is None:
            found = _servers[key] = Server(env)
            atexit.register(shutil.rmtree, found.folder, True)
    return found


def _settings(env: dict) -> dict:
    """The environment but for what only matters after the fork: the name of the test pytest is in,
    and the repo's own CIFAR_* settings (read by common/, which the server never imports). The child
    gets the request's whole environment all the same."""
    return {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST" and not k.startswith("CIFAR_")}
