"""One declaration per knob: a field added to Recipe reaches every place with no other edit;
registries by name; the library entry point; older config.json files."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ARGS, REPO, only_run, popen_python, run_metrics, run_python, run_script

# A program that adds one field to Recipe before anything else imports it, then runs ex_1.py
# exactly as `python ex_1.py ARGS` would: what a developer's one-line declaration does.
_WITH_A_NEW_FIELD = textwrap.dedent("""
    import dataclasses, runpy, sys
    sys.path.insert(0, {repo!r})
    from common import config
    config.Recipe = dataclasses.make_dataclass("Recipe", [("label_smoothing", float, config.knob(
        0.0, "label smoothing of the training targets", config.number(float, 0, 1), "share",
        "label smoothing {{value:g}}"))], bases=(config.Recipe,), frozen=True)
    sys.argv = [{script!r}] + sys.argv[1:]
    runpy.run_path({script!r}, run_name="__main__")
""")


def _run_with_new_field(*args, timeout=300):
    program = _WITH_A_NEW_FIELD.format(repo=REPO, script=os.path.join(REPO, "ex_1.py"))
    return run_python(["-c", program, *args], timeout=timeout)


def test_a_field_added_to_recipe_reaches_help_config_json_header_compare_key_and_hparams(smoke_data, tmp_path):
    help_text = " ".join(_run_with_new_field("--help").stdout.split())
    assert "--label-smoothing" in help_text and "label smoothing of the training targets [share]" in help_text
    out = tmp_path / "out"
    result = _run_with_new_field("--smoke", "--dataset", "cifar10", "--epochs", "1", "--label-smoothing", "0.1",
                                 "--tensorboard", "--data-dir", smoke_data, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "label smoothing 0.1" in result.stdout  # the header line
    run_dir = only_run(str(out))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["config"]["label_smoothing"] == 0.1 and config["recipe"]["label_smoothing"] == 0.0
    check = run_python(["-c", textwrap.dedent(f"""
        import dataclasses, sys
        sys.path.insert(0, {REPO!r})
        from common import config
        config.Recipe = dataclasses.make_dataclass("Recipe", [("label_smoothing", float, config.knob(
            0.0, "x", config.number(float, 0, 1)))], bases=(config.Recipe,), frozen=True)
        from common.runfolder import describe_changes, recipe_changes
        from common.compare.runs import collect
        assert "label_smoothing" in config.recipe_key_fields()
        (run,) = collect([{str(out)!r}])
        assert recipe_changes(run.record) == {{"epochs": 1, "batch_size": 32, "label_smoothing": 0.1}}
        print(describe_changes(run.record, recipe_changes(run.record)))
    """)], timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    assert "label smoothing 0.1" in check.stdout  # compare's row says how it differs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(run_dir, size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["label_smoothing"].number_value == pytest.approx(0.1)


def test_an_older_config_json_without_a_field_resumes_with_its_default(uninterrupted, smoke_data, tmp_path):
    out = str(tmp_path)
    proc = popen_python([os.path.join(REPO, "ex_1.py"), *ARGS, "--data-dir", smoke_data, "--out", out],
                        stderr=subprocess.DEVNULL)
    for line in proc.stdout:
        if "epoch   1/3" in line:
            break
    proc.kill()
    proc.wait(timeout=30)
    run_dir = only_run(out)
    record = json.load(open(os.path.join(run_dir, "config.json")))
    for name in ("step_gamma", "plateau_patience", "eval_batch_size"):  # as a version before these fields wrote it
        del record["config"][name]
        record["recipe"].pop(name, None)
    json.dump(record, open(os.path.join(run_dir, "config.json"), "w"))
    result = run_script("ex_1.py", "--resume", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lacks step_gamma, plateau_patience, eval_batch_size" in result.stdout
    assert "read with their defaults" in result.stdout
    assert run_metrics(run_dir) == uninterrupted


def test_the_issues_ablation_command_runs_and_records_its_four_changes(smoke_data, tmp_path):
    out = tmp_path / "ex_1"
    result = run_script("ex_1.py", "--smoke", "--model", "three_block_cnn", "--optimizer", "sgd", "--augment",
                        "crop_flip", "--image-size", "64", "--dataset", "cifar10", "--data-dir", smoke_data,
                        "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.load(open(os.path.join(only_run(str(out)), "config.json")))["config"]
    assert (config["model"], config["optimizer"], config["augment"], config["image_size"]) == \
        ("three_block_cnn", "sgd", "crop_flip", 64)
    listing = run_python(["-m", "common.compare", str(out), "--figure", str(tmp_path / "f.png")], timeout=120)
    (row,) = [line for line in listing.stdout.splitlines() if line.startswith("| ex_1 |")]
    for words in ("model three_block_cnn", "optimizer sgd", "image size 64", "augment crop_flip"):
        assert words in row, (words, row)


def test_resnet18_and_cutout_train_a_smoke_run_by_name(smoke_data, tmp_path):
    result = run_script("ex_1.py", "--smoke", "--model", "resnet18", "--augment", "crop_flip_cutout", "--dataset",
                        "cifar10", "--epochs", "1", "--data-dir", smoke_data, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resnet18 (11,173,962 parameters)" in result.stdout and "augmentation crop_flip_cutout" in result.stdout
    test = json.load(open(os.path.join(only_run(str(tmp_path)), "test.json")))
    assert 0 <= test["accuracy"] <= 1 and test["num_images"] == 50  # the "tiny" smoke set of its model entry


_RUN_TWICE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from common.config import Options, Recipe, resolved_recipe
    from common.experiment import run
    recipe = resolved_recipe(Recipe(epochs=1, batch_size=32))
    options = Options(smoke=True, data_dir={data!r}, out={out!r}, save_every=0)
    folders = [run("ex_lib", recipe, options, name) for name in ("cifar10", "cifar100")]
    print(json.dumps(folders))
""")


def test_run_is_a_library_function_called_twice_in_one_process(smoke_data, tmp_path):
    data = os.path.join(smoke_data, "synthetic")
    result = run_python(["-c", _RUN_TWICE.format(repo=REPO, data=data, out=str(tmp_path))], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    folders = json.loads(result.stdout.strip().splitlines()[-1])
    assert [os.path.basename(os.path.dirname(f)) for f in folders] == ["cifar_10", "cifar_100"]
    for folder, classes in zip(folders, (10, 100)):
        test = json.load(open(os.path.join(folder, "test.json")))
        assert test["experiment"] == "ex_lib" and len(test["per_class"]) == classes
        assert json.load(open(os.path.join(folder, "train.json")))["status"] == "completed"


# A schedule added to the registry before the scripts import it: what one entry in common/schedules.py does.
_WITH_A_NEW_SCHEDULE = textwrap.dedent("""
    import runpy, sys
    sys.path.insert(0, {repo!r})
    from common import schedules
    schedules.SCHEDULES["linear_decay"] = schedules.ScheduleEntry(lambda t, recipe: 1 - t, per_batch=False,
                                                                  allows_warmup=True)
    schedules.SCHEDULES["exp_range"] = schedules.ScheduleEntry(lambda t, recipe: 0.9 ** t, per_batch=True,
                                                               allows_warmup=False)
    sys.argv = [{script!r}] + sys.argv[1:]
    runpy.run_path({script!r}, run_name="__main__")
""")


def test_a_schedule_added_to_the_registry_reaches_the_choices_and_warmups_help_and_error():
    program = _WITH_A_NEW_SCHEDULE.format(repo=REPO, script=os.path.join(REPO, "ex_1.py"))

    def run(*args):
        return run_python(["-c", program, *args], timeout=120)
    help_text = " ".join(run("--help").stdout.split())
    assert "linear_decay" in help_text and "exp_range" in help_text  # --scheduler's choices
    assert "before the schedule (none, cosine, step, linear_decay)" in help_text  # only those that allow warm-up
    refused = run("--scheduler", "exp_range", "--warmup-epochs", "2", "--dry-run")
    assert refused.returncode == 2
    assert "--warmup-epochs is for --scheduler none, cosine, step or linear_decay only" in refused.stderr
    accepted = run("--scheduler", "linear_decay", "--warmup-epochs", "2", "--dry-run")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["recipe"]["warmup_epochs"] == 2


def test_registries_are_the_flags_choices():
    from common.augment import AUGMENTATIONS
    from common.config import Recipe, knobs
    from common.models import MODELS
    from common.optimizers import OPTIMIZERS
    from common.schedules import SCHEDULES

    for name, registry in (("model", MODELS), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULES),
                           ("augment", AUGMENTATIONS)):
        assert knobs(Recipe)[name][0].rule.options == tuple(registry)
    assert {"resnet18", "efficientnet_v2_s"} <= set(MODELS) and "crop_flip_cutout" in AUGMENTATIONS


def test_the_experiment_name_is_the_scripts_file_name(smoke_data, tmp_path):
    copy = tmp_path / "my_ablation.py"
    shutil.copy(os.path.join(REPO, "ex_1.py"), copy)
    result = subprocess.run([sys.executable, str(copy), "--dry-run"], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["experiment"] == "my_ablation" and plan["options"]["out"].endswith("my_ablation")
    assert os.listdir(tmp_path) == ["my_ablation.py"]  # --dry-run writes nothing
