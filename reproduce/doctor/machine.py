"""The machine checks of ``python -m reproduce doctor``: environment, SDPA kernels, a process group."""

from __future__ import annotations

import os
import shutil
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import runtime
from .check import Skipped, gb, one_line, sync

LOW_DISK_BYTES = 30e9  # ours: the gpu profiles download ~20 GB (plan's download column), and checkpoint beside


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _free_disk(path: Path) -> dict[str, Any]:
    existing = path
    while not existing.exists() and existing != existing.parent:  # a cache not made yet: the disk it will be on
        existing = existing.parent
    return {"path": str(path), "free_bytes": shutil.disk_usage(existing).free}


def check_environment(device) -> dict[str, Any]:
    import torch

    from reproduce.paths import REPO_ROOT

    out: dict[str, Any] = {"versions": {name: _version(name) for name in
                                        ("torch", "transformers", "accelerate", "datasets", "numba")}}
    import platform

    out["versions"]["python"] = platform.python_version()
    notes = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        nccl = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else None
        free, total = torch.cuda.mem_get_info(device)
        context = total - free - torch.cuda.memory_reserved(device)  # driver + context (+ other processes on it)
        out["cuda"] = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                       "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
                       "gpu": props.name, "gpu_memory_bytes": props.total_memory, "gpus": torch.cuda.device_count(),
                       "capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported(),
                       "cuda_context_bytes": context}
        if not torch.cuda.is_bf16_supported():
            notes.append("no bf16: precision='auto' falls back to fp16")
    out["tf32"] = {"matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                   "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                   "float32_matmul_precision": torch.get_float32_matmul_precision(),
                   "note": "reproduce.runtime.setup turns both allow_tf32 flags on for a CUDA run"}
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = {"affinity": affinity, "cpu_count": os.cpu_count(), "cgroup": {"cpus": runtime.cgroup_cpus()},
            "usable_cores": runtime.usable_cores(), "torch_threads": torch.get_num_threads()}
    out["cpu"] = cpus
    if affinity is not None and affinity < (os.cpu_count() or 0):
        notes.append(f"this process may use {affinity} of {os.cpu_count()} cores (affinity)")
    quota = cpus["cgroup"].get("cpus")
    if quota is not None and quota < (affinity or os.cpu_count() or 1):
        notes.append(f"the cgroup allows {quota:g} CPUs: data loading and TOVA's CPU replay get no more")
    try:
        from huggingface_hub import constants

        hub_cache = Path(constants.HF_HUB_CACHE)
    except ImportError:
        hub_cache = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
    out["disk"] = {"hf_cache": _free_disk(hub_cache), "repo": _free_disk(REPO_ROOT)}
    for where, disk in out["disk"].items():
        if disk["free_bytes"] < LOW_DISK_BYTES:
            notes.append(f"{where}: only {gb(disk['free_bytes'])} free ({disk['path']})")
    out["hub"] = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"), "HF_TOKEN_set": bool(os.environ.get("HF_TOKEN"))}
    out["notes"] = notes
    gpu = (f"{out['cuda']['gpu']} {gb(out['cuda']['gpu_memory_bytes'])}, context {gb(out['cuda']['cuda_context_bytes'])}, "
           if "cuda" in out else "")
    out["summary"] = (f"torch {out['versions']['torch']}, {gpu}{affinity}/{os.cpu_count()} cores, "
                      f"free {gb(out['disk']['hf_cache']['free_bytes'])}" + (f"; {len(notes)} note(s)" if notes else ""))
    return out


# ----------------------------------------------------------------------------- SDPA backends
def check_sdpa(device) -> dict[str, Any]:
    """Each SDPA backend on a (B, H, T, D) = (2, 4, 128, 64) causal attention, forward and backward."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 128, 64, generator=g).to(device, dtype) for _ in range(3))  # B, H, T, D
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    outputs, results = {}, {}
    for name, backend in backends.items():
        try:
            qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)  # B, H, T, D
                out.float().square().mean().backward()
            sync(device)
            outputs[name] = out.detach().float()
            results[name] = {"ok": True}
        except Exception as error:  # noqa: BLE001 - an unavailable backend is a result, not a crash
            results[name] = {"ok": False, "error": one_line(error)}
    for name, out in outputs.items():
        if "math" in outputs:
            results[name]["max_abs_diff_vs_math"] = (out - outputs["math"]).abs().max().item()
    runs = [n for n, r in results.items() if r["ok"]]
    numbers: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "backends": results,
                               "summary": f"{', '.join(runs) or 'none'} run ({str(dtype).removeprefix('torch.')})"}
    if not results["math"]["ok"]:
        numbers["failure"] = f"the math SDPA kernel fails: {results['math']['error']}"
    elif device.type == "cuda" and not (results["flash"]["ok"] or results["efficient"]["ok"]):
        numbers["failure"] = "no fused SDPA kernel runs on this GPU: attention falls back to the math kernel (T x T memory)"
    return numbers


# ----------------------------------------------------------------------------- process group
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_process_group(device, timeout_s: float = 60.0) -> dict[str, Any]:
    """A 1-process group on 127.0.0.1 (NCCL on CUDA, gloo on the CPU) and one all_reduce, then destroyed."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("torch was built without torch.distributed")
    if dist.is_initialized():
        raise Skipped("a process group is already initialised here (launched by torchrun?)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    port = _free_port()
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's communicator on this GPU (as reproduce.distributed.init)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0,
                            timeout=timedelta(seconds=timeout_s))
    try:
        init_s = time.perf_counter() - t0
        x = torch.arange(4, dtype=torch.float32, device=device)
        dist.all_reduce(x)  # sum over one process: unchanged
        sync(device)
        if not torch.equal(x.cpu(), torch.arange(4, dtype=torch.float32)):
            raise RuntimeError(f"all_reduce over one process changed the tensor: {x.tolist()}")
    finally:
        dist.destroy_process_group()
    return {"backend": backend, "port": port, "init_s": init_s,
            "summary": f"{backend}: init {init_s:.1f} s, all_reduce ok"}
