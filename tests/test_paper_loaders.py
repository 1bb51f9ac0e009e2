"""Paper-scale loaders on tiny fabricated copies of the official on-disk formats (no network)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl_peft_lib.data.base import DatasetNotFoundError, FileImageDataset, TensorImageDataset
from cl_peft_lib.data.fabricate import write_cifar100
from cl_peft_lib.data.paper import (
    CORE50_TEST_SESSIONS,
    CORE50_TRAIN_SESSIONS,
    PAPER_DATASETS,
    load_cifar100,
    load_core50,
    IMAGENET_R_URL,
    imagenet_r_split,
    load_domainnet,
    load_imagenet_r,
    load_tiny_imagenet,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def _solid(path: Path, colour, size: int = 16, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size), colour)
    (im.convert("L") if mode == "L" else im).save(path)


def _assert_colour(img: torch.Tensor, colour, tol: int = 4) -> None:
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    mean = img.float().mean(dim=(1, 2))
    assert torch.allclose(mean, torch.tensor(colour, dtype=torch.float32), atol=tol), (mean, colour)


def _assert_fix_in(msg: str, path: Path, fn: str, url: str) -> None:
    assert str(path) in msg
    assert f"{fn}(root=" in msg and "download=True" in msg
    assert url in msg and "CL_PEFT_DATA" in msg


# ------------------------------------------------------------------ CIFAR-100


def _make_cifar(root: Path, train_labels, test_labels, seed: int = 0):
    """cifar-100-python/ through the library's writer (:func:`cl_peft_lib.data.fabricate.write_cifar100`), each
    split's first image pure red (the loader must keep the rows channel-planar)."""
    rng = np.random.default_rng(seed)
    images = {}
    for split, labels in (("train", train_labels), ("test", test_labels)):
        x = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
        x[0] = 0
        x[0, 0] = 255  # first image: pure red
        images[split] = x
    return write_cifar100(root, {"train": train_labels, "test": test_labels}, images)


def test_cifar100_reads_official_pickles(tmp_path):
    images = _make_cifar(tmp_path, [3, 99, 0, 42, 7], [5, 1, 98])
    train, test, names = load_cifar100(tmp_path)
    assert isinstance(train, TensorImageDataset) and isinstance(test, TensorImageDataset)
    assert train.images.shape == (5, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.targets.dtype == torch.int64
    assert train.targets.tolist() == [3, 99, 0, 42, 7] and test.targets.tolist() == [5, 1, 98]
    assert torch.equal(train.images, torch.from_numpy(images["train"]))
    assert torch.equal(test.images, torch.from_numpy(images["test"]))
    _assert_colour(train[0][0], (255, 0, 0), tol=0)  # rows are channel-planar: R plane first
    x, y = test[2]
    assert y == 98 and isinstance(y, int)
    assert names == [f"class{k}" for k in range(100)]


def test_cifar100_root_from_env(tmp_path, monkeypatch):
    _make_cifar(tmp_path, [1, 2], [3])
    monkeypatch.setenv("CL_PEFT_DATA", str(tmp_path))
    train, test, _ = load_cifar100()
    assert len(train) == 2 and len(test) == 1


def test_cifar100_missing_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_cifar100(tmp_path / "nowhere")
    _assert_fix_in(str(e.value), tmp_path / "nowhere" / "cifar-100-python" / "train", "load_cifar100",
                   "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")


def test_cifar100_label_out_of_range(tmp_path):
    _make_cifar(tmp_path, [1, 100], [0])
    with pytest.raises(ValueError, match="fine_labels") as e:
        load_cifar100(tmp_path)
    assert str(tmp_path / "cifar-100-python" / "train") in str(e.value)


# -------------------------------------------------------------- Tiny ImageNet

WNIDS = ["n01443537", "n01629819", "n01641577"]
VAL = [("val_0.JPEG", 2), ("val_1.JPEG", 0), ("val_2.JPEG", 1), ("val_3.JPEG", 2)]


def _make_tiny(root: Path, wnids=WNIDS, val=VAL, size: int = 64) -> Path:
    """Write tiny-imagenet-200/ like the release: two train images per class, ``val`` as (file, class) pairs."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    named = {WNIDS[0]: "goldfish, Carassius auratus", WNIDS[1]: "European fire salamander, Salamandra salamandra",
             WNIDS[2]: "bullfrog, Rana catesbeiana"}
    words = ["n00001740\tentity"] + [f"{w}\t{named.get(w, f'thing {w}')}" for w in wnids]
    (base / "words.txt").write_text("\n".join(words) + "\n")
    for k, w in enumerate(wnids):
        for i in range(2):
            # one greyscale image per class, as in the real release
            _solid(base / "train" / w / "images" / f"{w}_{i}.JPEG", COLOURS[k % len(COLOURS)], size,
                   mode="L" if i else "RGB")
        (base / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n{w}_1.JPEG\t0\t0\t63\t63\n")
    lines = []
    for fname, k in val:
        _solid(base / "val" / "images" / fname, COLOURS[k % len(COLOURS)], size)
        lines.append(f"{fname}\t{wnids[k]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("in_memory", [True, False])
def test_tiny_imagenet_layout_and_labels(tmp_path, in_memory):
    _make_tiny(tmp_path)
    train, test, names = load_tiny_imagenet(tmp_path, in_memory=in_memory)
    cls = TensorImageDataset if in_memory else FileImageDataset
    assert isinstance(train, cls) and isinstance(test, cls)
    assert names == ["goldfish", "European fire salamander", "bullfrog"]
    assert train.targets.dtype == torch.int64 and train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.targets.tolist() == [k for _, k in VAL]
    for ds in (train, test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
            if ds is test or i % 2 == 0:  # colour images keep their class colour
                _assert_colour(x, COLOURS[y])
            else:  # greyscale images become 3 equal channels
                assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_tiny_imagenet_unknown_wnid_in_val(tmp_path):
    base = _make_tiny(tmp_path)
    ann = base / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n99999999") as e:
        load_tiny_imagenet(tmp_path, in_memory=False)
    assert f"{ann}:{len(VAL) + 1}" in str(e.value)


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_tiny_imagenet(tmp_path)
    _assert_fix_in(str(e.value), tmp_path / "tiny-imagenet-200" / "wnids.txt", "load_tiny_imagenet",
                   "http://cs231n.stanford.edu/tiny-imagenet-200.zip")


def test_tiny_imagenet_download_uses_official_zip(tmp_path, monkeypatch):
    from cl_peft_lib.data import download as dl

    calls = []

    def fake_download(url, download_root, *a, **kw):
        calls.append(url)
        _make_tiny(Path(download_root))

    monkeypatch.setattr(dl, "fetch_and_extract", fake_download)
    train, _, _ = load_tiny_imagenet(tmp_path, download=True, in_memory=False)
    assert calls == ["http://cs231n.stanford.edu/tiny-imagenet-200.zip"] and len(train) == 6
    load_tiny_imagenet(tmp_path, download=True, in_memory=False)  # present: no second download
    assert len(calls) == 1


# --------------------------------------------------------------------- CORe50

OBJECTS = [1, 2, 10]  # folders o1, o2, o10 -> labels 0, 1, 9


def _make_core50(root: Path) -> Path:
    base = root / "core50_128x128"
    for s in range(1, 12):
        for o in OBJECTS:
            for f in range(2):
                _solid(base / f"s{s}" / f"o{o}" / f"C_{s:02d}_{o:02d}_{f:03d}.png", COLOURS[OBJECTS.index(o)])
    return base


def test_core50_sessions_protocol_and_labels(tmp_path):
    base = _make_core50(tmp_path)
    train, test, names = load_core50(tmp_path, size=32)
    assert [s for s, _ in train] == ["s1", "s2", "s4", "s5", "s6", "s8", "s9", "s11"]
    assert names[0] == "o1" and names[49] == "o50" and len(names) == 50
    for s, ds in train:
        assert isinstance(ds, FileImageDataset) and len(ds) == 2 * len(OBJECTS)
        assert all(Path(p).parent.parent == base / s for p in ds.paths)
        assert sorted(ds.targets.tolist()) == [0, 0, 1, 1, 9, 9]
    assert isinstance(test, FileImageDataset) and len(test) == 3 * 2 * len(OBJECTS)
    assert {Path(p).parent.parent.name for p in test.paths} == set(CORE50_TEST_SESSIONS)
    assert not set(CORE50_TRAIN_SESSIONS) & set(CORE50_TEST_SESSIONS)
    for ds in (train[3][1], test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
            _assert_colour(x, COLOURS[OBJECTS.index(y + 1)], tol=0)


def test_core50_empty_session(tmp_path):
    base = _make_core50(tmp_path)
    for png in (base / "s7").rglob("*.png"):
        png.unlink()
    with pytest.raises(ValueError, match="no o<k>") as e:
        load_core50(tmp_path)
    assert str(base / "s7") in str(e.value)


def test_core50_missing_session(tmp_path):
    base = _make_core50(tmp_path)
    for png in (base / "s11").rglob("*.png"):
        png.unlink()
    for d in sorted((base / "s11").rglob("*"), reverse=True):
        d.rmdir()
    (base / "s11").rmdir()
    with pytest.raises(DatasetNotFoundError) as e:
        load_core50(tmp_path)
    _assert_fix_in(str(e.value), base / "s11", "load_core50",
                   "http://bias.csr.unibo.it/maltoni/download/core50/core50_128x128.zip")


# ------------------------------------------------------------------ DomainNet

DN_CLASSES = {0: "aircraft_carrier", 1: "airplane", 344: "zigzag"}


def _make_domainnet(root: Path, domains=("clipart", "sketch")) -> None:
    for d in domains:
        for split, n in (("train", 2), ("test", 1)):
            lines = []
            for label, cls in DN_CLASSES.items():
                for i in range(n):
                    rel = f"{d}/{cls}/{d}_{label:03d}_{split}{i}.jpg"
                    _solid(root / rel, COLOURS[list(DN_CLASSES).index(label)])
                    lines.append(f"{rel} {label}")
            (root / f"{d}_{split}.txt").write_text("\n".join(lines) + "\n")


def test_domainnet_lists_and_images(tmp_path):
    _make_domainnet(tmp_path)
    splits, names = load_domainnet(tmp_path, size=24, domains=("sketch", "clipart"))
    assert list(splits) == ["sketch", "clipart"]
    assert len(names) == 345 and names[0] == "aircraft_carrier" and names[344] == "zigzag"
    assert names[5] == "class_5"  # unused by these lists
    for d, (train, test) in splits.items():
        assert isinstance(train, FileImageDataset) and isinstance(test, FileImageDataset)
        assert train.targets.tolist() == [0, 0, 1, 1, 344, 344] and test.targets.tolist() == [0, 1, 344]
        assert all(f"/{d}/" in p and "_train" in p for p in train.paths)
        assert all(f"/{d}/" in p and "_test" in p for p in test.paths)
        for ds in (train, test):
            for i in range(len(ds)):
                x, y = ds[i]
                assert x.shape == (3, 24, 24)
                _assert_colour(x, COLOURS[list(DN_CLASSES).index(y)])


def test_domainnet_label_out_of_range(tmp_path):
    _make_domainnet(tmp_path, ("clipart",))
    lst = tmp_path / "clipart_test.txt"
    lst.write_text(lst.read_text() + "clipart/zigzag/x.jpg 345\n")
    with pytest.raises(ValueError, match="345") as e:
        load_domainnet(tmp_path, domains=("clipart",))
    assert f"{lst}:4" in str(e.value)


def test_domainnet_inconsistent_class_name(tmp_path):
    _make_domainnet(tmp_path, ("clipart",))
    lst = tmp_path / "clipart_train.txt"
    lst.write_text(lst.read_text() + "clipart/banana/x.jpg 0\n")
    with pytest.raises(ValueError, match="banana") as e:
        load_domainnet(tmp_path, domains=("clipart",))
    assert f"{lst}:7" in str(e.value)


def test_domainnet_missing_list_file(tmp_path):
    _make_domainnet(tmp_path, ("clipart",))
    with pytest.raises(DatasetNotFoundError) as e:
        load_domainnet(tmp_path, domains=("clipart", "painting"))
    _assert_fix_in(str(e.value), tmp_path / "painting_train.txt", "load_domainnet",
                   "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/painting.zip")
    assert "http://csr.bu.edu/ftp/visda/2019/multi-source/domainnet/txt/painting_train.txt" in str(e.value)


def test_domainnet_download_fetches_official_urls(tmp_path, monkeypatch):
    from cl_peft_lib.data import download as dl

    calls = []

    def fake_zip(url, download_root, *a, **kw):
        calls.append(url)
        _make_domainnet(Path(download_root), ("quickdraw",))
        for split in ("train", "test"):
            (Path(download_root) / f"quickdraw_{split}.txt").unlink()

    def fake_url(url, dest, *a, **kw):
        calls.append(url)
        split = url.rsplit("_", 1)[1].split(".")[0]
        assert Path(dest).name == f"quickdraw_{split}.txt"
        Path(dest).write_text(f"quickdraw/airplane/quickdraw_001_{split}0.jpg 1\n")

    monkeypatch.setattr(dl, "fetch_and_extract", fake_zip)
    monkeypatch.setattr(dl, "fetch", fake_url)
    splits, names = load_domainnet(tmp_path, download=True, domains=("quickdraw",))
    base = "http://csr.bu.edu/ftp/visda/2019/multi-source"
    assert calls == [f"{base}/quickdraw.zip", f"{base}/domainnet/txt/quickdraw_train.txt",
                     f"{base}/domainnet/txt/quickdraw_test.txt"]
    assert splits["quickdraw"][0].targets.tolist() == [1] and names[1] == "airplane"


def test_unknown_domainnet_domain(tmp_path):
    with pytest.raises(ValueError, match="photo"):
        load_domainnet(tmp_path, domains=("photo",))


def test_registry():
    assert PAPER_DATASETS == {"cifar100": load_cifar100, "tiny_imagenet": load_tiny_imagenet,
                              "core50": load_core50, "domainnet": load_domainnet, "imagenet_r": load_imagenet_r}


def _cifar_fix_named(msg: str, path: Path) -> None:
    assert str(path) in msg and "re-download" in msg and "cifar-100-python.tar.gz" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("corrupt,needle", [
    (lambda p: p.write_bytes(b""), "empty or truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "empty or truncated"),
    (lambda p: p.write_bytes(b"\x00garbage, not a pickle at all" * 10), "not a readable CIFAR pickle"),
    (lambda p: p.write_bytes(pickle.dumps([1, 2, 3], protocol=2)), "expected a pickled dict, found a list"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)),
     "missing key(s) ['fine_labels']"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": ["a", "b"]})),
     "fine_labels are not integers"),
])
def test_cifar100_corrupt_train_file_is_named(tmp_path, corrupt, needle):
    _make_cifar(tmp_path, [1, 2, 3], [0])
    bad = tmp_path / "cifar-100-python" / "train"
    corrupt(bad)
    with pytest.raises(ValueError) as e:
        load_cifar100(tmp_path)
    assert needle in str(e.value), e.value
    _cifar_fix_named(str(e.value), bad)


def test_cifar100_meta_without_names(tmp_path):
    _make_cifar(tmp_path, [1], [0])
    meta = tmp_path / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({b"coarse_label_names": [b"x"]}, protocol=2))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['fine_label_names'\]") as e:
        load_cifar100(tmp_path)
    _cifar_fix_named(str(e.value), meta)


def test_cifar100_shape_and_length_mismatch_named(tmp_path):
    _make_cifar(tmp_path, [1, 2], [0])
    test = tmp_path / "cifar-100-python" / "test"
    test.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match="expected uint8 data") as e:
        load_cifar100(tmp_path)
    assert str(test) in str(e.value)


def test_cifar100_corrupt_file_through_the_cli(tmp_path, monkeypatch, capsys):
    """`cl-peft run` on a truncated pickle: one `error:` line naming the file, exit code 2, no traceback."""
    from cl_peft_lib.cli import main as cli_main

    _make_cifar(tmp_path / "data", [1, 2], [0])
    bad = tmp_path / "data" / "cifar-100-python" / "train"
    bad.write_bytes(bad.read_bytes()[:100])
    monkeypatch.setenv("CL_PEFT_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("CL_PEFT_DOWNLOAD", raising=False)
    rc = cli_main(["run", "--method", "ncm", "--benchmark", "split-cifar100", "--profile", "smoke", "--device", "cpu",
                   "--backbone", "test_vit_micro", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert "empty or truncated" in err
    _cifar_fix_named(err, bad)


# ------------------------------------------------------------------ ImageNet-R


def _make_imagenet_r(root: Path, num_classes: int = 200, per_class: int = 5, size: int = 8) -> list[str]:
    """Write imagenet-r/<wnid>/*.jpg like the release; class k is a solid colour, wnids unsorted on disk."""
    wnids = [f"n{10_000_000 + 7919 * k:08d}" for k in range(num_classes)]
    for k, w in enumerate(reversed(wnids)):
        for j in range(per_class):
            _solid(root / "imagenet-r" / w / f"art_{j}.jpg", COLOURS[(num_classes - 1 - k) % len(COLOURS)], size=size)
    return wnids


def test_imagenet_r_layout_split_and_labels(tmp_path):
    wnids = _make_imagenet_r(tmp_path)
    train, test, names = load_imagenet_r(tmp_path, size=12)
    assert names == sorted(wnids) and len(names) == 200
    assert isinstance(train, FileImageDataset) and isinstance(test, FileImageDataset)
    assert len(train) == 200 * 4 and len(test) == 200 * 1  # 80/20 of 5 images per class
    assert torch.equal(torch.bincount(train.targets, minlength=200), torch.full((200,), 4))
    assert torch.equal(torch.bincount(test.targets, minlength=200), torch.ones(200, dtype=torch.int64))
    assert not set(train.paths) & set(test.paths)
    for ds in (train, test):
        for i in (0, len(ds) - 1):
            x, y = ds[i]
            assert x.shape == (3, 12, 12) and Path(ds.paths[i]).parent.name == names[y]
            _assert_colour(x, COLOURS[wnids.index(names[y]) % len(COLOURS)], tol=12)
    again, again_test, _ = load_imagenet_r(tmp_path)
    assert again.paths == train.paths and again_test.paths == test.paths  # fixed seed: the same split


def test_imagenet_r_split_is_seeded_and_per_class():
    y = [c for c in range(3) for _ in range(10)]
    tr, te = imagenet_r_split(y)
    assert len(tr) == 24 and len(te) == 6 and not set(tr.tolist()) & set(te.tolist())
    assert torch.equal(torch.bincount(torch.tensor(y)[te]), torch.tensor([2, 2, 2]))
    assert torch.equal(imagenet_r_split(y)[0], tr)
    assert not torch.equal(imagenet_r_split(y, seed=1)[0], tr)
    with pytest.raises(ValueError, match="class 1 has 1 image"):
        imagenet_r_split([0, 0, 1])


def test_imagenet_r_incomplete_extraction(tmp_path):
    _make_imagenet_r(tmp_path, num_classes=7, per_class=2)
    with pytest.raises(ValueError, match="found 7 class folders, ImageNet-R has 200"):
        load_imagenet_r(tmp_path)
    train, test, names = load_imagenet_r(tmp_path, num_classes=None)
    assert len(names) == 7 and len(train) == 7 and len(test) == 7


def test_imagenet_r_missing_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_imagenet_r(tmp_path)
    _assert_fix_in(str(e.value), tmp_path / "imagenet-r", "load_imagenet_r", IMAGENET_R_URL)


def test_imagenet_r_download_uses_official_tar(tmp_path, monkeypatch):
    from cl_peft_lib.data import download as dl

    seen = []

    def fake(url, download_root, *a, **kw):
        seen.append(url)
        _make_imagenet_r(Path(download_root), per_class=2)

    monkeypatch.setattr(dl, "fetch_and_extract", fake)
    train, test, names = load_imagenet_r(tmp_path, download=True)
    assert seen == [IMAGENET_R_URL] and len(names) == 200 and len(train) == len(test) == 200


def test_imagenet_r_benchmark_ten_tasks_of_twenty(tmp_path, monkeypatch):
    from cl_peft_lib.data.scenarios import BENCHMARKS, build_benchmark
    from cl_peft_lib.profiles import get_profile

    _make_imagenet_r(tmp_path, per_class=5)
    monkeypatch.setenv("CL_PEFT_DATA", str(tmp_path))
    assert "imagenet-r" in BENCHMARKS
    sc = build_benchmark("imagenet-r", get_profile("paper"), seed=0)
    assert sc.kind == "class" and sc.num_tasks == 10 and sc.num_classes == 200
    assert all(len(t.classes) == 20 for t in sc.tasks)
    assert sc.tasks[3].classes == list(range(60, 80)) and sc.datasets == ["imagenet_r"]
    assert sum(len(t.train) + len(t.val) for t in sc.tasks) == 800 and sum(len(t.test) for t in sc.tasks) == 200
