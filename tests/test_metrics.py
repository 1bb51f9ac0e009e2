import math

import numpy as np
import pytest

from cl_peft_lib.metrics import (as_matrix, average_accuracy, average_incremental_accuracy, backward_transfer,
                                 forgetting, format_matrix, summarize)

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
