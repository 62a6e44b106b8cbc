"""Train the tiny test model with reproduce.train in 1 or N processes and save what came out.

    python tests/_train_worker.py OUT_DIR                          # one process
    torchrun --nproc_per_node 2 tests/_train_worker.py OUT_DIR [B]  # two CPU processes (gloo); B rows per global batch

Both see the same global batches; the main process writes ``OUT_DIR/weights.safetensors`` and
``OUT_DIR/result.json`` (per-step losses, number of processes). The tiny model, its batches and
its loss live here and tests/test_train.py imports them, so both test the same thing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from reproduce.train import TrainConfig, train

VOCAB, DIM, SEQ = 16, 24, 12  # tiny: one step is milliseconds
GLOBAL_BATCH = 8


class TinyLM(torch.nn.Module):
    """Embedding -> dropout -> GELU MLP -> vocabulary logits; learns next token = (token + 1) mod V."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.drop = torch.nn.Dropout(dropout)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.GELU(), torch.nn.Linear(DIM, VOCAB))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # B, T -> B, T, V
        return self.mlp(self.drop(self.embed(tokens)))


def make_model(dropout: float = 0.1, seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(dropout)


def make_batches(batch_size: int, seed: int = 1):
    """An endless, seeded stream of global batches ``{"tokens": B x T, "targets": B x T}``."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        tokens = torch.randint(0, VOCAB, (batch_size, SEQ), generator=generator)
        yield {"tokens": tokens, "targets": (tokens + 1) % VOCAB}


def lm_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Mean cross-entropy over the batch's tokens."""
    logits = model(batch["tokens"])  # B, T, V
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())  # (B*T) x V


def main(out: Path, global_batch: int = GLOBAL_BATCH) -> None:
    torch.set_num_threads(1)
    model = make_model(dropout=0.0)  # dropout draws differ between 1 and N processes: off for the equality
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # not scale-invariant, unlike Adam
    cfg = TrainConfig(steps=5, grad_accum=2, max_grad_norm=None, log_every=1, device="cpu", desc="1 or N processes")
    rows_seen = torch.zeros(1, dtype=torch.long)

    def counting_loss(model, batch):
        rows_seen.add_(batch["tokens"].shape[0])
        return lm_loss(model, batch)

    result = train(model, optimizer, make_batches(global_batch), counting_loss, cfg, tokens_in="tokens")
    accelerator = result.accelerator
    rows_per_process = accelerator.gather(rows_seen).tolist()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(weights, out / "weights.safetensors")
        (out / "result.json").write_text(json.dumps({"losses": result.losses, "rows_per_process": rows_per_process}))
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else GLOBAL_BATCH)
