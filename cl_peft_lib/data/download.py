"""Downloads a student can trust: size first, progress, checksums, resumable, clear errors.

:func:`fetch` announces the size (``HEAD``, ``Content-Length``) before a byte moves, shows a
tqdm bar, writes into ``<file>.part`` and resumes it with an HTTP ``Range`` request after an
interruption (a server that ignores ``Range`` restarts it from zero), checks the MD5 where the
publisher gives one and never keeps a file that fails it. A mirror that is down, a 404 or a
refused connection is one :class:`DownloadError` line that says what to do.

Checksums: CIFAR-100's archive MD5 ``eb9058c3a382ffc7106e4002c42a8d85`` is the one torchvision
publishes (``torchvision.datasets.CIFAR100.tgz_md5``). Tiny ImageNet (cs231n), CORe50
(bias.csr.unibo.it) and DomainNet (csr.bu.edu) publish no checksum on their download pages;
their archives are checked for size only (``Content-Length``) and by the loaders' format checks.

Chapter: ``book/appendix_paper_track.md`` (the paper-scale track).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .base import DatasetNotFoundError

#: Publisher checksums (MD5) by archive file name; absent where the publisher gives none.
MD5: dict[str, str] = {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}
CHUNK = 1 << 20
TIMEOUT_S = 60.0


class DownloadError(DatasetNotFoundError):
    """A download that failed (mirror down, 404, refused, wrong checksum); the message says what to do."""


def human_size(n: int | None) -> str:
    """``1234567`` -> ``"1.2 MB"``; None -> ``"unknown size"``."""
    if n is None:
        return "unknown size"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _fail(url: str, dest: Path, why: object) -> DownloadError:
    return DownloadError(f"could not download {url} ({why}); the mirror may be down or moved: try again later "
                         f"(a partial file resumes), or fetch it by hand into {dest.parent}")


def remote_size(url: str, timeout: float = TIMEOUT_S) -> int | None:
    """The ``Content-Length`` a ``HEAD`` request announces, None when the server gives none.

    Raises:
        DownloadError: the server answers with an error or cannot be reached.
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:  # noqa: S310
            n = r.headers.get("Content-Length")
    except (urllib.error.URLError, OSError) as e:
        raise _fail(url, Path(url.rsplit("/", 1)[-1]), getattr(e, "reason", e)) from None
    return int(n) if n and n.isdigit() else None


def md5sum(path: str | os.PathLike) -> str:
    """MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()  # noqa: S324 - the publishers' checksum, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: str | os.PathLike, md5: str | None = None, progress: bool = True,
          timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify ``md5``, return ``dest``.

    Args:
        url: http(s) URL.
        dest: the file to write; kept as it is when it exists (and matches ``md5``).
        md5: expected MD5; default :data:`MD5` by the file name (None: size checks only).
        progress: show a tqdm bar.
        timeout: seconds per network operation.

    Raises:
        DownloadError: unreachable, an HTTP error, a short transfer, or a wrong checksum (the bad
            file is deleted).
    """
    dest = Path(dest)
    md5 = md5 or MD5.get(dest.name)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total = remote_size(url, timeout)
    have = part.stat().st_size if part.is_file() else 0
    print(f"downloading {url} ({human_size(total)}) to {dest}"
          + (f", resuming after {human_size(have)}" if have else ""), file=sys.stderr, flush=True)
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            if have and r.status != 206:  # the server ignored Range: start over
                have = 0
            with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                                 desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: r.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as e:
        raise _fail(url, dest, getattr(e, "reason", e)) from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise _fail(url, dest, f"transfer stopped at {human_size(got)} of {human_size(total)}")
    if md5 is not None and (found := md5sum(part)) != md5:
        part.unlink()
        raise DownloadError(f"{url}: checksum mismatch (MD5 {found}, the publisher's is {md5}); the file was deleted: "
                            f"download it again, or by hand into {dest.parent}")
    os.replace(part, dest)
    return dest


def fetch_and_extract(url: str, root: str | os.PathLike, md5: str | None = None, progress: bool = True) -> Path:
    """:func:`fetch` ``url`` into ``root`` and unpack it there (zip, tar, tar.gz); return the archive."""
    root = Path(root)
    archive = fetch(url, root / url.rsplit("/", 1)[-1], md5, progress)
    try:
        shutil.unpack_archive(str(archive), str(root))
    except (shutil.ReadError, OSError, EOFError) as e:
        raise DownloadError(f"{archive}: cannot unpack ({e}); delete it and download again") from None
    return archive
