import json
import math

import numpy as np
import pytest

from cl_peft_lib.metrics import (as_matrix, average_accuracy, average_incremental_accuracy, backward_transfer,
                                 forgetting, format_matrix, summarize)
from cl_peft_lib.results import SCHEMA_VERSION, ResultSchemaError, RunResult, load_result

# Hand-computed example: 3 tasks.
R = [[90.0],
     [70.0, 80.0],
     [60.0, 75.0, 85.0]]


def test_average_accuracy():
    assert average_accuracy(R) == pytest.approx((60 + 75 + 85) / 3)


def test_average_incremental_accuracy():
    assert average_incremental_accuracy(R) == pytest.approx((90 + (70 + 80) / 2 + (60 + 75 + 85) / 3) / 3)


def test_forgetting_is_max_based():
    # task 0: best before last step = max(90, 70) = 90 -> 90 - 60 = 30; task 1: 80 - 75 = 5.
    assert forgetting(R) == pytest.approx((30 + 5) / 2)
    # max-based differs from "first accuracy" when accuracy rises before it falls.
    R2 = [[50.0], [70.0, 80.0], [40.0, 80.0, 90.0]]
    assert forgetting(R2) == pytest.approx(((70 - 40) + 0) / 2)


def test_backward_transfer():
    assert backward_transfer(R) == pytest.approx(((60 - 90) + (75 - 80)) / 2)
    assert backward_transfer([[50.0], [60.0, 70.0]]) == pytest.approx(10.0)


def test_single_task_and_summary():
    assert forgetting([[42.0]]) == 0.0 and backward_transfer([[42.0]]) == 0.0
    s = summarize(R)
    assert set(s) == {"average_accuracy", "average_incremental_accuracy", "forgetting", "backward_transfer"}


def test_bad_matrix_rejected():
    with pytest.raises(ValueError, match="row 1"):
        as_matrix([[1.0], [2.0]])
    with pytest.raises(ValueError, match="missing"):
        as_matrix([[1.0], [None, 2.0]])


def test_format_matrix():
    txt = format_matrix(R, ["a", "b", "c"])
    assert "85.0" in txt and txt.count("\n") == 3
    assert math.isnan(as_matrix(R)[0, 2]) and not np.isnan(as_matrix(R)[2, 0])


# --------------------------------------------------------------------------- the results.json schema
@pytest.fixture(scope="module")
def loop_file(tmp_path_factory):
    """A results.json exactly as the loop writes it today (NCM on the toy scenario: no training)."""
    from conftest import make_toy_scenario

    from cl_peft_lib.backbones import create_backbone
    from cl_peft_lib.loop import RunConfig, run_continual

    out = tmp_path_factory.mktemp("run")
    sc = make_toy_scenario("class", num_tasks=2, per_class=6)
    cfg = RunConfig("ncm", sc.name, "smoke", seed=3, device="cpu", out_dir=str(out), backbone="test_vit_micro",
                    progress=False)
    res = run_continual(cfg, scenario=sc, backbone=create_backbone("test_vit_micro"))
    return out / "results.json", res


def test_the_loop_writes_the_schema_and_version_1_files_upgrade(loop_file, tmp_path):
    path, res = loop_file
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION  # the loop writes through RunResult
    r = load_result(path)
    assert (r.schema_version, r.method, r.seed, r.status) == (SCHEMA_VERSION, "ncm", 3, "complete")
    assert r.accuracy_matrix == res["accuracy_matrix"] and r.metrics == res["metrics"] and r.store_key
    assert r.to_dict() == on_disk
    v1 = {k: v for k, v in on_disk.items() if k not in ("schema_version", "store_key", "fingerprint", "validation")}
    (tmp_path / "v1.json").write_text(json.dumps(v1))  # a file of before the schema
    old = load_result(tmp_path / "v1.json")
    assert (old.schema_version, old.store_key, old.accuracy_matrix) == (SCHEMA_VERSION, None, r.accuracy_matrix)
    old.store_key = "ncm"
    old.save(tmp_path / "results.json")
    again = load_result(tmp_path / "results.json")
    assert again == old and again.to_dict() == old.to_dict()  # round trip


def test_bad_results_files_are_refused_naming_the_file(loop_file, tmp_path):
    good = json.loads(loop_file[0].read_text())
    cases = [({**good, "schema_version": "cl-peft-result/9"}, "unknown schema_version 'cl-peft-result/9'"),
             ({k: v for k, v in good.items() if k not in ("seed", "status")},
              r"missing required field\(s\) \['seed', 'status'\]"),
             ({**good, "acuracy": 1}, r"unknown field\(s\) \['acuracy'\]"),
             ({**good, "seed": "3"}, "field 'seed' must be int, got str"),
             ({**good, "trainable_params": True}, "field 'trainable_params' must be int"),
             ({**good, "status": "done"}, "status 'done' is not one of"),
             ({k: v for k, v in good.items() if k != "metrics"}, "a complete run needs metrics"),
             ({**good, "status": "failed"}, "a failed run needs its error"),
             ({**good, "accuracy_matrix": [[1.0], [2.0]]}, "accuracy_matrix row 1"),
             ([good], "holds a JSON object, got list")]
    for i, (d, msg) in enumerate(cases):
        p = tmp_path / f"bad{i}.json"
        p.write_text(json.dumps(d))
        with pytest.raises(ResultSchemaError, match=msg) as e:
            load_result(p)
        assert str(p) in str(e.value), e.value
    p = tmp_path / "truncated.json"
    p.write_text(loop_file[0].read_text()[:50])
    with pytest.raises(ResultSchemaError, match="cannot read a results file .*JSONDecodeError") as e:
        load_result(p)
    assert str(p) in str(e.value)
    with pytest.raises(ResultSchemaError, match="cannot read"):
        load_result(tmp_path / "missing.json")
    failed = RunResult.from_dict({**good, "status": "failed", "error": "RuntimeError: x"})
    assert failed.to_dict()["error"] == "RuntimeError: x" and "resumed_from_task" not in failed.to_dict()
