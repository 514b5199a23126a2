"""The inference device follows `trainer.accelerator`; asking for a GPU that is not there is one clear error."""
from __future__ import annotations

import pytest
import torch

from clicks2pref.errors import ConfigError
from clicks2pref.models import placement


@pytest.fixture(autouse=True)
def restore_device():
    yield
    placement.use_accelerator("cpu")


def test_cpu_and_auto_without_cuda_run_on_the_cpu():
    assert placement.use_accelerator("cpu") == "cpu"
    assert placement.use_accelerator("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_without_cuda_names_the_key():
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu"):
        placement.use_accelerator("gpu")


def test_on_device_moves_only_what_is_elsewhere():
    placement.use_accelerator("cpu")
    model = torch.nn.Linear(2, 2)
    assert placement.on_device(model) is model and model.weight.device.type == "cpu"
    assert placement.on_device(torch.nn.Identity()) is not None  # no parameters: nothing to move


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_device_moves_a_cpu_model_to_the_gpu():
    placement.use_accelerator("gpu")
    assert placement.on_device(torch.nn.Linear(2, 2)).weight.device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_device_completes_a_half_placed_model():
    placement.use_accelerator("gpu")
    model = torch.nn.Sequential(torch.nn.Linear(2, 2).cuda(), torch.nn.Linear(2, 2))
    assert {p.device.type for p in placement.on_device(model).parameters()} == {"cuda"}
