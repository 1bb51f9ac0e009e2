"""``cl-peft import``: a results.json made elsewhere lands in the run store and a re-run does not train."""
from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest

from cl_peft_lib.cli import main
from cl_peft_lib.imports import ImportResultError, import_results
from cl_peft_lib.store import run_dir

RUN = ["--method", "ncm", "--benchmark", "offline-dil", "--profile", "smoke", "--device", "cpu",
       "--backbone", "test_vit_micro", "--quiet"]


@pytest.fixture(scope="module")
def produced(tmp_path_factory) -> Path:
    """A complete run made by "someone else" (another store root)."""
    root = tmp_path_factory.mktemp("producer")
    assert main(["run", *RUN, "--root", str(root)]) == 0
    return run_dir("smoke", "offline-dil", "ncm", 0, backbone="test_vit_micro", root=root) / "results.json"


def _rerun(root: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["run", *RUN, "--root", str(root)])
    return rc, capsys.readouterr().err


def test_imported_run_is_found_complete(produced, tmp_path, capsys):
    rc = main(["import", str(produced), "--root", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    dest = run_dir("smoke", "offline-dil", "ncm", 0, backbone="test_vit_micro", root=tmp_path) / "results.json"
    mine, theirs = json.loads(dest.read_text()), json.loads(produced.read_text())
    assert mine["provenance"]["imported_from"] == str(produced)
    assert mine["fingerprint"] == theirs["fingerprint"] and mine["accuracy_matrix"] == theirs["accuracy_matrix"]
    rc, err = _rerun(tmp_path, capsys)
    assert rc == 0 and "finished: nothing to do" in err
    assert json.loads(dest.read_text())["provenance"]["imported_from"] == str(produced)  # not retrained


def test_foreign_fingerprint_is_refused(produced, tmp_path, capsys):
    d = json.loads(produced.read_text())
    d["fingerprint"] = "0" * 64  # as made by another library version
    src = tmp_path / "other.json"
    src.write_text(json.dumps(d))
    with pytest.raises(ImportResultError, match="differs from this machine's"):
        import_results(src, tmp_path / "store")
    assert not (tmp_path / "store").exists()
    # unverified, it is placed, but the loop refuses to reuse it rather than silently accepting it
    import_results(src, tmp_path / "store", verify=False)
    rc, err = _rerun(tmp_path / "store", capsys)
    assert rc == 2 and err.startswith("error:") and "different run" in err


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(status="running"), "only complete runs"),
    (lambda d: d.pop("fingerprint"), "no fingerprint"),
    (lambda d: d.pop("accuracy_matrix"), "missing required field"),
    (lambda d: d.update(store_key="ncm-elsewhere"), "is not 'ncm-"),
])
def test_bad_files_are_one_error_line(produced, tmp_path, capsys, edit, needle):
    d = json.loads(produced.read_text())
    edit(d)
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(d))
    assert main(["import", str(src), "--root", str(tmp_path / "s"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err and "Traceback" not in err


def test_missing_file_and_occupied_folder(produced, tmp_path, capsys):
    assert main(["import", str(tmp_path / "nope.json"), "--root", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err
    dest = run_dir("smoke", "offline-dil", "ncm", 0, backbone="test_vit_micro", root=tmp_path) / "results.json"
    dest.parent.mkdir(parents=True)
    dest.write_text(json.dumps({"status": "complete", "fingerprint": "f" * 64}))
    with pytest.raises(ImportResultError, match="already holds another run"):
        import_results(produced, tmp_path, verify=False)


def test_import_from_a_url_on_loopback(produced, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(produced.parent))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/results.json"
        path = import_results(url, tmp_path, verify=False)
        assert json.loads(path.read_text())["provenance"]["imported_from"] == url
        with pytest.raises(ImportResultError, match="cannot read"):
            import_results(f"http://127.0.0.1:{srv.server_port}/missing.json", tmp_path / "x", verify=False)
    finally:
        srv.shutdown()
        srv.server_close()
