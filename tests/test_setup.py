"""The set-up of a fresh machine: every Debian package the Makefile would install here installs,
and no loader reaches for the network unless asked.

These checks exist because CI once passed only on a machine prepared by hand: Debian's ``npm``
conflicts with the nodesource ``nodejs`` of this machine kind, so ``apt-get install ... npm``
failed on a fresh machine while the install branch never ran where chromium was present.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _make_var(name: str) -> list[str]:
    m = re.search(rf"^{name}\s*:?=\s*(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile defines no {name}"
    return m.group(1).split()


def _literal_apt_lines() -> list[str]:
    """Package names of literal ``apt-get install`` lines in the Makefile and .ci/run (there should be none)."""
    text = (ROOT / "Makefile").read_text() + (ROOT / ".ci" / "run").read_text()
    names = []
    for line in re.findall(r"apt-get install[^;|&)\n]*", text):
        names += [w for w in line.split()[2:] if not w.startswith(("-", "$"))]
    return names


def _would_install() -> list[str]:
    specs = _make_var("SYSTEM_BOOK") + _make_var("SYSTEM_TEST")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "system_deps.sh"), "--print", *specs],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_system_packages_are_declared_once_and_the_makefile_installs_nothing_else():
    assert "dataset-fashion-mnist" in _make_var("SYSTEM_BOOK")
    assert {"chromium:chromium", "chromium-driver:chromedriver"} <= set(_make_var("SYSTEM_TEST"))
    assert _literal_apt_lines() == [], "install Debian packages through scripts/system_deps.sh only"


def test_npm_is_only_installed_when_missing(tmp_path):
    """With an ``npm`` on the PATH, Debian's npm (which conflicts with nodesource's nodejs) is never asked for."""
    fake = tmp_path / "npm"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "system_deps.sh"), "--print", "npm:npm"],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == []
    env = {"PATH": str(tmp_path / "empty")}  # no npm anywhere (the script needs only bash builtins here)
    out = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "system_deps.sh"), "--print", "npm:npm"],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["npm"]


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian machine (no apt-get)")
def test_every_package_the_setup_would_install_here_installs():
    """``apt-get install -s`` (a simulation) on exactly what scripts/system_deps.sh would install here."""
    pkgs = _would_install()
    for p in pkgs:
        r = subprocess.run(["apt-get", "install", "-s", p], capture_output=True, text=True)
        assert r.returncode == 0, f"'apt-get install {p}' would fail on this machine:\n{r.stdout[-800:]}{r.stderr[-800:]}"
    if pkgs:  # together too: two packages may conflict with each other
        r = subprocess.run(["apt-get", "install", "-s", *pkgs], capture_output=True, text=True)
        assert r.returncode == 0, f"'apt-get install {' '.join(pkgs)}' would fail:\n{r.stderr[-800:]}"


def test_offline_loaders_never_download_by_default(monkeypatch):
    """With the files absent, every offline loader raises the install command and never calls a downloader."""
    from cl_peft_lib.data import offline
    from cl_peft_lib.data.base import DatasetNotFoundError

    def absent(name, package_rel, files):
        raise DatasetNotFoundError(f"offline data set '{name}' not found. Install it with:\n    "
                                   f"{offline.INSTALL_HINT[name]}")

    def no_network(*a, **k):
        raise AssertionError("a loader tried to download")

    monkeypatch.setattr(offline, "_locate", absent)
    monkeypatch.setattr(offline, "_torchvision_mnist", no_network)
    monkeypatch.delenv("CL_PEFT_DOWNLOAD", raising=False)
    for name, loader in offline.OFFLINE_DATASETS.items():
        with pytest.raises(DatasetNotFoundError, match=re.escape(offline.INSTALL_HINT[name])):
            loader()
    from cl_peft_lib.data.scenarios import build_benchmark
    from cl_peft_lib.profiles import get_profile

    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_benchmark("offline-cil", get_profile("smoke"))


@pytest.mark.parametrize("bench", ["split-cifar100", "split-tinyimagenet", "core50", "domainnet", "imagenet-r"])
def test_paper_benchmarks_say_where_they_looked_instead_of_downloading(bench, tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    from cl_peft_lib.data.base import DatasetNotFoundError
    from cl_peft_lib.data.scenarios import build_benchmark
    from cl_peft_lib.profiles import get_profile

    def no_network(*a, **k):
        raise AssertionError("a loader tried to download")

    for f in ("download_and_extract_archive", "download_url", "download_file_from_google_drive"):
        monkeypatch.setattr(tvu, f, no_network, raising=False)
    monkeypatch.setattr("torchvision.datasets.CIFAR100", no_network)
    monkeypatch.setenv("CL_PEFT_DATA", str(tmp_path))
    monkeypatch.delenv("CL_PEFT_DOWNLOAD", raising=False)
    with pytest.raises(DatasetNotFoundError) as e:
        build_benchmark(bench, get_profile("paper"))
    msg = str(e.value)
    assert str(tmp_path) in msg and "CL_PEFT_DOWNLOAD=1" in msg, msg


def test_the_tests_cannot_reach_the_internet():
    """conftest's guard: any non-loopback connection is refused at once (TEST-NET-1 address, RFC 5737)."""
    import socket

    with socket.socket() as s, pytest.raises(ConnectionRefusedError, match="must not reach the network"):
        s.connect(("192.0.2.1", 80))
