"""CIFAR-10/100 from the official python layout into uint8 tensors, plus the train/val split.

Why not torchvision.datasets.CIFAR10: it decodes nothing but still hands out one PIL image
at a time, which is what made the report's pipeline slow. Here a dataset is one uint8 tensor
(N, 3, 32, 32) and its labels (N,) int64; batches are cut from it on the training device.

Safety: the official files are pickles. They are read with an unpickler that only builds
dicts, lists, strings, numbers and numpy arrays, so a crafted data file cannot run code.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import tarfile
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import UserError, first_line, os_reason
from common.files import atomic_folder

OFFICIAL_BASE_URL = "https://www.cs.toronto.edu/~kriz/"
MIRROR_ENV = "CIFAR_MIRROR"  # optional base that replaces OFFICIAL_BASE_URL: http(s)://, file:// or a folder


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str          # what the archive unpacks to, under --data-dir
    archive: str
    md5: str             # of the archive (the batch files themselves are not checked)
    size: int            # bytes of the official archive: a download is cut off beyond it
    train_files: tuple
    test_files: tuple
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int

    def url(self) -> str:
        base = os.environ.get(MIRROR_ENV) or OFFICIAL_BASE_URL
        if "://" not in base:  # a plain folder holding the archives
            base = urllib.parse.urljoin("file:", urllib.request.pathname2url(os.path.abspath(base)))
        return base.rstrip("/") + "/" + self.archive


SPECS = {
    "cifar10": DatasetSpec("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                           "c58f30108f718f92721af3b95e74349a", 170_498_071,
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "labels", "batches.meta", "label_names", 10),
    "cifar100": DatasetSpec("cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
                            "eb9058c3a382ffc7106e4002c42a8d85", 169_001_437,
                            ("train",), ("test",), "fine_labels", "meta", "fine_label_names", 100),
}


@dataclass
class CifarData:
    train_x: torch.Tensor   # (N, 3, 32, 32) uint8
    train_y: torch.Tensor   # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list


# --- reading ---------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    ("__builtin__", "bytes"), ("builtins", "bytes"),  # ... and empty bytes (an empty array's buffer)
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of the CIFAR format")


def _check_declared_sizes(raw: bytes, path: str) -> None:
    """Walk the pickle's opcodes without building anything: a length it declares beyond the file's
    end (a 4 MB file asking for 23 GiB) is refused before the unpickler allocates it."""
    try:
        for _ in pickletools.genops(raw):  # a ValueError on a length past the end of `raw`
            pass
    except Exception as e:  # noqa: BLE001  (any malformed opcode stream)
        raise UserError(f"cannot read {path}: it declares more bytes than it holds, or is not a pickle "
                        f"({first_line(e, 120)}); delete its folder to download it again") from None


def safe_unpickle(path: str) -> dict:
    """Read one CIFAR batch file; any failure becomes a UserError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"missing data file {path}; delete its folder to download it again") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {os_reason(e)}") from None
    _check_declared_sizes(raw, path)
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"missing data file {path}; delete its folder to download it again") from None
    except Exception as e:  # truncated, corrupt, or a refused global
        raise UserError(f"cannot read {path}: {e} (delete the folder to download it again)") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR batch file (expected a dict, found {type(obj).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_split(root: str, files: tuple, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        path = os.path.join(root, name)
        batch = safe_unpickle(path)
        if "data" not in batch or spec.label_key not in batch:
            raise UserError(f"{path} lacks 'data' or '{spec.label_key}'")
        data = np.asarray(batch["data"])
        y = np.asarray(batch[spec.label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise UserError(f"{path}: 'data' must be uint8 of shape (N, 3072), found {data.dtype} {data.shape}")
        if y.shape != (data.shape[0],) or (y.size and not np.issubdtype(y.dtype, np.integer)):
            raise UserError(f"{path}: expected {data.shape[0]} integer labels, found {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
            raise UserError(f"{path}: labels must lie in [0, {spec.num_classes - 1}], "
                            f"found {int(y.min())}..{int(y.max())}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y.astype(np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(spec: DatasetSpec, data_dir: str, download: bool = True) -> CifarData:
    """The dataset as tensors; downloads and unpacks the official archive once if it is missing."""
    root = os.path.join(data_dir, spec.folder)
    if not os.path.isdir(root):
        if not download:
            raise UserError(f"{root} does not exist")
        try:
            os.makedirs(data_dir, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create data folder {data_dir}: {os_reason(e)}") from None
        download_archive(spec, data_dir)
    train_x, train_y = _read_split(root, spec.train_files, spec)
    test_x, test_y = _read_split(root, spec.test_files, spec)
    for split, labels in (("training", train_y), ("test", test_y)):
        if len(labels) == 0:
            raise UserError(f"{root} holds no {split} images; delete the folder to download it again")
    return CifarData(train_x, train_y, test_x, test_y, _class_names(root, spec))


def _class_names(root: str, spec: DatasetSpec) -> list:
    path = os.path.join(root, spec.meta_file)
    names = safe_unpickle(path).get(spec.names_key)
    if not (isinstance(names, (list, tuple)) and all(isinstance(c, (str, bytes)) for c in names)):
        raise UserError(f"{path}: '{spec.names_key}' must be a list of {spec.num_classes} class names; delete the "
                        f"folder to download it again")
    if len(names) != spec.num_classes:
        raise UserError(f"{path}: expected {spec.num_classes} class names under '{spec.names_key}', "
                        f"found {len(names)}")
    return [c.decode("latin1") if isinstance(c, bytes) else c for c in names]


def fingerprint(spec: DatasetSpec, data_dir: str) -> str:
    """sha256 of the test file: tells the official archive, the JPEG copy and synthetic data apart."""
    return file_digest(os.path.join(data_dir, spec.folder, spec.test_files[0]), "sha256")


def file_digest(path: str, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_archive(spec: DatasetSpec, data_dir: str) -> None:
    """Download (or take from CIFAR_MIRROR), md5-check and unpack the official archive.

    The archive is unpacked under a temporary name and renamed into place when complete
    (common.files), so a failure leaves no partial dataset folder; members that would land
    outside it (absolute paths, '..', links out) are refused by tarfile's 'data' filter.
    """
    from common.download import fetch

    url = spec.url()
    archive = os.path.join(data_dir, spec.archive)
    if not (os.path.isfile(archive) and file_digest(archive, "md5") == spec.md5):
        print(f"{spec.name} is not in {os.path.abspath(data_dir)}: downloading {url}", flush=True)
        try:
            fetch(url, archive, "md5", spec.md5, what=f"{spec.name} archive", max_bytes=spec.size)
        except UserError as e:
            raise UserError(f"{e}. {spec.name} is not in {os.path.abspath(os.path.join(data_dir, spec.folder))}; "
                            f"ways out: copy {spec.archive} into a folder and give --data-dir FOLDER (it is "
                            f"md5-checked and unpacked there), or give --data-dir the unpacked {spec.folder}/ "
                            f"(or the folder holding it), set {MIRROR_ENV} to a folder or URL that holds the "
                            f"archive, or try the script offline with --smoke") from None
    _unpack(archive, data_dir, spec)


def _unpack(archive: str, data_dir: str, spec: DatasetSpec) -> None:
    """The archive's `spec.folder/` becomes data_dir/spec.folder, in one rename."""
    def fill(folder: str) -> None:
        try:
            with tarfile.open(archive) as tar:
                members = []
                for member in tar.getmembers():
                    member = tarfile.data_filter(member, folder)  # refuses members that would escape
                    head, _, rest = member.name.partition("/")
                    if head == spec.folder and rest:
                        members.append(member.replace(name=rest, deep=False))
                if not members:
                    raise UserError(f"{archive} holds no {spec.folder}/ folder; delete it and try again")
                tar.extractall(folder, members=members, filter="data")
        except tarfile.FilterError as e:
            raise UserError(f"{archive} was refused: {e} (a member would land outside {data_dir}); "
                            f"delete it") from None
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise UserError(f"cannot unpack {archive}: {first_line(e)}; delete it and try again") from None

    atomic_folder(os.path.join(data_dir, spec.folder), fill, what=f"the unpacked {spec.archive}")


# --- the split ---------------------------------------------------------------------------

def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint train/val indices with the class proportions kept (45,000 / 5,000 for CIFAR).

    Every class gets at least one validation image, so tiny (smoke) sets still split.
    """
    from sklearn.model_selection import train_test_split

    y = labels.numpy()
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise UserError(f"class {int(classes[counts.argmin()])} has only {int(counts.min())} training image; the "
                        f"stratified validation split needs at least 2 per class")
    n_classes = len(classes)
    n_val = max(n_classes, int(round(val_fraction * len(y))))
    train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=seed)
    return torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))


def stratified_subset(indices: torch.Tensor, labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """`size` of `indices` with the class proportions of labels[indices] kept (sorted)."""
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(labels[indices].numpy()))
    if not classes <= size <= len(indices):
        raise UserError(f"--train-subset {size} must lie between the {classes} classes and the {len(indices):,}-image "
                        f"training split")
    if size == len(indices):
        return indices
    kept, _ = train_test_split(indices.numpy(), train_size=size, stratify=labels[indices].numpy(), random_state=seed)
    return torch.from_numpy(np.sort(kept))


# --- synthetic data in the official formats ----------------------------------------------

def make_synthetic(spec: DatasetSpec, data_dir: str, train_per_class: int, test_per_class: int,
                   seed: int = 0) -> str:
    """Write a small dataset in the exact on-disk layout of the official archive.

    Each class has its own colour and a stripe pattern, plus noise, so a model can learn
    it in a few steps; used by --smoke and the tests. Returns the dataset folder.
    """
    root = os.path.join(data_dir, spec.folder)
    if os.path.isdir(root):
        return root
    rng = np.random.default_rng(seed)
    k = spec.num_classes
    colours = rng.integers(40, 216, size=(k, 3, 1, 1))
    freqs = 1 + np.arange(k) % 7
    angle = (np.arange(k) * 2 * np.pi / k)

    def images(per_class):
        labels = np.repeat(np.arange(k), per_class)
        rng.shuffle(labels)
        yy, xx = np.mgrid[0:32, 0:32] / 32.0
        out = np.empty((len(labels), 3, 32, 32), np.float64)
        for i, c in enumerate(labels):
            stripes = np.sin(2 * np.pi * freqs[c] * (np.cos(angle[c]) * xx + np.sin(angle[c]) * yy))
            out[i] = colours[c] + 30 * stripes[None] + rng.normal(0, 20, (3, 32, 32))
        return np.clip(out, 0, 255).astype(np.uint8).reshape(len(labels), -1), labels.tolist()

    names = [f"class_{c:03d}" for c in range(k)]
    train_data, train_labels = images(train_per_class)
    test_data, test_labels = images(test_per_class)
    # parallel runs may race to write it: the first rename wins, the copies are identical
    atomic_folder(root, lambda folder: _write_official_layout(folder, spec, names, train_data, train_labels,
                                                              test_data, test_labels), what="synthetic data")
    return root


def _write_official_layout(folder: str, spec: DatasetSpec, names: list, train_data, train_labels, test_data,
                           test_labels) -> None:
    """The pickled batch files of the official archive, protocol 2 as the originals."""
    def dump(name, obj):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(obj, f, protocol=2)

    if spec.name == "cifar10":
        chunks = np.array_split(np.arange(len(train_labels)), len(spec.train_files))
        for fname, idx in zip(spec.train_files, chunks):
            dump(fname, {"batch_label": fname, "data": train_data[idx],
                         "labels": [train_labels[i] for i in idx]})
        dump("test_batch", {"batch_label": "test", "data": test_data, "labels": test_labels})
        dump("batches.meta", {"label_names": names, "num_cases_per_batch": len(train_labels), "num_vis": 3072})
    else:
        coarse = lambda ys: [y // 5 for y in ys]  # noqa: E731 - 20 super-classes of 5, like the real set
        dump("train", {"batch_label": "train", "data": train_data, "fine_labels": train_labels,
                       "coarse_labels": coarse(train_labels)})
        dump("test", {"batch_label": "test", "data": test_data, "fine_labels": test_labels,
                      "coarse_labels": coarse(test_labels)})
        dump("meta", {"fine_label_names": names, "coarse_label_names": [f"super_{c:02d}" for c in range(20)]})
