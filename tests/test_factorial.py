"""The statistics of factorial ablations and of compare's tables: main effects from a linear model,
Holm's adjustment, the detectable effect at 80% power, the gap to the report; and compare on
fabricated run folders (a factorial design, one seed a side, thread counts, precisions)."""
import hashlib
import itertools
import os
import re
import json
import shutil

import numpy as np
import pytest
from scipy import stats as scipy_stats

from common.compare import factorial, stats, tables
from common.compare.cli import main as compare_main
from common.compare.rows import build_rows, summarize_row
from common.compare.runs import collect
from common.compare.tables import markers, reference_table

LEVELS = {"model": ("tutorial_cnn", "three_block_cnn"), "optimizer": ("adam", "adamw"),
          "scheduler": ("none", "cosine"), "augment": ("none", "crop_flip")}


def full_factorial(seeds=2):
    """Every cell of the 2^4 design, `seeds` times: ({field: value}, {field: -1/+1})."""
    out = []
    for combo in itertools.product(*LEVELS.values()):
        cell = dict(zip(LEVELS, combo))
        coded = {k: 1 if cell[k] == LEVELS[k][1] else -1 for k in LEVELS}
        out += [(cell, coded)] * seeds
    return out


def simulate(runs, effects, interaction=0.0, noise=0.005, rng=None):
    """accuracy = 0.6 + sum effect/2 * x + interaction/2 * x_model * x_augment + noise."""
    rng = rng or np.random.default_rng(0)
    return [0.6 + sum(effects[k] / 2 * x[k] for k in LEVELS) + interaction / 2 * x["model"] * x["augment"]
            + rng.normal(0, noise) for _, x in runs]


def test_the_linear_model_recovers_known_main_effects_and_an_interaction():
    runs = full_factorial()
    truth = {"model": 0.04, "optimizer": 0.0, "scheduler": 0.01, "augment": 0.06}
    values = simulate(runs, truth, interaction=0.02)
    factors = factorial.find_factors([cell for cell, _ in runs[::2]])
    assert [f.name for f in factors] == list(LEVELS)
    assert factors[0].levels == LEVELS["model"]  # the flag's order: tutorial_cnn first
    fit = factorial.fit(factors, [cell for cell, _ in runs], values)
    assert fit.n == 32 and fit.residual_df == 32 - 1 - 4 - 6  # all six two-way terms fit
    by_term = {e.term: e for e in fit.effects}
    standard_error = 2 * 0.005 / np.sqrt(32)  # of an effect, with the simulated noise
    for term, true in [((name,), effect) for name, effect in truth.items()] + [(("model", "augment"), 0.02)]:
        assert abs(by_term[term].estimate - true) < 4 * standard_error, (term, by_term[term])
    assert by_term[("model", "augment")].p_holm < 0.001 and by_term[("augment",)].p_holm < 0.001
    assert by_term[("model",)].p_holm < 0.001 and by_term[("scheduler",)].p_holm < 0.05
    zeros = [t for t in by_term if len(t) == 2 and t != ("model", "augment")] + [("optimizer",)]
    assert sum(by_term[t].p_holm < 0.05 for t in zeros) <= 1  # true zeros (the rate: the null test below)


def test_the_fit_agrees_with_a_direct_numpy_fit_and_the_contrasts_by_hand():
    runs = full_factorial()
    values = np.array(simulate(runs, {"model": 0.03, "optimizer": -0.01, "scheduler": 0.0, "augment": 0.02},
                               rng=np.random.default_rng(5)))
    fit = factorial.fit(factorial.find_factors([c for c, _ in runs[::2]]), [c for c, _ in runs], list(values))
    x = np.array([[x[k] for k in LEVELS] for _, x in runs], dtype=float)
    columns = [np.ones(32)] + [x[:, i] for i in range(4)] + [x[:, i] * x[:, j] for i, j in
                                                             itertools.combinations(range(4), 2)]
    design = np.column_stack(columns)
    beta = np.linalg.solve(design.T @ design, design.T @ values)  # the normal equations, independently
    residual = values - design @ beta
    df = 32 - design.shape[1]
    se = np.sqrt(residual @ residual / df * np.diag(np.linalg.inv(design.T @ design)))
    for i, effect in enumerate(fit.effects):
        assert effect.estimate == pytest.approx(2 * beta[i + 1], abs=1e-12)
        assert effect.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(beta[i + 1] / se[i + 1]), df), rel=1e-9)
    for i, name in enumerate(LEVELS):  # balanced: the effect is the mean at the second value minus at the first
        contrast = values[x[:, i] > 0].mean() - values[x[:, i] < 0].mean()
        assert fit.effects[i].estimate == pytest.approx(contrast, abs=1e-12)
    assert fit.effects[0].high - fit.effects[0].low == pytest.approx(
        2 * scipy_stats.t.ppf(0.975, df) * 2 * np.sqrt(residual @ residual / df) / np.sqrt(32), rel=1e-9)


def test_a_null_design_rejects_rarely_after_holm():
    runs = full_factorial()
    rng = np.random.default_rng(1)
    factors = factorial.find_factors([c for c, _ in runs[::2]])
    settings = [c for c, _ in runs]
    trials, holm_any, raw_any = 300, 0, 0
    for _ in range(trials):
        fit = factorial.fit(factors, settings, simulate(runs, dict.fromkeys(LEVELS, 0.0), noise=0.01, rng=rng))
        holm_any += any(e.p_holm < 0.05 for e in fit.effects)
        raw_any += any(e.p_value < 0.05 for e in fit.effects)
    assert holm_any / trials <= 0.09      # family-wise error at most 5%, with room for 300 trials' noise
    assert raw_any / trials >= 0.25       # without the adjustment, 10 tests reject about 40% of the time


def test_a_half_fraction_is_a_design_and_fits_only_what_it_can_separate():
    cells = [cell for cell, x in full_factorial(seeds=1) if x["augment"] == x["model"] * x["optimizer"] *
             x["scheduler"]]  # 2^(4-1), augment = model x optimizer x scheduler: 8 cells
    runs = cells * 3
    factors = factorial.find_factors(cells)
    assert factors is not None and len(cells) == 8
    rng = np.random.default_rng(2)
    values = [0.6 + 0.02 * (c["model"] == "three_block_cnn") + rng.normal(0, 0.003) for c in runs]
    fit = factorial.fit(factors, runs, values)
    terms = [e.term for e in fit.effects]
    assert len([t for t in terms if len(t) == 2]) == 3  # the six pairs alias in twos: three estimable
    assert abs(fit.effects[0].estimate - 0.02) < 4 * 2 * 0.003 / np.sqrt(24)  # within 4 standard errors


def test_what_is_not_a_two_level_design():
    cells = [cell for cell, _ in full_factorial(seeds=1)]
    assert factorial.find_factors(cells[:-1]) is None                      # a cell missing: unbalanced
    assert factorial.find_factors([{"lr": v, "augment": a} for v in (0.1, 0.01, 0.001)
                                   for a in ("none", "crop_flip")]) is None  # three values
    assert factorial.find_factors([{"lr": 0.1}, {"lr": 0.01}]) is None     # one field: a plain comparison


def test_holm_by_hand():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, None])
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.06
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and adjusted[4] is None
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]


def test_the_detectable_difference_is_found_with_80_percent_power_by_simulation():
    a, b = [0.70, 0.71, 0.69], [0.68, 0.70, 0.69]
    delta = stats.detectable_difference(a, b)
    pooled = np.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    rng = np.random.default_rng(3)
    x = rng.normal(0, pooled, (20000, 3))
    y = rng.normal(delta, pooled, (20000, 3))
    power = (scipy_stats.ttest_ind(x, y, axis=1).pvalue < 0.05).mean()
    assert power == pytest.approx(0.80, abs=0.015)
    assert stats.detectable_difference([0.7], [0.6, 0.65]) is None  # no spread on one side
    assert stats.noncentrality_for_power(10**6) == pytest.approx(1.959964 + 0.841621, abs=1e-3)


def test_the_gap_to_the_report_and_its_interval_by_hand():
    ours, report = [0.7137, 0.7077, 0.6911], 0.7224
    gap = stats.gap(ours, report)
    mean, sem = np.mean(ours), np.std(ours, ddof=1) / np.sqrt(3)
    half = scipy_stats.t.ppf(0.975, 2) * sem
    assert gap.mean == pytest.approx(report - mean)
    assert (gap.low, gap.high) == pytest.approx((report - mean - half, report - mean + half))
    assert stats.gap([0.7], report).low is None


# --- compare on fabricated run folders ----------------------------------------------------------

def fabricate(source, dest, fields=None, seed=0, test=None, val=None, threads=None, precision=None, isa=None,
              layout=None, own_draws=False):
    """A copy of a complete run folder with other recipe fields, seed, accuracies or environment. Its draws
    (initial weights, data order) are the source's, so copies of one seed share them, unless own_draws:
    then they are its own, as for runs that share no random draw with any other."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.pth", "*.png", ".lock"))
    own = {name: hashlib.sha256(f"{dest}/{name}".encode()).hexdigest()
           for name in ("initial_weights_sha256", "epoch_1_order_sha256")}
    edits = {"config.json": lambda c: (c["config"].update(fields or {}, seed=seed), c.update(seed=seed),
                                       own_draws and c.update(draws=own),
                                       threads and c["environment"].update(torch_threads=threads),
                                       precision and c["environment"].update(precision=precision),
                                       isa and c["environment"].update(cpu_capability=isa),
                                       layout and c["environment"].update(layout=layout)),
             "test.json": lambda t: test is not None and t.update(accuracy=test),
             "train.json": lambda t: val is not None and t.update(best_val_accuracy=val)}
    for name, edit in edits.items():
        content = json.load(open(dest / name))
        edit(content)
        (dest / name).write_text(json.dumps(content))
    return dest


def test_compare_prints_main_effects_and_writes_them_to_json_and_a_figure(smoke_run, tmp_path, capsys):
    runs = full_factorial()
    truth = {"model": 0.04, "optimizer": 0.0, "scheduler": 0.01, "augment": 0.06}
    values = simulate(runs, truth, interaction=0.02)
    root = tmp_path / "factorial"
    for i, ((cell, _), value) in enumerate(zip(runs, values)):
        fabricate(smoke_run, root / f"run{i}", cell, seed=i % 2, test=value, val=value)
    compare_main([str(root), "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    assert "**Main effects**" in out and "| augment | none → crop_flip |" in out
    assert out.index("**Main effects**") < out.index("| experiment |")  # a factorial's answer first, then its cells
    assert "| model × augment | interaction |" in out  # the interaction that stands out
    (design,) = json.load(open(tmp_path / "t.json"))["designs"]
    effects = {tuple(e["term"]): e for e in design["metrics"]["test_accuracy"]["effects"]}
    assert effects[("augment",)]["ci95"][0] <= 0.06 <= effects[("augment",)]["ci95"][1]
    direct = factorial.fit(factorial.find_factors([c for c, _ in runs[::2]]), [c for c, _ in runs], values)
    assert [effects[e.term]["p_holm"] for e in direct.effects] == pytest.approx([e.p_holm for e in direct.effects])
    assert (root / "compare_effects.png").read_bytes()[:4] == b"\x89PNG"  # inside the compared folder
    readme = tmp_path / "README.md"
    readme.write_text("<!-- effects:start -->\n<!-- effects:end -->\n")
    compare_main([str(root), "--readme", str(readme), "--block", "effects", "--figure", str(tmp_path / "e.png")])
    assert "| augment | none → crop_flip |" in readme.read_text() and "| ex_1 |" not in readme.read_text()
    assert (tmp_path / "e.png").exists() and not (tmp_path / "e_effects.png").exists()


@pytest.mark.parametrize("own_draws, why", [(True, "— (one seed on a side)"), (False, "— (one shared seed)")])
def test_one_seed_a_side_prints_no_p_value(smoke_run, tmp_path, capsys, own_draws, why):
    fabricate(smoke_run, tmp_path / "a", seed=0, test=0.61, own_draws=own_draws)
    fabricate(smoke_run, tmp_path / "b", {"lr": 0.003}, seed=0, test=0.69, own_draws=own_draws)
    compare_main([str(tmp_path), "--no-figures"])
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "lr 0.003" in line]
    assert why in row and "+0.0800" in row
    cells = [c.strip() for c in row.split("|")]
    assert not any(c.replace(".", "").replace("e-", "").isdigit() for c in cells[7:10:2])  # no p anywhere


def test_thread_counts_and_precisions_make_separate_rows(smoke_run, tmp_path):
    for seed in (0, 1):
        fabricate(smoke_run, tmp_path / f"one{seed}", seed=seed, threads=1, precision="float32")
        fabricate(smoke_run, tmp_path / f"two{seed}", seed=seed, threads=2, precision="float32")
        fabricate(smoke_run, tmp_path / f"bf16{seed}", seed=seed, threads=2, precision="bfloat16")
    rows = build_rows(collect([str(tmp_path)]))
    assert sorted(len(r.runs) for r in rows) == [2, 2, 2]
    labels = {(summarize_row(r)["threads"], summarize_row(r)["precision"], summarize_row(r)["layout"]) for r in rows}
    assert labels == {("1 thread x 1 process", "float32", "nchw"), ("2 threads x 1 process", "float32", "nchw"),
                      ("2 threads x 1 process", "bfloat16", "nchw")}  # the smoke run's layout, recorded


def test_models_in_their_own_layouts_form_one_design_and_one_recipe_in_two_layouts_two_rows(smoke_run, tmp_path,
                                                                                             capsys):
    """The layout is the model entry's choice: a sweep over models stays one table and one design, its header
    naming each model's layout; the same recipe in two layouts (another registry) is never averaged."""
    runs = full_factorial()
    values = simulate(runs, {"model": 0.04, "optimizer": 0.0, "scheduler": 0.01, "augment": 0.06})
    layouts = {"tutorial_cnn": "nchw", "three_block_cnn": "channels_last"}
    root = tmp_path / "factorial"
    for i, ((cell, _), value) in enumerate(zip(runs, values)):
        fabricate(smoke_run, root / f"run{i}", cell, seed=i % 2, test=value, val=value, layout=layouts[cell["model"]])
    compare_main([str(root), "--json", str(tmp_path / "t.json"), "--no-figures"])
    out = capsys.readouterr().out
    (design,) = json.load(open(tmp_path / "t.json"))["designs"]
    assert [f["name"] for f in design["factors"]].count("model") == 1
    assert "each model's layout: " in design["context"] and "tutorial_cnn nchw" in design["context"]
    assert out.count("**CIFAR-10**") == 2  # the design's header and one row table
    for seed in (0, 1):
        fabricate(smoke_run, tmp_path / "two" / f"a{seed}", seed=seed, layout="nchw")
        fabricate(smoke_run, tmp_path / "two" / f"b{seed}", seed=seed, layout="channels_last")
    rows = build_rows(collect([str(tmp_path / "two")]))
    assert sorted(summarize_row(r)["layout"] for r in rows) == ["channels_last", "nchw"]
    assert len({r.context for r in rows}) == 1 and all(len(r.runs) == 2 for r in rows)


def test_the_cpus_vector_isa_makes_separate_rows_and_the_results_give_each_machine_a_line(smoke_run, tmp_path,
                                                                                           monkeypatch):
    """Kernels for AVX2 and AVX512 round differently: the same seed gives other numbers, so other rows,
    and README's results give each machine's row its own line (most seeds first), never a pooled one."""
    fabricate(smoke_run, tmp_path / "avx2", seed=0, isa="AVX2", test=0.70)
    for seed in (0, 1, 2):
        fabricate(smoke_run, tmp_path / f"avx512-{seed}", seed=seed, isa="AVX512", test=0.71)
    rows = build_rows(collect([str(tmp_path)]))
    assert sorted((summarize_row(r)["hardware"].split()[-1], len(r.runs)) for r in rows) == \
        [("AVX2", 1), ("AVX512", 3)]
    monkeypatch.setattr(tables, "reference_rows", lambda rows: rows)  # the smoke runs stand in for real ones
    for order in (rows, rows[::-1]):
        lines = [x for x in reference_table(order).splitlines() if x.startswith("| ex_1 | CIFAR-10 |")]
        assert len(lines) == 2 and "AVX512 | 3 (0,1,2) | 0.7100 " in lines[0] and "AVX2 | 1 (0) | 0.7000 " in lines[1]


def test_of_two_three_seed_rows_the_results_cell_lists_first_the_one_with_predictions_then_the_newest(
        smoke_run, tmp_path, monkeypatch):
    """README's first line of a cell is the row whose every run keeps predictions.npz (paired tests read it)."""
    def three_seeds(isa, test, start):
        for seed in (0, 1, 2):
            run = fabricate(smoke_run, tmp_path / f"{isa}-{seed}", seed=seed, isa=isa, test=test)
            config = json.load(open(run / "config.json"))
            (run / "config.json").write_text(json.dumps({**config, "start_time": start}))
        return tmp_path / f"{isa}-0"

    monkeypatch.setattr(tables, "reference_rows", lambda rows: rows)  # the smoke runs stand in for real ones

    def headline(accuracies):
        rows = build_rows(collect([str(tmp_path)]))
        cells = []
        for order in (rows, rows[::-1]):
            lines = [x for x in reference_table(order).splitlines() if x.startswith("| ex_1 | CIFAR-10 |")]
            assert len(lines) == len(accuracies)  # every machine's row, none pooled
            cells.append([a for a in accuracies if f"| {a:.4f} " in lines[0]])  # identical seeds: no ±
        return cells

    without = three_seeds("AVX2", 0.70, "2026-12-02T06:24:51+00:00")
    three_seeds("AVX512", 0.71, "2026-11-27T20:26:35+00:00")
    (without / "predictions.npz").unlink()
    assert headline([0.70, 0.71]) == [[0.71], [0.71]]  # newer, but one run lacks predictions
    three_seeds("AMX", 0.72, "2026-12-02T11:00:00+00:00")
    assert headline([0.70, 0.71, 0.72]) == [[0.72], [0.72]]  # both keep them: the newest


def test_the_results_block_gives_the_gap_to_the_report_with_its_interval(smoke_run, tmp_path):
    from common.compare.reference import REPORT

    accuracies = [0.7137, 0.7077, 0.6911]
    for seed, accuracy in enumerate(accuracies):
        run = fabricate(smoke_run, tmp_path / f"s{seed}", seed=seed, test=accuracy)
        config = json.load(open(run / "config.json"))
        config["config"]["smoke"] = False  # a real-data run of the script's own recipe
        config["config"]["epochs"] = config["recipe"]["epochs"] = 2
        config["config"]["batch_size"] = config["recipe"]["batch_size"]
        (run / "config.json").write_text(json.dumps(config))
    rows = build_rows(collect([str(tmp_path)]))
    table = reference_table(rows)
    (line,) = [x for x in table.splitlines() if x.startswith("| ex_1 | CIFAR-10 |")]
    gap = stats.gap(accuracies, REPORT["ex_1"]["cifar10"]["accuracy"])
    assert f"{gap.mean:+.4f} [{gap.low:+.4f}, {gap.high:+.4f}]" in line and "| 3 (0,1,2) |" in line
    # the report's single run against where one run of ours falls: mean ± t(2 df) s sqrt(1 + 1/3), by hand
    mean, sd = np.mean(accuracies), np.std(accuracies, ddof=1)
    half = scipy_stats.t.ppf(0.975, 2) * sd * np.sqrt(1 + 1 / 3)
    p = 2 * scipy_stats.t.sf(abs(REPORT["ex_1"]["cifar10"]["accuracy"] - mean) / (sd * np.sqrt(1 + 1 / 3)), 2)
    assert f"| [{mean - half:.4f}, {mean + half:.4f}] | {p:.2g} |" in line


README_BLOCKS = {"results": ("README.md", ["results/ex_1"]),
                 "ablation": ("docs/ablations.md", ["results/ex_1/sweeps/lr", "--baseline", "lr=0.001"]),
                 "effects": ("docs/ablations.md", ["results/ex_2/sweeps/factorial"]),
                 "compare": ("docs/results.md", ["results"])}


@pytest.mark.parametrize("block", README_BLOCKS)
def test_readme_tables_are_what_compare_makes_of_the_shipped_run_folders(block, tmp_path):
    """README's and docs/ablations.md's tables are compare's output on the folders under results/,
    not hand-edited numbers."""
    from tests.conftest import REPO

    document, folders = README_BLOCKS[block]
    readme = open(os.path.join(REPO, document)).read()
    start, end = markers(block)
    copy = tmp_path / "README.md"
    copy.write_text(f"{start}\n{end}\n")
    compare_main([os.path.join(REPO, p) if p.startswith("results") else p for p in folders]
                 + ["--readme", str(copy), "--block", block, "--no-figures"])
    made = copy.read_text()
    assert made[len(start) + 1:-len(end) - 1] in readme and readme.count(start) == 1
    assert made.count("|") > 20  # a table, not an empty block


def _points(x: float) -> str:
    """A fraction as the prose writes it: percentage points, one decimal (two below 0.1), a typographic minus."""
    points = 100 * x
    return (f"{points:+.2f}" if abs(points) < 0.095 else f"{points:+.1f}").replace("-", "−")


# How README, docs/ablations.md and ex_2.py name each factor of the shipped factorial.
FACTOR_WORDS = {"model": "model", "augment": "crop+flip", "optimizer": "AdamW", "scheduler": "cosine"}


def test_the_factorial_s_numbers_in_the_prose_are_the_shipped_fit(tmp_path):
    """Every effect the words quote (README, docs/ablations.md, ex_2.py's docstring) is the fit compare
    makes of results/ex_2/sweeps/factorial, rounded as written; and so are the runs, seeds and df quoted."""
    from tests.conftest import REPO

    summary = tmp_path / "factorial.json"
    compare_main([os.path.join(REPO, "results/ex_2/sweeps/factorial"), "--json", str(summary), "--no-figures"])
    (design,) = json.loads(summary.read_text())["designs"]
    fit = design["metrics"]["test_accuracy"]
    effects = {tuple(e["term"]): e for e in fit["effects"]}
    seeds = sorted({s for cell in design["cell_seeds"] for s in cell})
    docs = {name: open(os.path.join(REPO, name)).read().replace("\n", " ") for name in
            ("README.md", "docs/ablations.md", "ex_2.py")}
    docs = {name: " ".join(text.split()) for name, text in docs.items()}
    for field, words in FACTOR_WORDS.items():
        e = effects[(field,)]
        quoted = rf"{re.escape(words)} {re.escape(_points(e['estimate']))}( points)?"
        interval = rf" \({re.escape(_points(e['ci95'][0]))} to {re.escape(_points(e['ci95'][1]))}\)"
        assert re.search(quoted, docs["ex_2.py"]), (field, _points(e["estimate"]))
        for name in ("README.md", "docs/ablations.md"):
            assert re.search(quoted + interval, docs[name]), (name, field, e["estimate"], e["ci95"])
    model = effects[("model",)]
    interaction = effects[("model", "augment")]
    for name in ("README.md", "docs/ablations.md"):
        text = docs[name]
        assert f"{fit['runs']} runs" in text and f"with {model['df']} degrees of freedom" in text
        assert f"model × augment {_points(interaction['estimate'])}" in text
        assert "seeds " + ", ".join(map(str, seeds)) in text or f"seeds {seeds[0]} to {seeds[-1]}" in text


def five_factor_half_fraction():
    """2^(5-1) of resolution V, e = a b c d: 16 cells, one run each; every two-way term estimable."""
    cells = []
    for x in itertools.product((-1, 1), repeat=4):
        cells.append(dict(zip("abcd", x), e=x[0] * x[1] * x[2] * x[3]))
    return cells


def _lettered(cells, order):
    return [{name: ("lo", "hi")[(cell[name] + 1) // 2] for name in order} for cell in cells]


def test_the_fitted_terms_do_not_depend_on_the_order_of_the_fields():
    """16 runs, 5 main effects and 10 estimable pairs: not all fit, so none does, whatever the order."""
    coded = five_factor_half_fraction()
    rng = np.random.default_rng(4)
    values = [0.6 + 0.01 * c["a"] + 0.008 * c["d"] * c["e"] + rng.normal(0, 0.001) for c in coded]
    fits = []
    for order in ("abcde", "edcba", "daebc"):
        settings = _lettered(coded, order)
        factors = factorial.find_factors(settings)
        fits.append(factorial.fit(factors, settings, values))
    terms = [sorted(tuple(sorted(e.term)) for e in f.effects) for f in fits]
    assert terms[0] == terms[1] == terms[2] == [(n,) for n in "abcde"]
    assert all("10 estimable two-way terms" in f.left_out for f in fits)
    by_term = [{e.term: e.estimate for e in f.effects} for f in fits]
    assert all(b[("a",)] == pytest.approx(by_term[0][("a",)]) for b in by_term)


def test_a_resolution_three_fraction_prints_each_main_effect_with_the_interaction_it_is_aliased_with(
        smoke_run, tmp_path, capsys):
    """2^(3-1), c = a b: each main effect equals a two-way interaction; the table says so."""
    root = tmp_path / "fraction"
    levels = {"model": LEVELS["model"], "augment": LEVELS["augment"], "optimizer": LEVELS["optimizer"]}
    i = 0
    for xa, xb in itertools.product((0, 1), repeat=2):
        xc = int(xa == xb)  # coded: c = a * b
        cell = {"model": levels["model"][xa], "augment": levels["augment"][xb], "optimizer": levels["optimizer"][xc]}
        for seed in (0, 1, 2):
            fabricate(smoke_run, root / f"run{i}", cell, seed=seed, test=0.6 + 0.01 * xa + 0.001 * seed, val=0.6 + 0.001 * seed)
            i += 1
    compare_main([str(root), "--no-figures"])
    out = capsys.readouterr().out
    assert "| model = optimizer × augment |" in out and "| augment = model × optimizer |" in out
    assert "this fraction cannot tell A from B" in out


def test_a_missing_run_changes_the_footer_and_zero_spread_gives_no_p_value(smoke_run, tmp_path, capsys):
    root = tmp_path / "design"
    for i, (cell, _) in enumerate(full_factorial(seeds=2)):
        if i != 5:  # one run of one cell missing
            fabricate(smoke_run, root / f"run{i}", cell, seed=i % 2, test=0.6 + 0.001 * i, val=0.6 + 0.001 * i)
    compare_main([str(root), "--no-figures"])
    out = capsys.readouterr().out
    assert "unbalanced: seeds 0,1 in 15 cells; seeds 0 in 1 cell" in out and "of each cell" not in out
    flat = tmp_path / "flat"
    for seed in (0, 1):
        fabricate(smoke_run, flat / f"a{seed}", seed=seed, test=0.61, val=0.6)
        fabricate(smoke_run, flat / f"b{seed}", {"lr": 0.003}, seed=seed, test=0.63, val=0.6)
    compare_main([str(flat), "--no-figures", "--json", str(tmp_path / "flat.json")])
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "lr 0.003" in line]
    assert "— (no spread)" in row and "+0.0200 |" in row  # the difference, with no interval and no p
    (summary,) = [s for s in json.load(open(tmp_path / "flat.json"))["rows"] if s["vs_baseline"]]
    test = summary["vs_baseline"]["test_accuracy"]
    assert test["p"] is None and test["ci95"] == [None, None] and test["detectable_80"] is None


@pytest.mark.parametrize("shared", [True, False])
def test_runs_that_share_initial_weights_are_said_to_and_the_factor_they_confound_is_named(
        smoke_run, tmp_path, capsys, shared):
    import hashlib

    root = tmp_path / "design"
    for i, (cell, _) in enumerate(full_factorial(seeds=2)):
        run = fabricate(smoke_run, root / f"run{i}", cell, seed=i % 2, test=0.6 + 0.001 * (i * 5 % 7),
                       val=0.6 + 0.001 * (i * 7 % 5))
        config = json.load(open(run / "config.json"))
        start = f"{i % 2}/{cell['model']}" if shared else f"run {i}"  # what the code does: seed and model decide
        config["draws"] = {"initial_weights_sha256": hashlib.sha256(start.encode()).hexdigest(),
                           "epoch_1_order_sha256": hashlib.sha256(str(i % 2).encode()).hexdigest()}
        (run / "config.json").write_text(json.dumps(config))
    compare_main([str(root), "--no-figures", "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    (design,) = json.load(open(tmp_path / "t.json"))["designs"]
    if shared:
        assert "Shared initial weights (config.json's draws): the runs form 4 groups of up to 8" in out
        assert "and model is constant within each" in out
        assert design["shared_initial_weights"] == {"groups": 4, "size": 8, "constant": ["model"], "inferred": False}
    else:
        assert "Shared initial weights" not in out and design["shared_initial_weights"] is None


def test_a_design_with_no_spread_around_its_model_is_not_fitted():
    runs = full_factorial()
    values = simulate(runs, {"model": 0.04, "optimizer": 0.0, "scheduler": 0.01, "augment": 0.06}, noise=0.0)
    factors = factorial.find_factors([c for c, _ in runs[::2]])
    assert factorial.fit(factors, [c for c, _ in runs], values) is None  # no p = 1e-58, no zero-width interval


def test_lack_of_fit_finds_an_omitted_three_way_interaction_and_not_its_absence():
    runs = full_factorial(seeds=3)
    factors = factorial.find_factors([c for c, _ in runs[::3]])
    settings = [c for c, _ in runs]
    rng = np.random.default_rng(8)
    plain = simulate(runs, dict.fromkeys(LEVELS, 0.01), noise=0.003, rng=rng)
    three_way = [v + 0.01 * x["model"] * x["optimizer"] * x["augment"] for v, (_, x) in zip(plain, runs)]
    f, between, within, p = factorial.fit(factors, settings, three_way).lack_of_fit
    assert (between, within) == (16 - 11, 48 - 16) and p < 1e-6  # the model's 11 columns; 16 cells of 3 seeds
    # the F by hand: the residual beyond the within-cell spread, per df, over the within-cell mean square
    cells = np.array(three_way).reshape(16, 3)
    pure = ((cells - cells.mean(1, keepdims=True)) ** 2).sum()
    fit = factorial.fit(factors, settings, three_way)
    residual = fit.residual_sd ** 2 * fit.residual_df
    assert f == pytest.approx(((residual - pure) / 5) / (pure / 32), rel=1e-9)
    assert factorial.fit(factors, settings, plain).lack_of_fit[3] > 0.001


def shared_init_design(seeds=4):
    """model x augment x optimizer, each cell once per seed; the seed and the model decide the initial
    weights (as in the code): ({field: value}, coded, seed) per run."""
    fields = {k: LEVELS[k] for k in ("model", "augment", "optimizer")}
    return [(dict(zip(fields, combo)), {k: 1 if v == fields[k][1] else -1 for k, v in zip(fields, combo)}, seed)
            for seed in range(seeds) for combo in itertools.product(*fields.values())]


def simulate_shared(runs, rng, init_sd=0.01, noise=0.002, model=0.03, augment=0.02):
    """accuracy with a seed effect (its data order), an effect per (seed, model) start, and run noise."""
    seed_effect = rng.normal(0, 0.005, 8)
    start = {(s, m): rng.normal(0, init_sd) for s in range(8) for m in LEVELS["model"]}
    return [0.6 + model / 2 * x["model"] + augment / 2 * x["augment"] + seed_effect[s] + start[(s, cell["model"])]
            + rng.normal(0, noise) for cell, x, s in runs]


def test_a_term_confounded_with_shared_initialisations_gets_intervals_that_cover_the_truth():
    # Split-plot: the model effect is tested on the (seed, model) groups' means; ignoring the groups
    # (every run independent) its 95% intervals are about half as wide as they should be.
    runs = shared_init_design()
    settings = [cell for cell, _, _ in runs]
    factors = factorial.find_factors(settings[:8])
    groups, blocks = [(s, cell["model"]) for cell, _, s in runs], [s for _, _, s in runs]
    rng = np.random.default_rng(11)
    covered = {"strata": 0, "independent": 0, "augment": 0}
    repetitions = 400
    for _ in range(repetitions):
        values = simulate_shared(runs, rng)
        strata = {e.term: e for e in factorial.fit(factors, settings, values, groups, blocks).effects}
        independent = {e.term: e for e in factorial.fit(factors, settings, values).effects}
        covered["strata"] += strata[("model",)].low <= 0.03 <= strata[("model",)].high
        covered["independent"] += independent[("model",)].low <= 0.03 <= independent[("model",)].high
        covered["augment"] += strata[("augment",)].low <= 0.02 <= strata[("augment",)].high
    rates = {k: v / repetitions for k, v in covered.items()}
    assert 0.92 <= rates["strata"] <= 0.98, rates        # 95% +- 3 binomial sd
    assert 0.92 <= rates["augment"] <= 0.98, rates       # within groups: the runs' own error
    assert rates["independent"] < 0.85, rates            # the analysis that counts every run as independent
    fit = factorial.fit(factors, settings, simulate_shared(runs, rng), groups, blocks)
    by_term = {e.term: e for e in fit.effects}
    # 8 group means less intercept, 3 seed blocks and the model: 3 df; 32 runs less 8 groups and the 5 terms that vary within them: 19
    assert (by_term[("model",)].stratum, by_term[("model",)].df) == ("initialisations", 3)
    assert (by_term[("augment",)].stratum, by_term[("augment",)].df) == ("runs within initialisations", 19)
    assert by_term[("model", "augment")].stratum == "runs within initialisations"


def test_the_split_plot_fit_matches_the_anova_by_hand():
    runs = shared_init_design(seeds=3)
    settings = [cell for cell, _, _ in runs]
    values = np.array(simulate_shared(runs, np.random.default_rng(3)))
    fit = factorial.fit(factorial.find_factors(settings[:8]), settings, list(values),
                        [(s, cell["model"]) for cell, _, s in runs], [s for _, _, s in runs])
    model = {e.term: e for e in fit.effects}[("model",)]
    means = values.reshape(3, 2, 4).mean(2)    # seed x model: runs are ordered seed, model, augment, optimizer
    estimate = means[:, 1].mean() - means[:, 0].mean()
    interaction = means - means.mean(1, keepdims=True) - means.mean(0, keepdims=True) + means.mean()
    whole_ms = (interaction ** 2).sum() / 2     # seed x model: the whole-plot error, (3-1)(2-1) df
    se = np.sqrt(whole_ms * (1 / 3 + 1 / 3))    # a difference of two means of 3 group means each
    assert model.estimate == pytest.approx(estimate, abs=1e-12) and model.df == 2
    assert model.standard_error == pytest.approx(se, rel=1e-9)
    assert model.estimate == pytest.approx(float(np.dot(model.weights, values)), abs=1e-12)


def test_the_test_image_standard_error_is_the_spread_of_an_effect_over_new_test_sets():
    # Runs fixed (their seeds drawn once); only the test images are drawn again, 300 times, from one
    # population of difficulties: the effect's spread over those test sets is what image_se estimates.
    runs = full_factorial(seeds=1)
    settings = [cell for cell, _ in runs]
    factors = factorial.find_factors(settings)
    rng = np.random.default_rng(5)
    skill = np.array([0.4 * x["augment"] + 0.2 * x["model"] + rng.normal(0, 0.1) for _, x in runs])
    estimates, image_ses = [], []
    for _ in range(300):
        difficulty = rng.normal(0, 1.5, 2000)
        correct = (rng.random((len(runs), 2000)) < 1 / (1 + np.exp(-(skill[:, None] + difficulty)))).astype(float)
        fit = factorial.with_test_images(factorial.fit(factors, settings, list(correct.mean(1))), correct)
        augment = {e.term: e for e in fit.effects}[("augment",)]
        estimates.append(augment.estimate)
        image_ses.append(augment.image_se)
        assert augment.any_test_set[0] < augment.low and augment.any_test_set[1] > augment.high
    assert np.mean(image_ses) == pytest.approx(np.std(estimates, ddof=1), rel=0.12)
    by_hand = np.asarray(augment.weights) @ correct
    assert augment.image_se == pytest.approx(by_hand.std(ddof=1) / np.sqrt(2000), rel=1e-12)


def _holm_by_hand(raw: list) -> list:
    order = sorted(range(len(raw)), key=raw.__getitem__)
    adjusted, running = [0.0] * len(raw), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(raw) - rank) * raw[i]))
        adjusted[i] = running
    return adjusted


def test_a_plans_p_values_are_the_same_alone_or_beside_every_other_folder(tmp_path):
    """One multiplicity rule: the lr plan's rows are one Holm family per metric with the plan's own
    baseline, whether compare is given the plan or all of results/ (they were 0.386 and 0.643)."""
    from tests.conftest import REPO

    def plan_rows(folders: list, name: str) -> dict:
        compare_main([os.path.join(REPO, f) for f in folders] + ["--baseline", "lr=0.001", "--no-figures",
                                                                  "--json", str(tmp_path / name)])
        rows = json.load(open(tmp_path / name))["rows"]
        return {r["changes"]: r for r in rows if r["plan"] and r["plan"].endswith(os.path.join("sweeps", "lr"))}

    alone, beside = plan_rows(["results/ex_1/sweeps/lr"], "alone.json"), plan_rows(["results"], "all.json")
    assert sorted(alone) == sorted(beside) and len(alone) == 3
    for metric in ("val_accuracy", "test_accuracy"):
        compared = [r["vs_baseline"][metric] for r in alone.values() if r["vs_baseline"]]
        assert len(compared) == 2 and all(c["holm_family"] == 2 for c in compared)
        expected = _holm_by_hand([c["p"] for c in compared])
        assert [c["p_holm"] for c in compared] == pytest.approx(expected, rel=1e-12)
        for changes, row in alone.items():
            if row["vs_baseline"]:
                assert beside[changes]["vs_baseline"][metric]["p_holm"] == pytest.approx(
                    row["vs_baseline"][metric]["p_holm"], rel=1e-12)


def test_readme_s_results_prose_quotes_its_table():
    """The gaps, intervals and p-values README's words quote are its results table's (itself compare's
    output, above), rounded as written; and what the words say of all rows holds for each."""
    from tests.conftest import REPO

    readme = open(os.path.join(REPO, "README.md")).read()
    start, end = markers("results")
    table = readme[readme.index(start):readme.index(end)]
    prose = " ".join(readme[readme.index(end):readme.index("![EX-1 validation accuracy")].split())
    checked = 0
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        gap = re.fullmatch(r"([+-]\d\.\d+) \[([+-]\d\.\d+), ([+-]\d\.\d+)\]", cells[8]) if len(cells) == 11 else None
        if not gap:
            continue  # the header, or one seed: no interval to quote
        value, low, high = map(float, gap.groups())
        if cells[1] == "CIFAR-100":
            assert low <= 0 <= high, line  # "On CIFAR-100 no row's gap is distinguishable from zero"
        else:
            assert f"{100 * value:.1f} " in prose and f"({_points(low)} to {_points(high)})" in prose, line
            assert cells[10] in prose, line  # its p, as the table prints it
            low_run, high_run = map(float, cells[9].strip("[]").split(","))
            assert low_run <= float(cells[7]) <= high_run, line  # "inside ... prediction intervals"
        checked += 1
    assert checked >= 4
