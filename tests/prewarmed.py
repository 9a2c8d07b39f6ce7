"""A Python that has already imported torch: the suite's script processes fork from it.

A test's `python ex_N.py ARGS` spends about 3.7 s importing torch and torch._dynamo, and a run
another 2.8 s in scikit-learn, scipy and matplotlib (python -X importtime, 2-core AMD EPYC), then
1.5 s tearing them down at exit, besides the script's own work:
most of the suite's time was imports. tests/conftest.py's `run_python` and `popen_python` send
argv, cwd, the environment and the three standard file descriptors to this server (one per
pytest worker and environment, started on first use); it forks a child that takes them over and
runs `python SCRIPT ARGS`, `-m MODULE ARGS` or `-c CODE ARGS` as the interpreter would (sys.argv,
sys.path[0], a fresh __main__, SystemExit, uncaught exceptions, atexit), and reports the child's
exit code. Only third-party libraries are preloaded, never common/: the repo's modules, signal
handlers and environment are a fresh process's.

What a fork cannot be: a process's first seconds, the interpreter's own teardown, signal
dispositions handed down by the parent (nohup), a command line found by pgrep, an environment
that matters before the fork (a stop hook's PYTHONPATH, MPLBACKEND, a console's encoding, the
thread count; the repo's own CIFAR_* settings are read after it and may differ). Those tests start
a real `python`, and so does every call with PREWARMED=0 in the environment, to check the suite.

    python tests/prewarmed.py SOCKET_PATH    # prints "ready" once the libraries are in
"""
import json
import os
import select
import socket
import sys

PRELOADED = ("torch", "torch._dynamo", "torchvision", "numpy", "scipy.stats", "scipy.optimize", "sklearn.metrics",
             "sklearn.model_selection", "matplotlib", "seaborn", "tqdm", "torch.utils.tensorboard", "submitit")
MAX_FDS = 3
POLL_S = 0.02  # how often the server reaps finished children (their status goes back at once after)


def _preload() -> None:
    # matplotlib picks its backend at pyplot's import: Agg, as common.plots asks, without pyplot here
    # (common.plots sets MPLBACKEND itself in the child, as in any fresh process)
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)


def _recv_request(conn: socket.socket):
    """(request dict, [stdin, stdout, stderr] fds) from one client message."""
    chunks, fds = [], []
    while True:
        data, new_fds, _, _ = socket.recv_fds(conn, 1 << 20, MAX_FDS)
        fds += new_fds
        if not data:
            break
        chunks.append(data)
        if data.endswith(b"\n"):
            break
    return json.loads(b"".join(chunks)), fds


def serve(path: str):
    """Serve until stdin (the pytest worker) closes; returns only in a forked child, with its request."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    clients = {}  # child pid -> the connection waiting for its status
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], POLL_S)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            os._exit(0)  # the worker is gone; its children (if any) carry on and are reaped by init
        if listener in readable:
            conn, _ = listener.accept()
            request, fds = _recv_request(conn)
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in clients.values():
                    other.close()
                conn.close()
                return request, fds
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())
            clients[pid] = conn
        _reap(clients)


def _reap(clients: dict) -> None:
    while clients:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = clients.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass  # the test stopped waiting (its timeout)
            conn.close()


def become(request: dict, fds: list) -> None:
    """Turn this forked child into `python ARGV...` started in request's cwd and environment."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])


def run_main(argv: list) -> None:
    """Run argv as the interpreter runs a script, `-m module` or `-c code`: in a fresh __main__."""
    import runpy

    if argv[0] == "-c":
        import builtins
        import types

        sys.argv = ["-c", *argv[2:]]
        sys.path[0] = ""
        main = sys.modules["__main__"] = types.ModuleType("__main__")
        main.__builtins__ = builtins
        exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        return
    if argv[0] == "-m":
        sys.argv = ["-m", *argv[2:]]  # the module's path replaces "-m", as in `python -m`
        sys.path[0] = os.getcwd()
        runpy._run_module_as_main(argv[1], alter_argv=True)  # what `python -m` itself calls
        return
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")


def _report(error: BaseException, is_module: bool) -> None:
    """sys.excepthook on the error as a real `python` reports it: from the script's own first frame,
    without this file's frames and, for a script, runpy's (a real `python -m` shows runpy's two)."""
    tb = error.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename == __file__
                              or (not is_module and tb.tb_frame.f_code.co_filename.startswith("<frozen runpy"))):
        tb = tb.tb_next
    sys.excepthook(type(error), error.with_traceback(tb), tb)  # the hook prints the error's own traceback


def exit_like_python(code: int, interrupted: bool) -> None:
    """End the child as the interpreter ends a script (non-daemon threads joined, atexit callbacks,
    the standard streams flushed: 120 if that fails; an unhandled Ctrl-C dies by SIGINT) but without
    tearing down the preloaded modules: with torch in, that takes 1.7 s a process, and a fork pays
    it again in copied pages. Teardown itself is tested by the real processes."""
    import atexit
    import signal
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError) as error:
            code = 120
            if stream is sys.stdout:  # said on stderr as the interpreter says it; a failing stderr is silent
                _say_ignored(stream, error)
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _say_ignored(stream, error: BaseException) -> None:
    import traceback

    try:
        sys.stderr.write(f"Exception ignored in: {stream!r}\n" + "".join(traceback.format_exception_only(error)))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def run_as_main(argv: list) -> None:
    """run_main, then exit_like_python with the exit code the interpreter would give."""
    code, interrupted = 0, False
    try:
        run_main(argv)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt as e:
        _report(e, argv[0] == "-m")
        interrupted = True
    except BaseException as e:
        _report(e, argv[0] == "-m")
        code = 1
    exit_like_python(code, interrupted)


if __name__ == "__main__":
    _preload()
    child_request, child_fds = serve(sys.argv[1])
    become(child_request, child_fds)
    del child_request, child_fds
    run_as_main(sys.argv)
