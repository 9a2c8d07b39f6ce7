"""The prewarmed interpreter (tests/prewarmed.py) ends a script as a real `python` does: the suite's
script runs fork from it, so any difference would hide a bug of the real thing."""
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, prewarmed

# the suite's environment, but forked from a server of this module's own even under PREWARMED=0
ENV = dict({k: v for k, v in os.environ.items() if k != "PREWARMED"}, PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def forked():
    server = prewarmed.Server(ENV)
    yield server
    server.close()

PROGRAMS = {
    "prints and returns": "import sys\nprint('out', sys.argv[1:], __name__)\nprint('err', file=sys.stderr)\n",
    "exit code": "import sys\nsys.exit(3)\n",
    "exit message": "raise SystemExit('a one-line error')\n",
    "exception": "def f():\n    raise ValueError('bad')\nf()\n",
    "ctrl-c": "raise KeyboardInterrupt\n",
    "atexit and a thread": ("import atexit, threading, time\natexit.register(print, 'atexit ran')\n"
                            "threading.Thread(target=lambda: (time.sleep(0.2), print('thread joined'))).start()\n"),
    "where it runs": ("import os, sys\nprint(os.getcwd() == sys.argv[1], sys.path[0] == os.path.dirname(__file__),"
                      " os.environ['PYTHONUNBUFFERED'], 'common' in sys.modules)\n"),
    "a closed stdout": "import os, sys\nos.close(1)\nprint('lost')\n",
    "stdout unflushed at exit": ("import os, sys\nr, w = os.pipe()\nsys.stdout = os.fdopen(w, 'w', buffering=4096)\n"
                                 "os.close(r)\nprint('lost')\n"),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_a_forked_script_ends_as_a_real_python_ends_it(forked, name, tmp_path):
    script = tmp_path / "program.py"
    script.write_text(PROGRAMS[name])
    argv = [str(script), REPO, "ä"]
    fork = forked.run(argv, REPO, ENV, timeout=60)
    real = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, env=ENV)
    assert (fork.returncode, fork.stdout, fork.stderr) == (real.returncode, real.stdout, real.stderr)
    assert real.returncode == {"exit code": 3, "exit message": 1, "exception": 1, "ctrl-c": -2,
                               "a closed stdout": 1, "stdout unflushed at exit": 120}.get(name, 0)


@pytest.mark.parametrize("argv", [["-m", "common.compare", "/nonexistent"], ["-m", "common.plans", "--help"],
                                  ["-c", "import sys; print(sys.argv, repr(sys.path[0]), __name__); 1 / 0", "x"]])
def test_a_forked_module_or_program_ends_as_python_m_or_c_ends_it(forked, argv):
    fork = forked.run(argv, REPO, ENV, timeout=60)
    real = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, env=ENV)
    assert (fork.returncode, fork.stdout, fork.stderr) == (real.returncode, real.stdout, real.stderr)
    assert real.stdout + real.stderr


def test_an_environment_of_its_own_gets_a_real_python_but_the_repos_own_settings_fork(monkeypatch):
    monkeypatch.delenv("PREWARMED", raising=False)
    assert prewarmed.server(dict(os.environ, PYTHONUNBUFFERED="1", CIFAR_MIRROR="http://127.0.0.1:9/")) is not None
    assert prewarmed.server(dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="pdf")) is None
    assert prewarmed.server(dict(os.environ, PYTHONUNBUFFERED="1", PREWARMED="0")) is None


WAITS_FOR_A_SIGNAL = ("import signal, sys, time\n"
                      "signal.signal(signal.SIGTERM, lambda *_: (print('stopping', file=sys.stderr), sys.exit(7)))\n"
                      "print('ready', flush=True)\n"
                      "time.sleep(60)\n")


@pytest.mark.parametrize("stderr", [subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL])
def test_a_forked_process_is_signalled_and_read_as_a_real_popen_is(forked, stderr, tmp_path):
    script = tmp_path / "program.py"
    script.write_text(WAITS_FOR_A_SIGNAL)
    seen = []
    for start in (lambda: forked.popen([str(script)], REPO, ENV, subprocess.PIPE, stderr),
                  lambda: subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                                           stderr=stderr, text=True, env=ENV)):
        proc = start()
        assert proc.stdout.readline() == "ready\n" and proc.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)
        proc.send_signal(signal.SIGTERM)
        seen.append((*proc.communicate(timeout=30), proc.returncode))
    assert seen[0] == seen[1]
    assert seen[1][2] == 7


def test_a_variable_a_test_set_gets_a_server_of_its_own(monkeypatch):
    """Whichever test first asks decides nothing: the server for the suite's own environment is not one
    started while a test had a variable of its own set."""
    monkeypatch.delenv("PREWARMED", raising=False)
    plain = prewarmed.server(dict(os.environ, PYTHONUNBUFFERED="1"))
    monkeypatch.setenv("TORCH_HOME", "/nonexistent")
    patched = prewarmed.server(dict(os.environ, PYTHONUNBUFFERED="1"))
    assert plain is not None and patched is not None and patched is not plain
    assert patched.env["TORCH_HOME"] == "/nonexistent" != plain.env.get("TORCH_HOME")
