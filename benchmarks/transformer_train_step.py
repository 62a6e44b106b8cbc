"""Training-step throughput: our Transformer vs ``torch.nn.Transformer`` of the same configuration.

Both models get the same embedding (shared, ×sqrt(d_model)), sinusoidal positions, tied output layer,
label-smoothed loss and Adam; only the encoder-decoder stacks differ (ours: reproduce.transformer;
reference: torch.nn.Transformer, post-LN, ReLU, no final LayerNorm). Steps alternate between the two
models so that machine load hits both alike; the ratio of median step times is printed.

    python benchmarks/transformer_train_step.py [--d-model 256 --layers 3 --batch 64 --length 32 --steps 12]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from reproduce.transformer.model import Transformer, TransformerConfig, causal_mask, label_smoothed_loss, sinusoidal_encoding


class TorchReference(nn.Module):
    """torch.nn.Transformer with the same embedding, positions and tied output layer as ours."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.register_buffer("pe", sinusoidal_encoding(cfg.max_len, cfg.d_model), persistent=False)
        self.core = nn.Transformer(cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.n_layers, cfg.d_ff, dropout=cfg.p_drop,
                                   batch_first=True)
        self.core.encoder.norm = nn.Identity()  # post-LN stacks as in the paper
        self.core.decoder.norm = nn.Identity()
        self.dropout = nn.Dropout(cfg.p_drop)

    def embed(self, tokens):
        return self.dropout(self.embedding(tokens) * math.sqrt(self.cfg.d_model) + self.pe[: tokens.size(1)])

    def forward(self, src, tgt_in):
        pad = src == self.cfg.pad_id
        h = self.core(self.embed(src), self.embed(tgt_in), tgt_mask=~causal_mask(tgt_in.size(1)),
                      src_key_padding_mask=pad, memory_key_padding_mask=pad)
        return h @ self.embedding.weight.t()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TransformerConfig(vocab_size=args.vocab, n_layers=args.layers, d_model=args.d_model, d_ff=4 * args.d_model,
                            n_heads=args.heads, p_drop=0.1)
    torch.manual_seed(0)
    models = {"ours": Transformer(cfg), "torch.nn.Transformer": TorchReference(cfg)}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9) for k, m in models.items()}
    src = torch.randint(4, args.vocab, (args.batch, args.length))
    tgt = torch.randint(4, args.vocab, (args.batch, args.length + 1))
    src[: args.batch // 4, -args.length // 4 :] = 0  # some padding, as in real batches
    times = {k: [] for k in models}
    for step in range(args.steps + 2):
        for name, model in models.items():
            model.train()
            t = time.perf_counter()
            loss = label_smoothed_loss(model(src, tgt[:, :-1]), tgt[:, 1:], 0.1, 0)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            if step >= 2:  # two warm-up steps
                times[name].append(time.perf_counter() - t)
    tokens = args.batch * args.length
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"config: N={args.layers} d_model={args.d_model} h={args.heads} vocab={args.vocab} batch={args.batch}x{args.length}, "
          f"threads={torch.get_num_threads()}, {args.steps} steps each, alternating")
    for k, v in med.items():
        print(f"  {k:22s} {v * 1e3:8.1f} ms/step  {tokens / v:9.0f} target tokens/s")
    print(f"throughput ratio ours / torch.nn.Transformer: {med['torch.nn.Transformer'] / med['ours']:.3f} (issue asks >= 0.9)")


if __name__ == "__main__":
    main()
