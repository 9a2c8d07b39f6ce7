import os
import pickle

import numpy as np
import pytest
import torch

from common.data import SPECS, load_cifar, make_synthetic, safe_unpickle, stratified_split
from common.errors import UserError
from tests.conftest import closed_port, run_script


def test_split_is_disjoint_stratified_and_seeded():
    labels = torch.arange(10).repeat_interleave(5000)  # CIFAR-10's 50,000 training labels
    train, val = stratified_split(labels, 0.1, seed=0)
    assert len(train) == 45_000 and len(val) == 5_000
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert sorted(train.tolist() + val.tolist()) == list(range(50_000))
    assert torch.bincount(labels[val]).tolist() == [500] * 10
    again, _ = stratified_split(labels, 0.1, seed=0)
    other, _ = stratified_split(labels, 0.1, seed=1)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_split_of_cifar100_keeps_50_per_class():
    labels = torch.arange(100).repeat_interleave(500)
    _, val = stratified_split(labels, 0.1, seed=0)
    assert torch.bincount(labels[val]).tolist() == [50] * 100


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_synthetic_data_reads_in_official_layout(tmp_path, name):
    spec = SPECS[name]
    make_synthetic(spec, str(tmp_path), 3, 1)
    assert sorted(os.listdir(tmp_path / spec.folder)) == sorted(spec.train_files + spec.test_files + (spec.meta_file,))
    data = load_cifar(spec, str(tmp_path), download=False)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (3 * spec.num_classes, 3, 32, 32)
    assert data.test_y.shape == (spec.num_classes,)
    assert len(data.classes) == spec.num_classes
    assert torch.bincount(data.train_y).tolist() == [3] * spec.num_classes


def test_official_python2_style_pickle_is_read(tmp_path):
    """The real archive was pickled by Python 2: byte-string keys and labels as a list."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in SPECS["cifar10"].train_files + ("test_batch",):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8),
                         b"labels": list(range(10)), b"batch_label": b"x"}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f, protocol=2)
    data = load_cifar(SPECS["cifar10"], str(tmp_path), download=False)
    assert data.train_x.shape == (50, 3, 32, 32) and data.classes[3] == "c3"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cifar_exploit_marker",))


def test_crafted_pickle_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"data": _Exploit(), "labels": []}, f)
    with pytest.raises(UserError, match="refused to load posix.system|refused to load os.system"):
        safe_unpickle(str(path))
    assert not os.path.exists("/tmp/cifar_exploit_marker")




def test_offline_download_fails_with_one_clear_line(tmp_path):
    mirror = f"http://127.0.0.1:{closed_port()}/"
    result = run_script("ex_1.py", "--dataset", "cifar10", "--epochs", "1", "--data-dir", str(tmp_path / "d"),
                        "--out", str(tmp_path / "o"), env={"CIFAR_MIRROR": mirror}, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert mirror + "cifar-10-python.tar.gz" in error_lines[0]
    assert "CIFAR_MIRROR" in error_lines[0] and "--smoke" in error_lines[0] and "unpack" in error_lines[0]
    assert str(tmp_path / "d" / "cifar-10-batches-py") in error_lines[0]
    assert not os.path.exists(tmp_path / "d" / "cifar-10-python.tar.gz")


def test_a_plan_stopped_offline_before_any_training_leaves_no_plan_folder(tmp_path):
    mirror = f"http://127.0.0.1:{closed_port()}/"
    result = run_script("ex_1.py", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
                        env={"CIFAR_MIRROR": mirror}, timeout=120)  # both datasets: a plan of two members
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "plan" in result.stdout  # it was a plan, announced before the download failed
    leftovers = [os.path.join(folder, name) for folder, _, names in os.walk(tmp_path / "o") for name in names]
    assert leftovers == []
    assert not os.path.exists(tmp_path / "o") or os.listdir(tmp_path / "o") == []  # no empty folders either


def test_wrong_md5_archive_is_not_kept(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cifar-10-python.tar.gz").write_bytes(b"not the real archive")
    monkeypatch.setenv("CIFAR_MIRROR", str(mirror))  # a plain folder works as a mirror
    with pytest.raises(UserError, match="md5"):
        load_cifar(SPECS["cifar10"], str(tmp_path / "d"))
    assert os.listdir(tmp_path / "d") == []  # no archive, no temp file, no dataset folder


@pytest.mark.parametrize("damage,message", [
    ("truncate", "cannot read"),
    ("shape", "must be uint8 of shape"),
    ("labels", "labels must lie in"),
])
def test_damaged_data_files_give_clear_errors(tmp_path, damage, message):
    spec = SPECS["cifar10"]
    root = make_synthetic(spec, str(tmp_path), 3, 1)
    path = os.path.join(root, "data_batch_2")
    if damage == "truncate":
        blob = open(path, "rb").read()
        open(path, "wb").write(blob[: len(blob) // 2])
    else:
        batch = safe_unpickle(path)
        if damage == "shape":
            batch["data"] = batch["data"][:, :100]
        else:
            batch["labels"] = [12] * len(batch["labels"])
        with open(path, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with pytest.raises(UserError, match=message) as info:
        load_cifar(spec, str(tmp_path), download=False)
    assert "data_batch_2" in str(info.value)


def test_cifar100_reads_fine_labels_and_ignores_the_coarse_ones(tmp_path):
    from common.data import safe_unpickle

    root = make_synthetic(SPECS["cifar100"], str(tmp_path), 3, 1)
    raw = safe_unpickle(os.path.join(root, "train"))
    assert set(raw["coarse_labels"]) == set(range(20)) and set(raw["fine_labels"]) == set(range(100))
    data = load_cifar(SPECS["cifar100"], str(tmp_path), download=False)
    assert data.train_y.tolist() == list(raw["fine_labels"])
    assert len(data.classes) == 100 and data.classes[0] == "class_000"


def test_the_unpacked_official_folders_work_offline_with_data_dir(smoke_data, tmp_path):
    """The offline route without the archive: --data-dir the folder holding cifar-10-batches-py/ and
    cifar-100-python/, or one of them itself (the other is looked for beside it). Nothing is downloaded."""
    import json
    import shutil

    data = tmp_path / "cifar"
    for spec in SPECS.values():
        shutil.copytree(os.path.join(smoke_data, "synthetic", "tiny", spec.folder), data / spec.folder)
    env = {"CIFAR_MIRROR": f"http://127.0.0.1:{closed_port()}/"}  # a download attempt would fail
    planned = run_script("ex_1.py", "--data-dir", str(data), "--dry-run", env=env, timeout=120)
    assert planned.returncode == 0 and json.loads(planned.stdout)["options"]["data_dir"] == str(data)
    out = tmp_path / "o"
    result = run_script("ex_1.py", "--epochs", "1", "--batch-size", "8", "--data-dir", str(data / "cifar-10-batches-py"),
                        "--out", str(out), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "downloading" not in result.stdout
    for folder, spec in (("cifar_10", SPECS["cifar10"]), ("cifar_100", SPECS["cifar100"])):
        (stamp,) = os.listdir(out / folder)
        config = json.load(open(out / folder / stamp / "config.json"))
        assert config["data"]["folder"] == str(data / spec.folder)
        assert not config["data"]["synthetic"]
    assert sorted(os.listdir(data)) == ["cifar-10-batches-py", "cifar-100-python"]  # no archive fetched
