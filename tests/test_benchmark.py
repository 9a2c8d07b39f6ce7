"""The benchmark runs end to end and writes its ratios (no timing is asserted here)."""
import json

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
