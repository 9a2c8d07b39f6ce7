"""--precision on a CPU: auto is bf16 only where the CPU has native bf16 (torch's check) and the
model's entry says it pays, fp32 otherwise with the reason in the header; what ran (precision and
layout) is in config.json and compare's row context, and --resume keeps it whatever the machine it
resumes on would choose. Torch's check is patched to play either kind of CPU on any machine."""
import json
import os
import signal

import pytest

from tests.conftest import REPO, _quick, only_run, popen_python, run_metrics, run_python

_PATCHED = ("import runpy, sys, torch\n"
            "torch.cpu._is_avx512_bf16_supported = lambda: {native}\n"
            "torch.cpu._is_amx_tile_supported = lambda: {native}\n"
            "sys.argv = [{script!r}] + sys.argv[1:]\n"
            "runpy.run_path({script!r}, run_name='__main__')\n")


def _run(native: bool, *args, script="ex_1.py", popen=False):
    """The script on a CPU that has (native=True) or lacks native bf16, as torch's own check reports."""
    path = os.path.join(REPO, script)
    argv = ["-c", _PATCHED.format(native=native, script=path), *args]
    return popen_python(argv) if popen else run_python(argv, timeout=300)


def _environment(run_dir):
    return json.load(open(os.path.join(run_dir, "config.json")))["environment"]


@pytest.mark.parametrize("native,script,expected,reason", [
    (False, "ex_1.py", ("float32", "nchw"), "auto: this CPU has no native bf16"),
    (True, "ex_1.py", ("bfloat16", "nchw"), "auto: native bf16 on this CPU"),
    (True, "ex_2.py", ("bfloat16", "channels_last"), "auto: native bf16 on this CPU"),
    (True, "ex_3.py", ("float32", "channels_last"), "auto: bf16 is off for this model on a CPU, see docs/performance.md"),
])
def test_auto_picks_bf16_only_with_native_support_and_a_model_it_pays_for(smoke_data, tmp_path, native, script,
                                                                         expected, reason):
    extra = {"ex_1.py": [], "ex_2.py": ["--image-size", "32"], "ex_3.py": ["--no-pretrained"]}[script]
    proc = _run(native, *_quick(smoke_data, tmp_path, "--epochs", "1", *extra), script=script, popen=True)
    header = []
    for line in proc.stdout:  # the choice is made and recorded before the first epoch: stop there
        header.append(line)
        if "run folder:" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert f"{expected[0].replace('float32', 'fp32').replace('bfloat16', 'bf16')}, {expected[1]} ({reason})" \
        in "".join(header), header
    environment = _environment(only_run(str(tmp_path)))
    assert (environment["precision"], environment["layout"]) == expected
    assert environment["native_cpu_bf16"] is native


def test_fp32_forces_fp32_on_a_cpu_with_native_bf16(smoke_data, tmp_path):
    result = _run(True, *_quick(smoke_data, tmp_path, "--epochs", "1", "--precision", "fp32"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert _environment(only_run(str(tmp_path)))["precision"] == "float32"
    assert "fp32, nchw (asked for)" in result.stdout


def test_bf16_without_native_support_warns_once_and_runs(smoke_data, tmp_path):
    result = _run(False, *_quick(smoke_data, tmp_path, "--epochs", "1", "--precision", "bf16", "--seeds", "0,1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("bf16 on this CPU is emulated") == 1  # two members, one warning
    assert "emulated: this CPU has no native bf16, slow" in result.stdout


def test_fp16_on_a_cpu_is_one_line(smoke_data, tmp_path):
    result = _run(False, *_quick(smoke_data, tmp_path, "--epochs", "1", "--precision", "fp16"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--precision fp16 is for CUDA GPUs" in result.stderr


def test_a_bf16_run_killed_and_resumed_elsewhere_keeps_bf16_and_ends_like_an_uninterrupted_one(smoke_data, tmp_path):
    """Started where auto picks bf16; killed after epoch 1 of 2; resumed on a CPU whose auto would pick
    fp32: it goes on in bf16, says so, and ends with the uninterrupted bf16 run's metrics."""
    args = ["--epochs", "2", "--batch-size", "16"]
    straight = _run(True, *_quick(smoke_data, tmp_path / "straight", *args))
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = _run(True, *_quick(smoke_data, tmp_path / "killed", *args), popen=True)
    for line in proc.stdout:
        if "epoch   1/2" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_dir = only_run(str(tmp_path / "killed"))
    resumed = _run(False, "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "bf16, nchw (kept from the run's start; emulated here" in resumed.stdout
    assert _environment(run_dir)["precision"] == "bfloat16"
    assert run_metrics(run_dir) == run_metrics(only_run(str(tmp_path / "straight")))


def test_compare_keeps_bf16_and_fp32_runs_in_rows_of_their_own(smoke_data, tmp_path):
    for native in (False, True):
        result = _run(native, *_quick(smoke_data, tmp_path / "ex_1", "--epochs", "1"))
        assert result.returncode == 0, result.stderr[-2000:]
    compared = run_python(["-m", "common.compare", str(tmp_path), "--no-figures"], timeout=300)
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert "· float32, nchw" in compared.stdout and "· bfloat16, nchw" in compared.stdout
    # the validation-curve figure's legend tells the two lines apart by their numerics
    from common.compare.figures import val_curve_series
    from common.compare.rows import build_rows
    from common.compare.runs import collect

    (lines,) = val_curve_series(build_rows(collect([str(tmp_path)]))).values()
    labels = sorted(label for label, _ in lines)
    assert len(labels) == 2 and "bfloat16, nchw (n=1)" in labels[0] and "float32, nchw (n=1)" in labels[1], labels
