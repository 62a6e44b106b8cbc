"""Seeding, determinism, device and thread choice, and offline-hub detection.

``setup(params)`` is the first thing a notebook does after validating its parameters: the same seed
gives the same numbers on CPU (deterministic algorithms on), CUDA is used when present unless the
``device`` parameter says otherwise, and the hub's reachability is known before any model loads.
"""

from __future__ import annotations

import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from . import distributed

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: the offline-hub check (``hub_offline``) must
# answer in a fraction of a second, and importing torch alone takes 1-2 s.

HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    seed: int
    threads: int
    offline: bool

    def __str__(self) -> str:
        hub = "offline" if self.offline else "online"
        return f"device={self.device} ({device_name(self.device)}), threads={self.threads}, seed={self.seed}, hub {hub}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


_RUN_DEVICE: list = []  # the device runtime.setup chose for this run (this process's GPU under torchrun)


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error that says so.

    One source for the device: after :func:`setup`, ``auto`` and the device type the run chose give
    the run's own device (``cuda:<LOCAL_RANK>`` when several processes run), wherever a section
    resolves the ``device`` parameter again.
    """
    import torch

    if _RUN_DEVICE and str(preference) in ("auto", _RUN_DEVICE[0].type, str(_RUN_DEVICE[0])):
        return _RUN_DEVICE[0]
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no GPU; use device='auto' or 'cpu'")
    return torch.device(preference)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype that ``torch.autocast`` computes in for the ``precision`` parameter (None: fp32).

    ``auto``: bf16 on a CUDA GPU that supports it (fp32 master weights, fp32 reductions), fp32 on
    the CPU, where bf16 matmuls are slower and the cpu records were measured in fp32.
    """
    import torch

    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            if precision == "bf16":
                raise RuntimeError(f"precision='bf16' was asked for, but {torch.cuda.get_device_name(device)} has no bf16; "
                                   "use precision='fp16' or 'fp32'")
            return torch.float16
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")


def mixed_precision(precision: str, device: torch.device) -> str:
    """The ``accelerate`` mixed-precision name ("no", "bf16", "fp16") of the ``precision`` parameter."""
    import torch

    dtype = autocast_dtype(precision, device)
    return {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores"


def cgroup_cpus() -> float | None:
    """The container's CPU quota in CPUs (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None: no limit."""
    from pathlib import Path

    try:
        v2 = Path("/sys/fs/cgroup/cpu.max")
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if v1.is_file():
            quota, period = int(v1.read_text()), int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            return None if quota < 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def usable_cores(processes_here: int | None = None) -> int:
    """The cores this process may use: those of its CPU affinity (``taskset``, a scheduler's binding),
    no more than the container's quota, shared by the run's processes on this machine
    (``LOCAL_WORLD_SIZE``, set by torchrun / accelerate launch). At least 1.

    ``os.cpu_count()`` counts the machine's cores: 8 ranks on a 128-core node whose job was given 16
    would each start 128 threads.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    if processes_here is None:
        try:
            processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        except ValueError:
            processes_here = 1
    return max(1, cores // max(1, processes_here))


def set_threads(threads: int = 0) -> int:
    """Use ``threads`` CPU threads for torch (0 = this process's share of the usable cores,
    :func:`usable_cores`); returns the number in use."""
    import torch

    torch.set_num_threads(threads if threads > 0 else usable_cores())
    return torch.get_num_threads()


def hub_offline(probe: bool = True, timeout: float = 1.5) -> bool:
    """True when the Hugging Face hub cannot be used: HF_HUB_OFFLINE is set, or it does not answer.

    The probe is one HTTPS HEAD request with a short timeout (a bare TCP connect is not enough:
    some networks accept any connection and never answer), so an unreachable hub is known in
    ~1.5 s instead of the 20-45 s a ``from_pretrained`` would wait. Any HTTP answer, an error
    status included, means the hub is there.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    if not probe:
        return False
    request = urllib.request.Request(f"https://{HUB_HOST}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return False
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, OSError, TimeoutError):
        return True


def setup(params, deterministic: bool = True) -> Runtime:
    """Seed, choose device and threads for one run; returns what was chosen."""
    import torch

    seed_everything(params["seed"])
    device = pick_device(params["device"])
    if distributed.world_size() > 1:  # torchrun / accelerate launch: join the group, take this process's GPU
        device = distributed.init(device.type)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # so that "cuda" means this process's GPU everywhere below
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convolutions in what stays fp32
        torch.backends.cudnn.allow_tf32 = True
    if deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    threads = set_threads(params["threads"])
    _RUN_DEVICE[:] = [device]
    # only the gpu profile reads the hub: probe it there, once, and give every process the main one's answer
    offline = distributed.broadcast(hub_offline(probe=params.profile == "gpu"))
    return Runtime(device=device, seed=params["seed"], threads=threads, offline=offline)


# ---------------------------------------------------------------------------------- timing and load
BUSY_PERCENT = 20.0  # a process using more than this share of one core while we time is "other work"
T = TypeVar("T")


MATMUL_N = 256  # reference_speed's square fp32 products


def reference_speed(seconds: float = 0.3) -> dict[str, Any]:
    """This CPU's single-thread speed, a yardstick for comparing wall times across hosts: GFLOP/s of
    ``MATMUL_N``-square fp32 matrix products (the median of as many as fit in ``seconds``, at least 5), torch
    on one thread. Hosts that all print "AMD EPYC" ran the same Table 3 run 1.3x apart
    (``calibration/transformer/t3_speed.md``)."""
    import statistics

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(MATMUL_N, MATMUL_N, generator=g), torch.randn(MATMUL_N, MATMUL_N, generator=g)
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return {"matmul_gflops_1thread": round(2 * MATMUL_N**3 / statistics.median(times) / 1e9, 1), "n": MATMUL_N}


def machine_load(sample_s: float = 0.5) -> dict[str, Any]:
    """The machine's load now: the 1-minute load average, the cores, and the other processes using a
    CPU (over ``BUSY_PERCENT`` % in a ``sample_s`` sample; this process and its children excluded)."""
    info: dict[str, Any] = {"cores": os.cpu_count()}
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        info["loadavg_1m"] = None
    import psutil

    me = psutil.Process()
    mine = {me.pid} | {p.pid for p in me.children(recursive=True)}
    procs = [p for p in psutil.process_iter(["pid", "name"]) if p.info["pid"] not in mine]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    busy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct > BUSY_PERCENT:
            busy.append(f"{p.info['name']} (pid {p.info['pid']}, {pct:.0f} %)")
    info["busy_processes"] = busy
    return info


def timed(compute: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """Run a timing measurement and return ``(result, load)``: the machine's load sampled before and
    after it (design.md: a timing measured beside other heavy work is not testable)."""
    before = machine_load()
    result = compute()
    after = machine_load()
    return result, {"before": before, "after": after,
                    "busy_processes": sorted(set(before["busy_processes"]) | set(after["busy_processes"]))}


IDLE_TEXT = "other processes busy on the CPU while timing (before or after the timed work)"
IDLE_SOURCE = "ours: design.md: timings on an idle machine; one measured beside other work is not testable"


def idle_precondition(load: Mapping[str, Any] | None):
    """The precondition of every timing claim: no other process was busy while it was timed. ``None``
    (no load measured) leaves the claim not testable; :func:`load_note` names the busy processes."""
    from .claims import Precondition

    return Precondition(IDLE_TEXT, None if load is None else len(load.get("busy_processes", [])), "<=", 0, IDLE_SOURCE)


def load_note(load: Mapping[str, Any] | None) -> str:
    if load is None:
        return "the machine's load was not measured"
    busy = load.get("busy_processes", [])
    return f"timed beside {', '.join(busy)}" if busy else "timed on an otherwise idle machine"
