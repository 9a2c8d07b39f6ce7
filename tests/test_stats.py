"""The ablation table's statistics against scipy and by hand, and compare's JSON."""
import json
import os
import shutil

import numpy as np
import pytest
from scipy import stats as scipy_stats

from common.compare import stats
from common.compare.cli import main as compare_main


def test_mean_ci_is_students_t_interval():
    values = [0.7137, 0.7077, 0.6911]
    interval = stats.mean_ci(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)
    assert interval.mean == pytest.approx(np.mean(values))
    assert stats.mean_ci([0.5]).low is None  # one seed: no interval


def test_welch_difference_and_p_value_equal_scipys():
    a, b = [0.71, 0.70, 0.72, 0.705], [0.69, 0.68, 0.70]
    d = stats.welch(a, b)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert d.p_value == pytest.approx(reference.pvalue, abs=1e-12)
    ci = reference.confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert d.estimate == pytest.approx(np.mean(a) - np.mean(b)) and d.test == "Welch's t"
    assert stats.difference(a, b).p_value == d.p_value  # two or more seeds a side: Welch


def test_exact_mcnemar_on_a_constructed_pair_of_prediction_sets():
    # 100 shared test images: both right on 60, both wrong on 30, only A right on 9, only B right on 1
    a = [True] * 60 + [False] * 30 + [True] * 9 + [False] * 1
    b = [True] * 60 + [False] * 30 + [False] * 9 + [True] * 1
    d = stats.mcnemar(a, b)
    assert d.p_value == pytest.approx(2 * (1 + 10) / 2**10)  # 2 P(X <= 1), X ~ Binomial(10, 1/2): 0.021484375
    assert d.p_value == pytest.approx(scipy_stats.binomtest(9, 10, 0.5).pvalue)
    assert d.estimate == pytest.approx(0.08) and d.test == "exact McNemar"
    one_a_side = stats.difference([0.69], [0.61])  # two recipes, one seed each: no test of the recipes
    assert one_a_side.p_value is None and one_a_side.low is None and one_a_side.test == stats.ONE_SEED
    assert stats.mcnemar([True, False], [True, False]).p_value == 1.0  # no discordant image


def _copy(run, dest, seed=None, lr=None):
    shutil.copytree(run, dest)
    config = json.load(open(dest / "config.json"))
    if seed is not None:
        config["seed"] = config["config"]["seed"] = seed
    if lr is not None:
        config["config"]["lr"] = lr
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_compare_json_holds_numbers_each_rows_folders_and_the_baseline_test(tmp_path, ex1_smoke_runs):
    """Two recipes (lr 0.001 and 0.002) with three seeds each, and one seed each on CIFAR-100."""
    out, _ = ex1_smoke_runs
    (c10,) = (out / "cifar_10").iterdir()
    (c100,) = (out / "cifar_100").iterdir()
    root = tmp_path / "runs"
    for i, seed in enumerate((0, 1, 2)):  # copies that differ by seed only (same numbers: no spread)
        _copy(c10, root / "cifar_10" / f"a{i}", seed=seed)
        _copy(c10, root / "cifar_10" / f"b{i}", seed=seed, lr=0.002)
    _copy(c100, root / "cifar_100" / "a")
    _copy(c100, root / "cifar_100" / "b", lr=0.002)
    table = tmp_path / "table.json"
    compare_main([str(root), "--json", str(table), "--baseline", "lr=0.001", "--figure", str(tmp_path / "f.png")])
    rows = json.load(open(table))["rows"]
    assert len(rows) == 4
    for row in rows:
        assert isinstance(row["n"], int) and all(os.path.isdir(d) for d in row["runs"]) and len(row["runs"]) == row["n"]
        for metric in ("val_accuracy", "test_accuracy", "f1", "auc"):
            assert isinstance(row[metric]["mean"], float), metric
    three = [r for r in rows if r["dataset"] == "CIFAR-10" and r["changed_fields"].get("lr") == 0.002][0]
    # copies of one run (their draws too): each seed's pair differs by the same 0, so no test and no zero-width
    # interval that would claim certainty
    assert three["vs_baseline"]["paired_seeds"] == [0, 1, 2]
    assert three["vs_baseline"]["test_accuracy"]["test"].startswith("none: every seed's two runs differ by the same")
    assert three["vs_baseline"]["test_accuracy"]["difference"] == 0.0
    assert three["vs_baseline"]["test_accuracy"]["p"] is None and three["test_accuracy"]["ci95"] == [None, None]
    one = [r for r in rows if r["dataset"] == "CIFAR-100" and r["changed_fields"].get("lr") == 0.002][0]
    assert one["vs_baseline"]["test_accuracy"]["p"] is None  # one seed a side: no recipe test
    assert one["vs_baseline"]["networks"]["test"].startswith("exact McNemar: these two networks")
    assert one["vs_baseline"]["networks"]["p"] == 1.0  # identical predictions
    baseline = [r for r in rows if r["dataset"] == "CIFAR-10" and "lr" not in r["changed_fields"]][0]
    assert baseline["vs_baseline"] is None and baseline["seeds"] == [0, 1, 2]
    assert (tmp_path / "f_lr.png").read_bytes()[:4] == b"\x89PNG"  # a figure per swept field, beside --figure


def test_train_subset_is_stratified_and_keeps_validation_and_test(tmp_path, smoke_data):
    import torch

    from common.data import stratified_split, stratified_subset
    from tests.conftest import only_run, run_script

    labels = torch.arange(10).repeat_interleave(5000)
    train, val = stratified_split(labels, 0.1, 0)
    subset = stratified_subset(train, labels, 1000, 0)
    assert len(subset) == 1000 and torch.bincount(labels[subset]).tolist() == [100] * 10
    assert set(subset.tolist()) <= set(train.tolist()) and not set(subset.tolist()) & set(val.tolist())
    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--epochs", "1", "--train-subset", "100",
                        "--data-dir", smoke_data, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = only_run(str(tmp_path))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["split"] == {"train": 100, "val": 60, "test": 200, "split_seed": 0}  # val and test as without it
    assert config["config"]["train_subset"] == 100
    assert json.load(open(os.path.join(run_dir, "train.json")))["epochs"][0]["train_images"] == 100
    from common.config import recipe_key_fields
    assert "train_subset" in recipe_key_fields()  # a different recipe in compare
