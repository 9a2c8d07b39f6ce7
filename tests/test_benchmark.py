"""The benchmark runs end to end and writes its ratios (no timing is asserted here)."""
import json
import os

import pytest

from tests.conftest import run_python


def test_throughput_benchmark_writes_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = run_python(["-m", "benchmarks.throughput", "--experiments", "ex_1", "--steps", "1", "--rounds", "1",
                         "--seconds", "0", "--workers", "0", "--out", str(out)], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.load(open(out))["results"]
    for key in ("floor", "ours", "report_style", "eval_ours", "eval_floor", "floor_other_layout", "floor_small_pages",
                "eval_floor_small_pages"):
        assert row[key] > 0, key
    assert row["ours_vs_floor"] == row["ours"] / row["floor"]
    assert row["ours_vs_report_style"] == row["ours"] / row["report_style"]
    assert "| ex_1 | 32 |" in result.stdout


_NO_NATIVE_BF16 = ("import runpy, sys, torch\n"
                   "torch.cpu._is_avx512_bf16_supported = lambda: False\n"
                   "torch.cpu._is_amx_tile_supported = lambda: False\n"
                   "sys.argv = ['bf16_check'] + sys.argv[1:]\n"
                   "runpy.run_module('benchmarks.bf16_check', run_name='__main__')\n")


def test_the_bf16_check_refuses_a_cpu_without_native_bf16_in_one_line(tmp_path):
    result = run_python(["-c", _NO_NATIVE_BF16, "--out", str(tmp_path)], timeout=120)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0
    assert "no native bf16" in result.stderr and "--force" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing started


def test_the_bf16_check_runs_its_plans_and_reports_compare_s_paired_difference(tmp_path, smoke_data):
    """The whole path on synthetic data: the speed benchmark, both plans (bf16 by name where the CPU has
    no native bf16), and the bf16 - fp32 difference over the shared seeds, as the run folders give it."""
    check = tmp_path / "check.json"
    result = run_python(["-m", "benchmarks.bf16_check", "--smoke", "--force", "--experiments", "ex_1", "--data-dir",
                         smoke_data, "--out", str(tmp_path / "out"), "--json", str(check)], timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (found,) = json.load(open(check))["results"]
    assert set(found["speed"]) == {"ex_1"} and found["speed"]["ex_1"]["target"] == 1.8
    (precision_file,) = tmp_path.glob("precision-*.json")  # benchmarks.precision's own file, beside the check's
    assert json.load(open(precision_file))["results"][0]["case"] == "ex_1"
    (contrast,) = found["accuracy"]["ex_1"]
    assert [s.split(",")[0] for s in contrast["sides"]] == ["bfloat16", "float32"] and contrast["paired_seeds"] == [0, 1]
    accuracy = {}
    for side, runs in zip(("bf16", "fp32"), contrast["runs"]):
        for run in runs:
            config = json.load(open(os.path.join(run, "config.json")))
            assert config["environment"]["precision"] == {"bf16": "bfloat16", "fp32": "float32"}[side]
            accuracy[side, config["config"]["seed"]] = json.load(open(os.path.join(run, "test.json")))["accuracy"]
    expected = sum(accuracy["bf16", s] - accuracy["fp32", s] for s in (0, 1)) / 2
    assert contrast["test_accuracy"]["difference"] == pytest.approx(expected)
    assert "accuracy ex_1: test acc bfloat16, nchw − float32, nchw" in result.stdout
    again = run_python(["-m", "benchmarks.bf16_check", "--smoke", "--force", "--experiments", "ex_1", "--skip-speed",
                        "--data-dir", smoke_data, "--out", str(tmp_path / "out"), "--json", str(check)], timeout=300)
    assert again.returncode == 0 and "2 of 2 complete" in again.stdout  # the same command finds its plans done
