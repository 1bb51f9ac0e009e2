"""The mixed-precision switch ``CL_PEFT_AMP``: dtype, the loop's GradScaler path, provenance, bad values.

CUDA is mocked (``torch.cuda.is_bf16_supported``); only the choice is tested, no kernel runs.
"""
from __future__ import annotations

import pytest
import torch

from cl_peft_lib import utils

CUDA = torch.device("cuda")


@pytest.fixture
def bf16_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.fixture
def old_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)


def _scaler_enabled(device: torch.device) -> bool:
    """The loop's rule (loop.Runner.run): the GradScaler is on exactly when the AMP dtype is fp16."""
    return utils.amp_dtype(device) == torch.float16


@pytest.mark.parametrize("mode, bf16, dtype", [
    (None, True, torch.bfloat16), (None, False, torch.float16),
    ("fp16", True, torch.float16), ("bf16", True, torch.bfloat16),
    ("off", True, None), ("OFF", False, None), ("fp16", False, torch.float16),
])
def test_amp_switch_chooses_dtype_and_scaler(monkeypatch, mode, bf16, dtype):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    if mode is None:
        monkeypatch.delenv("CL_PEFT_AMP", raising=False)
    else:
        monkeypatch.setenv("CL_PEFT_AMP", mode)
    assert utils.amp_dtype(CUDA) == dtype
    assert _scaler_enabled(CUDA) is (dtype == torch.float16)


def test_forced_fp16_on_bf16_gpu_takes_scaler_path(monkeypatch, bf16_gpu):
    monkeypatch.delenv("CL_PEFT_AMP", raising=False)
    assert not _scaler_enabled(CUDA)
    monkeypatch.setenv("CL_PEFT_AMP", "fp16")
    assert _scaler_enabled(CUDA)
    assert utils.amp_label(CUDA) == "fp16"


def test_cpu_stays_fp32_whatever_the_switch(monkeypatch):
    for mode in ("fp16", "bf16", "off", ""):
        monkeypatch.setenv("CL_PEFT_AMP", mode)
        assert utils.amp_dtype(torch.device("cpu")) is None


def test_bad_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("CL_PEFT_AMP", "fp8")
    with pytest.raises(ValueError, match=r"CL_PEFT_AMP='fp8'.*fp16, bf16 or off"):
        utils.amp_dtype(CUDA)


def test_bf16_forced_on_gpu_without_it_is_refused(monkeypatch, old_gpu):
    monkeypatch.setenv("CL_PEFT_AMP", "bf16")
    with pytest.raises(ValueError, match="does not support bf16"):
        utils.amp_dtype(CUDA)


def test_provenance_records_amp_mode(monkeypatch):
    monkeypatch.setenv("CL_PEFT_AMP", "off")
    assert utils.provenance("cpu")["amp"] == "off"
    monkeypatch.setenv("CL_PEFT_AMP", "fp16")
    monkeypatch.setattr(utils, "amp_dtype", lambda device: torch.float16)  # as on a GPU
    assert utils.provenance("cpu")["amp"] == "fp16"


def test_bad_value_is_a_cli_error_line(monkeypatch, capsys):
    from cl_peft_lib.cli import main

    monkeypatch.setenv("CL_PEFT_AMP", "half")
    rc = main(["run", "--method", "l2p", "--benchmark", "offline-cil", "--profile", "smoke", "--device", "cpu",
               "--root", "/nonexistent-should-not-be-written"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "CL_PEFT_AMP" in err and "Traceback" not in err
