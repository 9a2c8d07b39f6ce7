"""A comparison that says when not to trust it: rows still improving are marked and their tables
say more epochs may change the answer; the seeds a Welch or paired test needs (checked by simulation);
runs of one seed that share draws compared as pairs, never as independent; the raw p beside Holm's;
one meaning for ±; tables apart for one reason say which, how to match them and what it changed."""
import json
import shutil

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


@pytest.mark.parametrize("sd, effect, alpha", [(0.004, 0.005, 0.05), (0.010, 0.004, 0.005)])
def test_the_pairs_needed_are_the_fewest_with_80_percent_power_in_a_simulation(sd, effect, alpha):
    n = stats.pairs_needed(sd, effect, alpha)
    rng = np.random.default_rng(11)

    def simulated_power(k):
        differences = rng.normal(effect, sd, (20000, k))
        return (scipy_stats.ttest_1samp(differences, 0.0, axis=1).pvalue < alpha).mean()
    assert simulated_power(n) >= 0.80 - 0.01
    assert simulated_power(n) == pytest.approx(stats.paired_power(sd, n, effect, alpha), abs=0.01)
    assert simulated_power(n - 1) < 0.80 + 0.01
    assert stats.paired_power(sd, n - 1, effect, alpha) < 0.80 <= stats.paired_power(sd, n, effect, alpha)
    assert stats.pairs_needed(sd, 0.0, alpha) is None and stats.pairs_needed(0.0, effect, alpha) is None


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
    """Two recipes, three seeds each, whose runs share no random draw (independent samples: Welch)."""
    for seed in (0, 1, 2):
        for lr, test in ((0.001, 0.60), (0.003, 0.62)):
            run = fabricate(source, root / f"lr{lr}-seed{seed}", {"lr": lr}, seed=seed, test=test + 0.004 * seed,
                            threads=threads, own_draws=True)
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


# a seed's effect shared by both recipes (its initial weights and data order) plus each run's own noise
SEED_EFFECT, OWN_NOISE = (0.03, -0.02, 0.0, 0.05, -0.01), (0.002, -0.001, 0.003, 0.0, -0.002)


def _paired_rows(root, source, own_draws=False):
    """lr 0.001 and 0.003 over seeds 0-4: per seed 0.60 + the seed's effect, the other recipe 0.01 higher
    plus a little noise of its own. Returns both rows' test accuracies."""
    a = [0.60 + e for e in SEED_EFFECT]
    b = [x + 0.01 + n for x, n in zip(a, OWN_NOISE)]
    for seed, (x, y) in enumerate(zip(a, b)):
        fabricate(source, root / f"a{seed}", {"lr": 0.001}, seed=seed, test=x, val=x, own_draws=own_draws)
        fabricate(source, root / f"b{seed}", {"lr": 0.003}, seed=seed, test=y, val=y, own_draws=own_draws)
    return a, b


def test_runs_of_one_seed_that_share_draws_are_compared_as_pairs(smoke_run, tmp_path, capsys):
    """Each seed's two runs start from the same weights and data order: the test is on the seeds'
    differences (4 df), which the seeds' shared effect does not widen; Welch, counting them as
    independent, would see that effect as noise."""
    a, b = _paired_rows(tmp_path / "runs", smoke_run)
    compare_main([str(tmp_path / "runs"), "--no-figures", "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    (row,) = [r for r in json.load(open(tmp_path / "t.json"))["rows"] if r["vs_baseline"]]
    test = row["vs_baseline"]["test_accuracy"]
    expected = scipy_stats.ttest_rel(b, a)
    low, high = expected.confidence_interval()
    assert row["vs_baseline"]["paired_seeds"] == [0, 1, 2, 3, 4] and test["test"] == "paired t"
    assert test["difference"] == pytest.approx(0.01 + np.mean(OWN_NOISE))
    assert test["p"] == pytest.approx(expected.pvalue) and test["ci95"] == pytest.approx([low, high])
    assert test["p"] < 0.01 < scipy_stats.ttest_ind(b, a, equal_var=False).pvalue  # the shared effect is not noise
    differences = np.subtract(b, a)
    assert test["seeds_needed"]["n"] == stats.pairs_needed(np.std(differences, ddof=1), test["difference"], 0.05)
    assert test["detectable_80"] == pytest.approx(stats.detectable_paired(list(differences)))
    assert "p: paired t over the seeds a row shares with its baseline" in out and "Welch" not in out


def test_runs_that_share_no_draw_are_compared_by_welch(smoke_run, tmp_path, capsys):
    a, b = _paired_rows(tmp_path / "runs", smoke_run, own_draws=True)
    compare_main([str(tmp_path / "runs"), "--no-figures", "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    (row,) = [r for r in json.load(open(tmp_path / "t.json"))["rows"] if r["vs_baseline"]]
    test = row["vs_baseline"]["test_accuracy"]
    assert row["vs_baseline"]["paired_seeds"] is None and test["test"] == "Welch's t"
    assert test["p"] == pytest.approx(scipy_stats.ttest_ind(b, a, equal_var=False).pvalue)
    assert "p: Welch's t over seeds (no run shares a random draw" in out and "paired t" not in out


def test_rows_apart_for_their_precision_only_say_what_it_changed(smoke_run, tmp_path, capsys):
    """bf16 and fp32 rows of one recipe: two tables, never averaged, and below them the bf16 - fp32
    difference over the seeds they share, paired (the same seeds' weights and data order)."""
    a = [0.60 + e for e in SEED_EFFECT]
    b = [x - 0.004 + n for x, n in zip(a, OWN_NOISE)]
    for seed, (x, y) in enumerate(zip(a, b)):
        fabricate(smoke_run, tmp_path / "runs" / f"fp32-{seed}", {"precision": "fp32"}, seed=seed, test=x, val=x,
                  precision="float32")
        fabricate(smoke_run, tmp_path / "runs" / f"bf16-{seed}", {"precision": "auto"}, seed=seed, test=y, val=y,
                  precision="bfloat16")
    compare_main([str(tmp_path / "runs"), "--no-figures", "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    (contrast,) = json.load(open(tmp_path / "t.json"))["contrasts"]
    expected = scipy_stats.ttest_rel(b, a)
    assert contrast["part"] == "precision" and [s.split(",")[0] for s in contrast["sides"]] == ["bfloat16", "float32"]
    assert contrast["paired_seeds"] == [0, 1, 2, 3, 4] and contrast["n"] == [5, 5]
    test = contrast["test_accuracy"]
    assert test["difference"] == pytest.approx(-0.004 + np.mean(OWN_NOISE))
    assert test["p"] == pytest.approx(expected.pvalue) and test["ci95"] == pytest.approx(list(expected.confidence_interval()))
    (line,) = [x for x in out.splitlines() if "Δ test acc bfloat16" in x]
    low, high = test["ci95"]
    assert f"{test['difference']:+.4f} [{low:+.4f}, {high:+.4f}]" in line and "paired t over seeds 0,1,2,3,4" in line
    assert "unadjusted" in line and out.index("differ only in precision") < out.index(line)


def test_a_row_with_seeds_its_baseline_lacks_is_paired_over_the_shared_seeds_and_says_so(smoke_run, tmp_path, capsys):
    a, b = _paired_rows(tmp_path / "runs", smoke_run)
    for seed in (3, 4):  # the lr 0.003 row keeps seeds 0, 1, 2 only
        shutil.rmtree(tmp_path / "runs" / f"b{seed}")
    compare_main([str(tmp_path / "runs"), "--no-figures", "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    (row,) = [r for r in json.load(open(tmp_path / "t.json"))["rows"] if r["vs_baseline"]]
    assert row["n"] == 3 and row["vs_baseline"]["paired_seeds"] == [0, 1, 2]
    assert row["vs_baseline"]["test_accuracy"]["difference"] == pytest.approx(np.mean(np.subtract(b, a)[:3]))
    assert row["vs_baseline"]["test_accuracy"]["p"] == pytest.approx(scipy_stats.ttest_rel(b[:3], a[:3]).pvalue)
    assert "Paired over the seeds both rows ran only" in out and "lr 0.003: seeds 0,1,2" in out
