"""chapter.run_method: a finished result without its checkpoint is trained again (the chapters inspect the
trained method; a result imported from the packaged records has none)."""
import json

from cl_peft_lib.chapter import run_method


def test_result_without_checkpoint_is_trained_again(tmp_path):
    runner, res = run_method("linear_probe", "offline-cil", "smoke", seed=0, device="cpu", root=str(tmp_path))
    ck = runner.out / "checkpoint.pt"
    assert ck.exists()
    ck.unlink()  # what an imported result looks like: results.json only
    stamp = json.loads((runner.out / "results.json").read_text())["accuracy_matrix"]
    again, res2 = run_method("linear_probe", "offline-cil", "smoke", seed=0, device="cpu", root=str(tmp_path))
    assert (again.out / "checkpoint.pt").exists(), "the run was not trained again"
    assert len(res2["accuracy_matrix"]) == len(stamp)
    # and a run that still has its checkpoint is reused, not retrained
    mtime = (again.out / "checkpoint.pt").stat().st_mtime_ns
    run_method("linear_probe", "offline-cil", "smoke", seed=0, device="cpu", root=str(tmp_path))
    assert (again.out / "checkpoint.pt").stat().st_mtime_ns == mtime
