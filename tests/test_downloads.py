"""cl_peft_lib.data.download against a local HTTP server on 127.0.0.1 (no other network)."""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading

import pytest

from cl_peft_lib.data import download as dl
from cl_peft_lib.data.base import DatasetNotFoundError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` by path; honours ``Range: bytes=N-`` unless ``ranges`` is off; logs each request."""

    files: dict[str, bytes] = {}
    ranges = True
    seen: list[tuple[str, str | None]] = []

    def log_message(self, *a):
        pass

    def _body(self):
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return None
        rng = self.headers.get("Range")
        self.seen.append((self.command, rng))
        start = int(rng.split("=")[1].rstrip("-")) if rng and self.ranges else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        return data[start:]

    def do_HEAD(self):
        self._body()

    def do_GET(self):
        body = self._body()
        if body is not None:
            self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.files, _Handler.ranges, _Handler.seen = {"/data.bin": PAYLOAD}, True, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def test_size_announced_and_progress_reaches_total(server, tmp_path, monkeypatch, capsys):
    bars = []
    real = dl.tqdm

    def spy(*a, **k):
        bars.append(real(*a, **k))
        return bars[-1]

    monkeypatch.setattr(dl, "tqdm", spy)
    assert dl.remote_size(f"{server}/data.bin") == len(PAYLOAD)
    out = dl.fetch(f"{server}/data.bin", tmp_path / "data.bin", md5=hashlib.md5(PAYLOAD).hexdigest())
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "data.bin.part").exists()
    assert bars[0].n == bars[0].total == len(PAYLOAD)
    assert "(1.0 MB)" in capsys.readouterr().err  # announced before the transfer
    assert _Handler.seen[0] == ("HEAD", None)


def test_killed_download_resumes_from_part(server, tmp_path, capsys):
    part = tmp_path / "data.bin.part"
    part.write_bytes(PAYLOAD[:300_000])  # what a killed download left
    dl.fetch(f"{server}/data.bin", tmp_path / "data.bin")
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert ("GET", "bytes=300000-") in _Handler.seen
    assert "resuming after 300.0 kB" in capsys.readouterr().err


def test_server_without_range_restarts(server, tmp_path):
    _Handler.ranges = False
    (tmp_path / "data.bin.part").write_bytes(b"x" * 1000)
    dl.fetch(f"{server}/data.bin", tmp_path / "data.bin", progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_wrong_checksum_is_refused_and_not_kept(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.fetch(f"{server}/data.bin", tmp_path / "data.bin", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_published_md5_is_used_by_name(server, tmp_path):
    _Handler.files["/cifar-100-python.tar.gz"] = b"not the archive"
    with pytest.raises(dl.DownloadError, match="eb9058c3a382ffc7106e4002c42a8d85"):
        dl.fetch(f"{server}/cifar-100-python.tar.gz", tmp_path / "cifar-100-python.tar.gz", progress=False)


def test_404_and_refused_are_one_clear_error(server, tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"could not download .*missing.zip .*try again later"):
        dl.fetch(f"{server}/missing.zip", tmp_path / "missing.zip", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(dl.DownloadError, match="could not download") as e:
        dl.fetch(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False)
    assert "\n" not in str(e.value)


def test_fetch_and_extract_unpacks(server, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("imagenet-r/n01/a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    _Handler.files["/imagenet-r.tar.gz"] = buf.getvalue()
    dl.fetch_and_extract(f"{server}/imagenet-r.tar.gz", tmp_path, progress=False)
    assert (tmp_path / "imagenet-r" / "n01" / "a.txt").read_text() == "hi"


def test_human_size():
    assert [dl.human_size(n) for n in (None, 5, 1500, 12_300_000_000)] == ["unknown size", "5 B", "1.5 kB", "12.3 GB"]
