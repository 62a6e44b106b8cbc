"""Seeding, device choice, threads and offline detection (reproduce/runtime.py)."""

import os
import sys

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


def test_offline_detection_is_fast(monkeypatch, no_network):
    """HF_HUB_OFFLINE=1 answers without the network; otherwise one probe, bounded by the given timeout, decides."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert runtime.hub_offline() is True  # no_network: not even a probe
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def unreachable(request, *args, timeout=None, **kwargs):
        calls.append((request.full_url, request.get_method(), timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(runtime.urllib.request, "urlopen", unreachable)
    assert runtime.hub_offline(timeout=1.0) is True  # the hub does not answer: offline
    assert calls == [(f"https://{runtime.HUB_HOST}", "HEAD", 1.0)]  # one HEAD request, with the short timeout
    assert runtime.hub_offline(probe=False) is False and len(calls) == 1  # probe=False: no request at all
    calls.clear()
    assert runtime.hub_offline() is True and len(calls) == 1 and 0 < calls[0][2] <= 2.0  # the default is short too


def test_timed_names_other_busy_processes_and_not_its_own_children():
    """design.md: a timing records the machine's load; another busy process makes its claims not testable."""
    import subprocess
    import time

    from reproduce import runtime

    def spin_child():  # our own work (a timed kernel in a child process) is not "other work"
        subprocess.run([sys.executable, "-c", "import time; t = time.time()\nwhile time.time() - t < 1.5: pass"])
        return 7

    result, load = runtime.timed(spin_child)
    assert result == 7 and {"before", "after", "busy_processes"} <= set(load)
    assert not any(f"pid {os.getpid()}," in p for p in load["busy_processes"])
    stranger = subprocess.Popen(["sh", "-c", "yes > /dev/null & echo $!"], stdout=subprocess.PIPE, text=True)
    pid = int(stranger.stdout.readline())  # reparented away from us: another process on the machine
    try:
        time.sleep(0.3)
        load = runtime.machine_load()
        assert any(f"pid {pid}," in p for p in load["busy_processes"]), load
        assert runtime.idle_precondition({"busy_processes": load["busy_processes"]}).holds is False
        assert runtime.idle_precondition({"busy_processes": []}).holds is True
        assert runtime.idle_precondition(None).holds is False
    finally:
        os.kill(pid, 9)
        stranger.wait()


def test_threads_follow_affinity_quota_and_the_processes_on_the_machine(monkeypatch):
    """threads=0 used os.cpu_count() on every rank (bug: 8 ranks on a 128-core node bound to 16 cores
    each started 128 threads). Now: the affinity, capped by the cgroup quota, shared by the local ranks."""
    import torch

    from reproduce import runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 128)
    monkeypatch.setattr(runtime, "cgroup_cpus", lambda: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    threads = torch.get_num_threads()
    try:
        assert runtime.usable_cores() == 2
        assert runtime.set_threads(0) == 2
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert runtime.usable_cores() == 16
        monkeypatch.setattr(runtime, "cgroup_cpus", lambda: 4.5)  # a container allowed 4.5 CPUs
        assert runtime.usable_cores() == 4
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
        assert runtime.usable_cores() == 1  # never 0
        assert runtime.set_threads(3) == 3  # an explicit count is kept
    finally:
        torch.set_num_threads(threads)


def test_the_device_has_one_source_the_run_chose(monkeypatch):
    """Sections re-resolved params.device ("auto" -> "cuda", i.e. cuda:0 on every rank) beside rt.device
    (cuda:LOCAL_RANK): after setup, every resolution gives the run's own device."""
    monkeypatch.setattr(runtime, "_RUN_DEVICE", [])
    assert runtime.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(runtime, "_RUN_DEVICE", [torch.device("cuda", 3)])  # as setup leaves it on rank 3
    assert runtime.pick_device("auto") == torch.device("cuda", 3)
    assert runtime.pick_device("cuda") == torch.device("cuda", 3)
    assert runtime.pick_device("cpu") == torch.device("cpu")  # asked for explicitly: the CPU
    params = config.resolve("pipeline", "smoke", {"seed": 7, "threads": 1})
    monkeypatch.setattr(runtime, "_RUN_DEVICE", [])
    rt = runtime.setup(params)
    assert runtime.pick_device(params["device"]) == rt.device
