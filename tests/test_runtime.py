"""Seeding, device choice, threads and offline detection (reproduce/runtime.py)."""

import time

import pytest
import torch

import pipeline_spec  # noqa: F401
from reproduce import config, runtime


def test_setup_seeds_and_picks_cpu_here():
    params = config.resolve("pipeline", "smoke", {"seed": 7, "threads": 1})
    rt = runtime.setup(params)
    a = torch.rand(3)
    runtime.setup(params)
    assert torch.equal(a, torch.rand(3))
    assert rt.seed == 7 and rt.threads == 1 == torch.get_num_threads()
    assert rt.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "seed=7" in str(rt)
    runtime.set_threads(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_asking_for_cuda_without_gpu_says_so():
    with pytest.raises(RuntimeError, match="no GPU"):
        runtime.pick_device("cuda")


def test_offline_detection_is_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert runtime.hub_offline() is True
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t0 = time.perf_counter()
    runtime.hub_offline(timeout=1.0)  # here the hub does not answer: the probe must give up quickly
    assert time.perf_counter() - t0 < 3.0
