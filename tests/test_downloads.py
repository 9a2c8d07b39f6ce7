"""Downloads: a mirror that is silent, slow, endless, huge, redirects forever or is no HTTP
server stops in one line within its time-out and leaves nothing; a file:// mirror and a broken
Content-Length still work; archives are checked and unpacked safely. Servers on 127.0.0.1 only."""
import hashlib
import os
import socket
import time

import pytest

from tests.conftest import (
    _archive_of,
    _bad_chunks,
    _endless,
    _huge,
    _not_http,
    _one_error_line,
    _redirect_loop,
    _trickle,
    closed_port,
    raw_server,
    run_script,
)


def test_the_default_download_time_out_is_well_inside_two_minutes(monkeypatch):
    from common import download

    monkeypatch.delenv(download.TIMEOUT_ENV, raising=False)
    assert download.timeout_s() == download.DOWNLOAD_TIMEOUT_S == 30  # per connect and per read
    monkeypatch.setenv(download.TIMEOUT_ENV, "2.5")
    assert download.timeout_s() == 2.5


@pytest.mark.parametrize("timeout_env", ["3"])
def test_a_silent_mirror_stops_the_run_with_one_line_within_two_minutes(tmp_path, timeout_env):
    """CIFAR_DOWNLOAD_TIMEOUT=3 keeps the test short; the default (30 s) is checked above."""
    env = {"CIFAR_DOWNLOAD_TIMEOUT": timeout_env}
    with socket.socket() as server:  # accepts connections (the kernel's backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        mirror = f"http://127.0.0.1:{server.getsockname()[1]}/"
        start = time.perf_counter()
        result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"),
                            "--out", str(tmp_path / "o"), env={"CIFAR_MIRROR": mirror, **env}, timeout=150)
        elapsed = time.perf_counter() - start
    # the message shows the 3 s time-out applied; the bound, that nothing hung (torch's import alone
    # takes 4-25 s on a busy 2-core machine)
    assert result.returncode == 1 and elapsed < 60
    _one_error_line(result, mirror + "cifar-10-python.tar.gz", "timed out", f"no answer within {timeout_env} s")
    assert os.listdir(tmp_path / "d") == []  # no partial archive


def test_a_file_url_mirror_is_downloaded_checked_and_unpacked(local_archive, tmp_path, monkeypatch):
    from common.data import load_cifar

    mirror, spec = local_archive()
    monkeypatch.setenv("CIFAR_MIRROR", mirror.as_uri())
    data = load_cifar(spec, str(tmp_path / "d"))
    assert len(data.train_y) == 600 and len(data.classes) == 10
    assert sorted(os.listdir(tmp_path / "d")) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_an_archive_member_outside_the_data_folder_is_refused(local_archive, tmp_path, monkeypatch):
    from common.data import load_cifar
    from common.errors import UserError

    mirror, spec = local_archive(extra={"../escaped.txt": b"outside"})  # md5 matches: only the filter stops it
    monkeypatch.setenv("CIFAR_MIRROR", str(mirror))
    with pytest.raises(UserError, match="refused"):
        load_cifar(spec, str(tmp_path / "d"))
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(os.listdir(tmp_path / "d")) == ["cifar-10-python.tar.gz"]  # no partial dataset folder


@pytest.mark.parametrize("respond,timeout,message", [
    (_trickle, "2", "bytes/s over"),
    (_endless, "30", "more than the 170,498,071 bytes expected"),
    (_huge, "30", "announces 1,000,000,000,000 bytes"),
    (_not_http, "30", "not valid HTTP"),
    (_bad_chunks, "30", "not valid HTTP"),
    (_redirect_loop, "30", "redirect"),
])
def test_a_misbehaving_mirror_stops_the_download_in_one_line_and_leaves_nothing(tmp_path, respond, timeout, message):
    with raw_server(respond) as url:
        start = time.perf_counter()
        result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"),
                            "--out", str(tmp_path / "o"), env={"CIFAR_MIRROR": url, "CIFAR_DOWNLOAD_TIMEOUT": timeout},
                            timeout=180)
        elapsed = time.perf_counter() - start
    assert result.returncode == 1 and elapsed < 60
    _one_error_line(result, url + "cifar-10-python.tar.gz", message)
    assert os.listdir(tmp_path / "d") == []  # no partial archive


def test_a_mirror_with_a_broken_content_length_still_works(tmp_path, smoke_data, monkeypatch):
    import dataclasses

    from common import data

    blob = _archive_of(os.path.join(smoke_data, "synthetic", "small"), "cifar-10-batches-py")
    monkeypatch.setitem(data.SPECS, "cifar10", dataclasses.replace(data.SPECS["cifar10"],
                                                                    md5=hashlib.md5(blob).hexdigest()))

    def respond(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\nConnection: close\r\n\r\n" + blob)

    with raw_server(respond) as url:
        monkeypatch.setenv("CIFAR_MIRROR", url)
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / ".cifar-10-python.tar.gz.x1y2.tmp").write_bytes(b"left by a SIGKILL")
        loaded = data.load_cifar(data.SPECS["cifar10"], str(tmp_path / "d"))
    assert len(loaded.train_y) == 600
    assert sorted(os.listdir(tmp_path / "d")) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # temp cleaned


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "soon"])
def test_a_download_time_out_that_is_not_a_finite_number_of_seconds_is_one_line(tmp_path, value):

    result = run_script("ex_1.py", "--dataset", "cifar10", "--data-dir", str(tmp_path / "d"), "--out",
                        str(tmp_path / "o"), env={"CIFAR_MIRROR": f"http://127.0.0.1:{closed_port()}/",
                                                  "CIFAR_DOWNLOAD_TIMEOUT": value}, timeout=60)
    assert result.returncode == 1
    _one_error_line(result, "CIFAR_DOWNLOAD_TIMEOUT")
