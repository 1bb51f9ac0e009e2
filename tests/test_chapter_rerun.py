"""chapter.run_method: a finished result without its checkpoint is trained again (the chapters inspect the
trained method; a result imported from the packaged records has none), and a finished run with its
checkpoint is reused with its trained method, also for a method that builds per-task parts (S-Prompts'
heads), which a not-yet-run method cannot load."""
import json

import pytest

from cl_peft_lib.chapter import run_method


@pytest.mark.parametrize("method,benchmark", [("linear_probe", "offline-cil"), ("sprompts", "offline-dil")])
def test_result_without_checkpoint_is_trained_again(tmp_path, method, benchmark):
    runner, res = run_method(method, benchmark, "smoke", seed=0, device="cpu", root=str(tmp_path))
    ck = runner.checkpoint_path
    assert ck.exists()
    # a run that still has its checkpoint is reused, not retrained, and its method is the trained one
    mtime = ck.stat().st_mtime_ns
    reused, res1 = run_method(method, benchmark, "smoke", seed=0, device="cpu", root=str(tmp_path))
    assert ck.stat().st_mtime_ns == mtime and res1["accuracy_matrix"] == res["accuracy_matrix"]
    ck.unlink()  # what an imported result looks like: results.json only
    n_rows = len(json.loads((runner.out / "results.json").read_text())["accuracy_matrix"])
    again, res2 = run_method(method, benchmark, "smoke", seed=0, device="cpu", root=str(tmp_path))
    assert again.checkpoint_path.exists(), "the run was not trained again"
    assert len(res2["accuracy_matrix"]) == n_rows
