"""The prewarmed interpreter (tests/prewarmed.py) ends a script as a real `python` does: the suite's
script runs fork from it, so any difference would hide a bug of the real thing."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, prewarmed

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
def test_a_forked_script_ends_as_a_real_python_ends_it(name, tmp_path):
    script = tmp_path / "program.py"
    script.write_text(PROGRAMS[name])
    argv = [str(script), REPO, "ä"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = prewarmed.server(env)
    assert server is not None, "the suite's own environment must fork from the prewarmed interpreter"
    forked = server.run(argv, REPO, env, timeout=60)
    real = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)
    assert real.returncode == {"exit code": 3, "exit message": 1, "exception": 1, "ctrl-c": -2,
                               "a closed stdout": 1, "stdout unflushed at exit": 120}.get(name, 0)


@pytest.mark.parametrize("argv", [["-m", "common.compare", "/nonexistent"], ["-m", "common.plans", "--help"]])
def test_a_forked_module_ends_as_python_m_ends_it(argv):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    forked = prewarmed.server(env).run(argv, REPO, env, timeout=60)
    real = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)
    assert real.stdout + real.stderr


def test_an_environment_of_its_own_gets_a_real_python():
    assert prewarmed.server(dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="pdf")) is None
    assert prewarmed.server(dict(os.environ, PYTHONUNBUFFERED="1", PREWARMED="0")) is None
