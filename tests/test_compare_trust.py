"""A comparison that says when not to trust it: rows still improving are marked and their tables
say more epochs may change the answer; the seeds a Welch test needs (checked by simulation); the
raw p beside Holm's; one meaning for ±; tables apart for one reason say which and how to match."""
import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from common.compare import stats
from common.compare.cli import main as compare_main
from common.compare.rows import still_improving
from tests.test_factorial import fabricate


@pytest.mark.parametrize("sd_a, sd_b, effect, alpha", [(0.004, 0.004, 0.005, 0.05), (0.010, 0.015, 0.010, 0.005)])
def test_the_seeds_needed_are_the_fewest_with_80_percent_power_in_a_simulation(sd_a, sd_b, effect, alpha):
    n = stats.seeds_needed(sd_a, sd_b, effect, alpha)
    rng = np.random.default_rng(7)

    def simulated_power(k):
        a = rng.normal(0, sd_a, (20000, k))
        b = rng.normal(effect, sd_b, (20000, k))
        return (scipy_stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < alpha).mean()
    assert simulated_power(n) >= 0.80 - 0.01  # 20,000 repetitions: a standard error of 0.003
    assert simulated_power(n) == pytest.approx(stats.welch_power(sd_a, sd_b, n, effect, alpha), abs=0.01)
    assert simulated_power(n - 1) < 0.80 + 0.01  # one seed fewer is not enough
    assert stats.welch_power(sd_a, sd_b, n - 1, effect, alpha) < 0.80 <= stats.welch_power(sd_a, sd_b, n, effect, alpha)
    assert stats.seeds_needed(sd_a, sd_b, 0.0, alpha) is None


def test_the_still_improving_rule():
    assert still_improving([0.30, 0.40, 0.45])  # best in the last epoch
    assert still_improving([0.50, 0.60, 0.62, 0.63, 0.64, 0.65, 0.66, 0.658])  # the last third still rises
    assert not still_improving([0.50, 0.60, 0.62, 0.61, 0.615, 0.612, 0.618, 0.611])  # settled: noise on a plateau
    assert not still_improving([0.50, 0.66, 0.64, 0.62, 0.60, 0.58])  # overfitting after an early best


def with_curve(run_dir, curve):
    """The fabricated run trained len(curve) epochs with these validation accuracies."""
    train = json.load(open(run_dir / "train.json"))
    epoch = train["epochs"][0]
    train["epochs"] = [{**epoch, "epoch": i + 1, "val_accuracy": v} for i, v in enumerate(curve)]
    best = max(range(len(curve)), key=lambda i: (curve[i], -i))
    train.update(epochs_planned=len(curve), epochs_done=len(curve), best_epoch=best + 1, best_val_accuracy=curve[best])
    (run_dir / "train.json").write_text(json.dumps(train))
    config = json.load(open(run_dir / "config.json"))
    config["config"]["epochs"] = len(curve)
    (run_dir / "config.json").write_text(json.dumps(config))


RISING = [0.40, 0.45, 0.50, 0.53, 0.55, 0.57, 0.58, 0.59, 0.60]
SETTLED = [0.40, 0.55, 0.60, 0.59, 0.595, 0.592, 0.598, 0.591, 0.594]


def _two_rows(root, source, curve, threads=None):
    for seed in (0, 1, 2):
        for lr, test in ((0.001, 0.60), (0.003, 0.62)):
            run = fabricate(source, root / f"lr{lr}-seed{seed}", {"lr": lr}, seed=seed, test=test + 0.004 * seed,
                            threads=threads)
            with_curve(run, [v + 0.001 * seed for v in curve])


@pytest.mark.parametrize("curve", ["rising", "settled"])
def test_a_comparison_of_runs_still_improving_is_marked_and_a_settled_one_is_not(smoke_run, tmp_path, capsys, curve):
    _two_rows(tmp_path / "runs", smoke_run, RISING if curve == "rising" else SETTLED)
    compare_main([str(tmp_path / "runs"), "--no-figures", "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ex_1 |")]
    assert len(rows) == 2
    marked = [line.split("|")[14].strip().endswith("↑") for line in rows]  # the best-epoch cell
    summaries = json.load(open(tmp_path / "t.json"))["rows"]
    if curve == "rising":
        assert marked == [True, True] and "More epochs may change this table's answer" in out
        assert [s["still_improving"] for s in summaries] == [{"runs": 3, "of": 3, "marked": True}] * 2
    else:
        assert marked == [False, False] and "More epochs" not in out and "↑" not in out
    assert "(raw " in rows[1] and "± is the 95% CI half-width over seeds" in out


def test_seeds_per_arm_for_a_named_effect_and_for_the_observed_one(smoke_run, tmp_path, capsys):
    _two_rows(tmp_path / "runs", smoke_run, SETTLED)
    compare_main([str(tmp_path / "runs"), "--no-figures", "--json", str(tmp_path / "observed.json")])
    compare_main([str(tmp_path / "runs"), "--no-figures", "--effect", "0.01", "--json", str(tmp_path / "named.json")])
    out = capsys.readouterr().out
    for name, effect in (("observed", 0.02), ("named", 0.01)):
        (row,) = [r for r in json.load(open(tmp_path / f"{name}.json"))["rows"] if r["vs_baseline"]]
        needed = row["vs_baseline"]["test_accuracy"]["seeds_needed"]
        sd = np.std([0.60, 0.604, 0.608], ddof=1)  # both rows' spread over their three seeds
        # one comparison with the baseline: a family of one per metric, so Holm's strictest step is 0.05
        assert needed["effect"] == pytest.approx(effect) and needed["alpha"] == pytest.approx(0.05)
        assert needed["family"] == 1 and needed["n"] == stats.seeds_needed(sd, sd, effect, 0.05)
        assert f"| {needed['n']} (Δ {effect:+.4f}) |" in out
    assert "find the Δ test shown (--effect)" in out and "(the observed difference)" in out


def test_tables_apart_for_their_thread_count_say_so_and_how_to_match_them(smoke_run, tmp_path, capsys):
    _two_rows(tmp_path / "runs" / "one", smoke_run, SETTLED, threads=1)
    _two_rows(tmp_path / "runs" / "two", smoke_run, SETTLED, threads=2)
    compare_main([str(tmp_path / "runs"), "--no-figures"])
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "differ only in threads" in x]
    assert "1 thread x 1 process" in line and "2 threads x 1 process" in line and "OMP_NUM_THREADS" in line
