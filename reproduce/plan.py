"""``python -m reproduce plan <paper> --profile gpu [--gpu h100-80gb]``: what a run costs before it starts.

Per notebook section: the largest model's parameters, the peak GPU memory of its largest step, the
FLOPs of the whole section, the estimated GPU-hours on the named GPU and the download size. A
profile whose section does not fit the GPU's memory is refused (exit 1) with the parameter to change.

How the numbers are made (each paper's ``reproduce.<paper>.plan`` builds its sections):

- **FLOPs** are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real-shape step run on
  the *meta* device (shapes only: no memory, no time), forward and backward, then multiplied by the
  number of steps. Work that is not matmuls (decoding launches, k-means) is given by the paper module.
- **Peak memory** = weights + gradients + AdamW state (fp32 master weights: 4 + 4 + 8 bytes per
  trained parameter) + the activations one micro-batch keeps for backward, measured as the bytes of
  every tensor autograd saves during the meta forward (:func:`step_cost`), in the dtype the run
  computes in (fp32 here: an upper bound for bf16 autocast, which keeps some tensors in fp32 and
  others in bf16; attention through SDPA counts the math kernel's T x T weights, an upper bound for
  the fused kernels a GPU uses) + the largest transient a paper module adds (e.g. the logits).
  ``tests/test_plan.py`` checks the meta count against the same step on CPU tensors; the papers' plan
  tests check their formulas against CPU measurements at small size.
- **Memory the step needs besides** (:func:`memory_terms`, from what the paper module declares of its
  largest step in :class:`Overheads`), each a named entry of ``SectionPlan.memory``:
  ``CUDA context`` (:data:`CUDA_CONTEXT_BYTES` per process on the GPU), ``DDP gradient buckets``
  (:data:`DDP_BUCKET_BYTES_PER_PARAM` per trained parameter with several processes),
  ``autocast weight copies`` (:data:`AUTOCAST_BYTES_PER_PARAM` per fp32 parameter multiplied under
  16-bit autocast) and ``fp32 logits copy`` (what cross-entropy reads, where the module does not
  count it already).
- **GPU-hours** = FLOPs / (``MFU`` x the GPU's dense bf16 peak) + time that is not FLOP-bound.
  ``MFU`` = 0.4 is our assumption for every section (well-tuned dense training reaches 0.35-0.55 on
  A100/H100; we have no per-paper measurement to justify another value). ``python -m reproduce
  doctor`` measures each paper's MFU on the GPU at hand; ``plan --doctor FILE`` uses it instead.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MFU = 0.4  # ours: model FLOP utilisation assumed for every section (see the module docstring)
ADAMW_BYTES_PER_PARAM = 16  # fp32 weights + fp32 gradients + AdamW's two fp32 moments
# ours (an estimate, not measured here): the CUDA context of one process (driver state, the kernels
# loaded, cuBLAS/cuDNN workspaces), which torch.cuda.memory_allocated does not show. `doctor` measures
# it on the box (its environment check: cuda_context_bytes; each real step: measured_peak_bytes).
CUDA_CONTEXT_BYTES = 0.5e9
# DistributedDataParallel with gradient_as_bucket_view=False (accelerate's DistributedDataParallelKwargs
# default) copies every gradient into its all-reduce buckets (bucket_cap_mb=25 each, as many as the
# gradients need): a second fp32 copy of the gradients (torch's DDP docstring: views "can reduce peak
# memory usage, where the saved memory size will be equal to the total gradients size").
DDP_BUCKET_BYTES_PER_PARAM = 4
# torch.autocast caches the 16-bit copy of every fp32 leaf weight (requires_grad) it casts, for the
# whole autocast region (torch.autocast docs, ``cache_enabled``): 2 bytes per such parameter.
AUTOCAST_BYTES_PER_PARAM = 2


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float  # usable memory, GB (1e9 bytes)
    bf16_tflops: float  # dense bf16 tensor-core peak (vendor data sheet, no sparsity)


GPUS = {g.name: g for g in (
    GPU("a100-40gb", 40, 312), GPU("a100-80gb", 80, 312), GPU("h100-80gb", 80, 989),
    GPU("h200-141gb", 141, 989), GPU("l40s-48gb", 48, 362), GPU("rtx4090-24gb", 24, 165),
)}
DEFAULT_GPU = "a100-80gb"


@dataclass(frozen=True)
class Overheads:
    """What a section's largest step holds besides what its paper module counts (:func:`memory_terms`)."""

    trained_parameters: int = 0  # trained through reproduce.train (DDP's buckets with several processes)
    autocast_parameters: int = 0  # fp32 parameters multiplied under 16-bit autocast (its cached copies)
    logits_fp32_bytes: float = 0.0  # the fp32 logits cross-entropy reads (0: counted by the module, or none)
    processes: int = 1  # processes sharing the GPU in this section (a CUDA context each)

    def __add__(self, other: "Overheads") -> "Overheads":
        """Two steps at once on one GPU (e.g. two processes side by side): their overheads add up."""
        return Overheads(self.trained_parameters + other.trained_parameters,
                         self.autocast_parameters + other.autocast_parameters,
                         self.logits_fp32_bytes + other.logits_fp32_bytes, self.processes + other.processes)


def training_overheads(trained_parameters: int, autocast: bool, logits_fp32_bytes: float = 0.0) -> Overheads:
    """A training step through reproduce.train: DDP buckets, autocast's copies when it computes in 16 bits."""
    return Overheads(trained_parameters, trained_parameters if autocast else 0, logits_fp32_bytes)


def gpu_autocast(params) -> bool:
    """True when ``params.precision`` makes the run compute in 16 bits on a GPU (``auto``, ``bf16``, ``fp16``)."""
    return params.precision != "fp32"


def memory_terms(overheads: Overheads, processes: int = 1) -> dict[str, float]:
    """The named bytes a step needs besides its paper module's count (one process's GPU)."""
    ddp = processes > 1
    return {
        "CUDA context": CUDA_CONTEXT_BYTES * overheads.processes,
        "DDP gradient buckets": DDP_BUCKET_BYTES_PER_PARAM * overheads.trained_parameters if ddp else 0.0,
        "autocast weight copies": AUTOCAST_BYTES_PER_PARAM * overheads.autocast_parameters,
        "fp32 logits copy": overheads.logits_fp32_bytes,
    }


MODULE_TERM = "steps (paper module)"  # SectionPlan.memory's entry for what the paper module counted


@dataclass
class SectionPlan:
    """The cost of one notebook section on the gpu profile."""

    section: str
    what: str  # what runs, e.g. "3 LMs x 1 seed x 20,000 steps of 8 x 2048 tokens"
    parameters: int  # the largest model's parameters
    peak_bytes: float  # peak GPU memory of the section's largest step (one process)
    flops: float  # all the section's FLOPs (every process together)
    download_bytes: float = 0.0
    other_hours: float = 0.0  # GPU time that FLOPs do not measure (launch-bound decoding, ...)
    fix: str = ""  # the parameter that lowers peak memory, named when it does not fit
    notes: str = ""
    overheads: Overheads = field(default_factory=Overheads)  # of the largest step (memory_terms)
    memory: dict[str, float] = field(default_factory=dict)  # named terms summing to peak_bytes (add_memory_terms)

    def gpu_hours(self, gpu: GPU, mfu: float = MFU) -> float:
        return self.flops / (mfu * gpu.bf16_tflops * 1e12) / 3600 + self.other_hours

    def add_memory_terms(self, processes: int = 1) -> None:
        """Add :func:`memory_terms` to ``peak_bytes``; ``memory`` names every part (once: ``make`` calls it).

        A section that does not use the GPU (``peak_bytes`` 0) gets none."""
        if self.memory:
            raise ValueError(f"section {self.section!r} already has its memory terms")
        terms = {MODULE_TERM: self.peak_bytes}
        if self.peak_bytes > 0:
            terms |= memory_terms(self.overheads, processes)
        self.memory = terms
        self.peak_bytes = sum(terms.values())


@dataclass
class StepCost:
    """One step measured on the meta device."""

    flops: float  # forward (+ backward when trained)
    saved_bytes: float  # bytes of the tensors autograd saves for backward (the activations held at the loss)
    parameters: int
    trained_parameters: int
    output_bytes: float = 0.0

    def train_peak(self, extra_bytes: float = 0.0) -> float:
        """Weights, gradients and AdamW state of the trained parameters, frozen weights, activations."""
        frozen = self.parameters - self.trained_parameters
        return self.trained_parameters * ADAMW_BYTES_PER_PARAM + frozen * 4 + self.saved_bytes + extra_bytes


def step_cost(build: Callable[[], Any], run: Callable[[Any], Any], *, train: bool = True) -> StepCost:
    """Build a model on the meta device and run one step of ``run(model) -> loss`` (backward when ``train``).

    ``build`` is called under ``torch.device("meta")``: parameters have shapes, no storage. ``run``
    makes its inputs on the meta device too (``torch.zeros(..., device="meta")``).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad) if train else 0
    counter = FlopCounterMode(display=False)
    with counter:
        with count_saved() as saved:
            out = run(model)
        if train:
            out.backward()
    out_bytes = out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0.0
    return StepCost(float(counter.get_total_flops()), float(saved.bytes), params, trained, float(out_bytes))


class SavedBytes:
    bytes: int = 0


@contextlib.contextmanager
def count_saved():
    """Count the bytes of the tensors autograd saves for backward inside the block (``.bytes``).

    Weights are left out (they are counted apart), and a tensor saved by several nodes (or views of
    one tensor) counts once. The same count on meta and on real tensors is what ``step_cost`` relies on.
    """
    import torch

    counted, seen = SavedBytes(), set()

    def pack(t):
        base = t if t._base is None else t._base
        if not isinstance(base, torch.nn.Parameter) and id(base) not in seen:
            seen.add(id(base))
            counted.bytes += base.numel() * base.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield counted


def paper_plan(paper: str, params) -> list[SectionPlan]:
    """The sections of ``paper`` under ``params`` (``reproduce.<paper>.plan.sections(params)``)."""
    module = importlib.import_module(f"reproduce.{paper}.plan")
    return module.sections(params)


@dataclass
class Verdict:
    paper: str
    gpu: GPU
    sections: list[SectionPlan] = field(default_factory=list)
    mfu: float = MFU  # of every section of the paper
    mfu_source: str = "assumed (plan.MFU)"  # where ``mfu`` comes from (a doctor file names itself)
    processes: int = 1  # data-parallel processes (DDP's buckets in peak_bytes)

    @property
    def too_big(self) -> list[SectionPlan]:
        return [s for s in self.sections if s.peak_bytes > self.gpu.memory_gb * 1e9]

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours(self.gpu, self.mfu) for s in self.sections)

    @property
    def peak_bytes(self) -> float:
        return max((s.peak_bytes for s in self.sections), default=0.0)


def make(paper: str, params, gpu: str = DEFAULT_GPU, *, processes: int = 1, mfu: float = MFU,
         mfu_source: str = "assumed (plan.MFU)") -> Verdict:
    """The paper's sections on ``gpu``, their memory terms added for ``processes`` data-parallel processes."""
    if gpu not in GPUS:
        from .config import ParamError

        raise ParamError(f"unknown GPU {gpu!r}; one of {', '.join(GPUS)}")
    sections = paper_plan(paper, params)
    for s in sections:
        s.add_memory_terms(processes)
    return Verdict(paper, GPUS[gpu], sections, mfu, mfu_source, processes)


def match_gpu(name: str, memory_bytes: float | None = None) -> GPU | None:
    """The :data:`GPUS` entry of a device name (``torch.cuda.get_device_name``), the nearest memory
    deciding between sizes; None when none matches. H100 PCIe / NVL are not the SXM part of
    ``h100-80gb`` (756 / 835 dense bf16 TFLOP/s, not 989): no match."""
    lowered = name.lower().replace(" ", "").replace("-", "")
    if "h100" in lowered and ("pcie" in lowered or "nvl" in lowered):
        return None
    found = [g for g in GPUS.values() if g.name.split("-")[0].replace("rtx", "") in lowered]
    if not found:
        return None
    if memory_bytes is None:
        return found[0]
    return min(found, key=lambda g: abs(g.memory_gb * 1e9 - memory_bytes))


def human_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if n < 10 * size else f"{n / size:.0f}{unit}"
    return f"{n:.0f}"


def human_flops(n: float) -> str:
    if n <= 0:
        return "0"
    exp = int(math.floor(math.log10(n)))
    return f"{n / 10 ** exp:.1f}e{exp}"


def memory_text(s: SectionPlan) -> str:
    """The peak and, under it, the terms added to the paper module's count (those that are not zero)."""
    extra = [f"{name} {human_bytes(b)}" for name, b in s.memory.items() if name != MODULE_TERM and b > 0]
    return human_bytes(s.peak_bytes) + ("\n(+ " + ", ".join(extra) + ")" if extra else "")


def table_rows(verdict: Verdict) -> list[dict[str, str]]:
    rows = []
    for s in verdict.sections:
        rows.append({"section": s.section, "what": s.what, "parameters": human_count(s.parameters),
                     "peak memory": memory_text(s), "FLOPs": human_flops(s.flops),
                     "GPU-hours": f"{s.gpu_hours(verdict.gpu, verdict.mfu):.2f}",
                     "download": human_bytes(s.download_bytes) if s.download_bytes else "–",
                     "fits": "yes" if s.peak_bytes <= verdict.gpu.memory_gb * 1e9 else f"NO: {s.fix}"})
    return rows


def markdown(verdicts: list[Verdict]) -> str:
    """The README table: one row per paper (peak memory, GPU-hours) on each verdict's GPU."""
    lines = ["| notebook | GPU | peak memory (largest section) | GPU-hours (all sections) | download |",
             "|---|---|---|---|---|"]
    for v in verdicts:
        download = sum(s.download_bytes for s in v.sections)
        lines.append(f"| {v.paper} | 1 x {v.gpu.name} | {human_bytes(v.peak_bytes)} | {v.gpu_hours:.1f} | "
                     f"{human_bytes(download) if download else '–'} |")
    return "\n".join(lines)


README_MARKERS = ("<!-- gpu-plan:start -->", "<!-- gpu-plan:end -->")


def write_readmes(table: str) -> list:
    """Put ``table`` between the gpu-plan markers of README.md and README.ko.md."""
    from .paths import REPO_ROOT

    start, end = README_MARKERS
    written = []
    for name in ("README.md", "README.ko.md"):
        path = REPO_ROOT / name
        text = path.read_text(encoding="utf-8")
        if start not in text or end not in text:
            raise ValueError(f"{name} has no {start} ... {end} markers")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        path.write_text(f"{head}{start}\n{table}\n{end}{tail}", encoding="utf-8")
        written.append(path)
    return written
