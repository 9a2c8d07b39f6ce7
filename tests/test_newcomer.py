"""The first hour and the next maintainer: header, checkpoints, TensorBoard, smoke rules,
paths from any folder, llm_prompt.md coverage, and the one-way layering of common/."""
import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, run_python, run_script


def _shown(value) -> str:
    """A value as a reader expects it in the header: 0.001, 0.5,0.5,0.5, tutorial_cnn."""
    if isinstance(value, list):
        return ",".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_header_says_device_data_recipe_and_folder_before_training(ex1_smoke_runs):
    from common.config import Recipe, applies, from_dict, knobs

    out, result = ex1_smoke_runs
    text = result.stdout
    header = re.search(r"ex_1 cifar10 seed 0 \| CPU (.+), (\d+) threads \| (fp32|bf16), (nchw|channels_last) \((.+)\)\n"
                       r"  data:   540 train / 60 validation / 200 test images \(synthetic, --smoke\)\n"
                       r"  recipe: (.+)\n"
                       r"  run folder: (.+)\n", text)
    assert header, text[:2000]
    run = header.group(7)
    assert run.startswith(str(out / "cifar_10"))
    # every declared field that applies is in the recipe line, in declaration order, with the value
    # config.json records (a boolean as one of its two words)
    config = json.load(open(os.path.join(run, "config.json")))["config"]
    recipe = from_dict(Recipe, config, "config.json")[0]
    words = header.group(6).split(", ")
    shown = [(name, k) for name, (k, _) in knobs(Recipe).items()
             if config[name] is not None and applies(k, recipe)]
    assert len(words) == len(shown), (words, [n for n, _ in shown])
    for word, (name, k) in zip(words, shown):
        expected = (k.show[0] if config[name] else k.show[1]) if isinstance(k.show, tuple) else _shown(config[name])
        assert expected in word, (name, word)
    assert words[0] == "tutorial_cnn (50,326 parameters)"
    assert text.index("loading cifar10") < header.start() < text.index("epoch   1/2")
    assert "Total params" not in text  # the torchsummary table goes to model_summary.txt
    assert "Total params: 50,326" in open(os.path.join(run, "model_summary.txt")).read()


def test_only_last_pth_carries_optimizer_state(ex1_smoke_runs):
    out, _ = ex1_smoke_runs
    run = glob.glob(str(out / "cifar_10" / "*"))[0]
    train = json.load(open(os.path.join(run, "train.json")))
    last = torch.load(os.path.join(run, "last.pth"), weights_only=True)
    assert {"optimizer", "scheduler", "history", "best"} <= set(last)
    for name in ("best.pth", "epoch-1.pth", "epoch-2.pth"):
        weights = torch.load(os.path.join(run, name), weights_only=True)
        assert not {"optimizer", "scheduler", "history"} & set(weights), name
        assert torch.is_tensor(weights["model"]["classifier.weight"])
        epoch = weights["epoch"]
        assert weights["val_accuracy"] == train["epochs"][epoch - 1]["val_accuracy"], name
    assert torch.load(os.path.join(run, "best.pth"), weights_only=True)["epoch"] == train["best_epoch"]
    assert os.path.getsize(os.path.join(run, "best.pth")) < 0.5 * os.path.getsize(os.path.join(run, "last.pth"))


def test_smoke_honours_explicit_epochs_and_batch_size(smoke_data, tmp_path):
    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--epochs", "3", "--batch-size", "20",
                        "--data-dir", smoke_data, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = glob.glob(str(tmp_path / "cifar_10" / "*"))
    config = json.load(open(os.path.join(run, "config.json")))["config"]
    assert (config["epochs"], config["batch_size"]) == (3, 20)
    assert len(json.load(open(os.path.join(run, "train.json")))["epochs"]) == 3
    assert {"epoch-1.pth", "epoch-2.pth", "epoch-3.pth"} <= set(os.listdir(run))  # smoke writes every file


def test_a_script_run_from_another_folder_uses_the_repos_data_and_output(tmp_path):
    out_root = os.path.join(REPO, "ex_1_smoke", "cifar_10")
    before = set(os.listdir(out_root)) if os.path.isdir(out_root) else set()
    result = subprocess.run([sys.executable, os.path.join(REPO, "ex_1.py"), "--smoke", "--dataset", "cifar10",
                             "--epochs", "1", "--save-every", "0"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    new = set(os.listdir(out_root)) - before
    try:
        assert len(new) == 1 and os.listdir(tmp_path) == []  # nothing written where the user stands
        config = json.load(open(os.path.join(out_root, new.pop(), "config.json")))
        assert config["data"]["folder"] == os.path.join(REPO, "data", "synthetic", "small", "cifar-10-batches-py")
    finally:
        for stamp in set(os.listdir(out_root)) - before:
            shutil.rmtree(os.path.join(out_root, stamp))


def test_compare_runs_from_any_folder(ex1_smoke_runs, tmp_path):
    out, _ = ex1_smoke_runs
    result = subprocess.run([sys.executable, os.path.join(REPO, "common", "compare"), str(out),
                             "--figure", str(tmp_path / "f.png")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| ex" in result.stdout and (tmp_path / "f.png").exists()


@pytest.fixture(scope="module")
def tensorboard_run(smoke_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    result = run_script("ex_1.py", "--smoke", "--dataset", "cifar10", "--tensorboard", "--save-every", "0",
                        "--data-dir", smoke_data, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return glob.glob(str(out / "cifar_10" / "*"))[0]


def test_tensorboard_tags_are_grouped_and_hparams_hold_recipe_and_test_metrics(tensorboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(tensorboard_run, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "throughput/images_per_s"} <= scalars
    history = json.load(open(os.path.join(tensorboard_run, "train.json")))["epochs"]
    assert [e.value for e in events.Scalars("accuracy/val")] == pytest.approx([h["val_accuracy"] for h in history])
    plugin = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model"].string_value == "tutorial_cnn" and session.hparams["epochs"].number_value == 2
    test = json.load(open(os.path.join(tensorboard_run, "test.json")))
    assert events.Scalars("hparams/test_accuracy")[0].value == pytest.approx(test["accuracy"])


def test_llm_prompt_lists_every_flag_as_declared_and_names_every_run_folder_file(ex1_smoke_runs, tensorboard_run):
    from common.cli import FLAGS_END, FLAGS_START, flags_markdown

    prompt = open(os.path.join(REPO, "llm_prompt.md")).read()
    block = prompt[prompt.index(FLAGS_START) + len(FLAGS_START) + 1:prompt.index(FLAGS_END)]
    assert block == flags_markdown(), "regenerate it: python -m common.cli llm_prompt.md"
    help_text = run_script("ex_1.py", "--help", timeout=60).stdout
    help_flags = {f for pair in re.findall(r"^  (--[a-z][a-z-]+)(?:, (--[a-z][a-z-]+))?", help_text, re.M)
                  for f in pair if f} - {"--help"}
    assert help_flags and all(f"`{flag}`" in block for flag in help_flags)
    out, _ = ex1_smoke_runs
    files = set(os.listdir(glob.glob(str(out / "cifar_10" / "*"))[0])) | set(os.listdir(tensorboard_run))
    names = {re.sub(r"epoch-\d+\.pth", "epoch-N.pth", f) for f in files}
    names = {"events.out.tfevents.*" if f.startswith("events.out.tfevents") else f for f in names}
    missing_files = sorted(f for f in names if f not in prompt)
    assert not missing_files
    assert "README.md" in prompt


COMMON = os.path.join(REPO, "common")
ROOMS = ("plans", "compare")  # what grew around the single run, each in a package of its own


def common_modules() -> dict:
    """{dotted name: path} of every module in common/, packages' __init__ and __main__ included."""
    paths = glob.glob(os.path.join(COMMON, "**", "*.py"), recursive=True)
    return {"common." + os.path.relpath(p, COMMON)[:-3].replace(os.sep, ".").removesuffix(".__init__"): p
            for p in paths if os.path.basename(p) != "__init__.py" or os.path.dirname(p) != COMMON}


def imports_of(path: str, modules: dict) -> set:
    """The common modules a file imports (`from common.compare import stats` names common.compare.stats)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        assert not any(n.startswith("ex_") for n in names), (path, names)  # common/ never imports a script
        found |= {n for n in names if n in modules}
    return found


def room(module: str) -> str:
    """'plans', 'compare', or 'top' (the single run and the ground it stands on)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "top"


def test_imports_follow_three_rules_and_point_one_way():
    """1. Nothing at the top level imports plans or compare, except launch (the command line), which
    imports plans. 2. compare never imports plans, nor plans compare. 3. No cycles."""
    modules = common_modules()
    graph = {m: imports_of(p, modules) - {m} for m, p in modules.items()}
    for module, targets in graph.items():
        for target in targets:
            if room(module) == "top" and room(target) != "top":
                assert (module, room(target)) == ("common.launch", "plans"), f"{module} imports {target}"
            assert {room(module), room(target)} != {"plans", "compare"}, f"{module} imports {target}"
    done, visiting = set(), []

    def visit(m):
        assert m not in visiting, " -> ".join(visiting[visiting.index(m):] + [m])
        if m not in done:
            visiting.append(m)
            for t in graph[m]:
                if t != m.rsplit(".", 1)[0]:  # a package's module may name its own package
                    visit(t)
            visiting.pop()
            done.add(m)

    for m in graph:
        visit(m)


def test_design_md_describes_every_module():
    text = open(os.path.join(REPO, "docs", "design.md")).read()
    missing = [m for m in common_modules() if f"`{m.removeprefix('common.')}`" not in text]
    assert not missing


def test_no_function_outside_the_tests_is_longer_than_60_lines():
    paths = list(common_modules().values()) + glob.glob(os.path.join(REPO, "benchmarks", "*.py")) + \
        glob.glob(os.path.join(REPO, "ex_*.py"))
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{os.path.basename(path)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long


def test_library_functions_are_not_named_like_tests():
    """pytest would collect a common.* function called test_* wherever a test imports it."""
    for path in common_modules().values():
        names = [n.name for n in ast.walk(ast.parse(open(path).read())) if isinstance(n, ast.FunctionDef)]
        assert not [n for n in names if n.startswith("test")], path


def test_a_plan_shows_overall_eta_then_the_compare_command_and_dry_run_estimates_from_its_epochs(smoke_data,
                                                                                                 tmp_path):
    from common.plans.estimate import measured_runs
    from tests.conftest import _quick

    out = tmp_path / "out"
    result = run_script("ex_1.py", *_quick(smoke_data, out, "--epochs", "2", "--seeds", "0,1", "--name", "p"))
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = [line for line in result.stdout.splitlines() if " epoch " in line and "ETA" in line][:4:2]
    assert "seed 0 epoch   1/2" in first and "all 2 runs about" in first  # the run's ETA, then the plan's
    assert "seed 1 epoch   1/2" in second and "all" not in second  # the last run: its own ETA alone
    assert result.stdout.rstrip().splitlines()[-1] == f"compare them: python -m common.compare {out / 'sweeps' / 'p'}"

    planned = run_script("ex_1.py", *_quick(smoke_data, out, "--epochs", "3", "--seeds", "0,1", "--name", "q",
                                            "--dry-run"))
    assert planned.returncode == 0, planned.stderr
    found = json.loads(planned.stdout)["estimate"]
    (matches,) = measured_runs([str(out)]).values()  # both seeds' runs: one recipe, one machine
    per_image = sorted(spi for spi, _, _ in matches)
    expected = 2 * 3 * matches[0][1] * (per_image[0] + per_image[1]) / 2  # 2 members x 3 epochs, the median
    assert found["members_estimated"] == 2 and found["seconds"] == pytest.approx(expected)
    assert "estimated time: about" in planned.stderr
    elsewhere = run_script("ex_1.py", *_quick(smoke_data, tmp_path / "new", "--model", "three_block_cnn", "--dry-run"))
    assert json.loads(elsewhere.stdout)["estimate"]["seconds"] is None
    assert "not known yet" in elsewhere.stderr


def test_the_overview_lists_plans_and_runs_and_ends_quietly_in_a_closed_pipe(smoke_data, ex1_smoke_runs, tmp_path):
    out, _ = ex1_smoke_runs
    listed = run_python(["-m", "common.plans", str(out)], timeout=120)
    assert listed.returncode == 0, listed.stderr
    runs = [line for line in listed.stdout.splitlines() if line.startswith("  completed")]
    assert runs and all(re.search(r"test [01]\.\d{4} +train \d+m\d\ds +\S*cifar_10", line) for line in runs), listed.stdout
    (run,) = (out / "cifar_10").iterdir()
    for i in range(1000):  # more lines than a pipe holds: the listing is still writing when head exits
        copy = tmp_path / "many" / f"run_{i:04d}"
        copy.mkdir(parents=True)
        for name in ("config.json", "train.json", "test.json"):
            shutil.copy(run / name, copy / name)
    piped = subprocess.run(f"{sys.executable} -m common.plans {tmp_path / 'many'} | head -1", shell=True, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr and "Error" not in piped.stderr, piped.stderr
    assert len(piped.stdout.splitlines()) == 1
