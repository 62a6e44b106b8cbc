"""Parameters of the RetNet notebook (Sun et al., 2023, arXiv:2307.08621) and its three profiles.

smoke: every code path on tiny sizes (numbers meaningless). cpu: the honest small-scale run on a
2-core CPU (~20 min): decode cost up to 4096 tokens, training cost up to 4096 tokens, and 8 small
LMs (d 128, 2 layers, 128-token windows, 200 steps) x 2 seeds on the packaged novels. gpu: the
paper's 1.3B shape (Table 2: hidden 2048, 24 layers; §3.1: d_k 256, so 8 heads) on a hub dataset.
"""

from reproduce.config import Param, PaperSpec

# The Table 5/6 rows, declared once (experiments builds the models from it): name -> (table, label,
# RetNetConfig overrides; None = the Transformer baseline). Plain data: this module imports no torch.
VARIANTS: dict[str, tuple[str, str, dict | None]] = {
    "transformer": ("Table 5", "Transformer", None),
    "retnet": ("Table 5", "RetNet", {}),
    # Linear attention = retention with gamma = 1 and no gate; the FFN grows from 2d to 3d to give back
    # the gate's 2 d^2 parameters, so every model has 12 d^2 per block.
    "linear_attention": ("Table 5", "Linear attention", {"decay": "none", "use_gate": False, "ffn_factor": 3}),
    "no_gate": ("Table 6", "− swish gate", {"use_gate": False}),
    "no_groupnorm": ("Table 6", "− GroupNorm", {"head_norm": "none"}),
    "no_decay": ("Table 6", "− γ decay", {"decay": "none"}),
    "single_decay": ("Table 6", "− multi-scale decay", {"decay": "single"}),
    "small_heads": ("Table 6", "reduce head dimension", {"num_heads": 2}),  # num_heads: a factor on the shape's heads
}

SPEC = PaperSpec(
    name="retnet",
    plots="reproduce.retnet.plots",
    sections="reproduce.retnet.sections",
    notebook="03_retnet.ipynb",
    title="Retentive Network (Sun et al., 2023)",
    description="Three equal forms of retention, inference and training cost, small-LM comparison and ablations",
    params={
        # 1. forms agree
        "forms_length": Param("int", 37, "tokens compared across the three forms", min=2, max=4096),
        "forms_chunks": Param("list[int]", [1, 3, 8, 37], "chunk sizes of the chunkwise form", min=1, min_len=1),
        # 2. inference cost (Figure 6)
        "decode_lengths": Param("list[int]", [256, 512, 1024, 2048, 4096], "context lengths for decoding cost",
                                min=1, min_len=2),
        "decode_batch": Param("int", 8, "sequences decoded together", min=1),
        "decode_steps": Param("int", 10, "timed decode steps per point (median)", min=1),
        "cost_hidden": Param("int", 512, "width of the decode-cost models", min=8),
        "cost_layers": Param("int", 2, "depth of the decode-cost models", min=1),
        "cost_heads": Param("int", 4, "heads of the decode-cost models", min=1),
        # 3. training cost (Table 4)
        "train_lengths": Param("list[int]", [512, 1024, 2048, 4096], "sequence lengths for training cost",
                               min=2, min_len=2),
        "train_hidden": Param("int", 256, "width of the measured token-mixing layer", min=8),
        "train_heads": Param("int", 2, "heads of the measured layer", min=1),
        "train_batch": Param("int", 1, "sequences per training step", min=1),
        "train_chunk": Param("int", 256, "chunk size of chunkwise retention", min=1),
        "train_reps": Param("int", 2, "timed steps per point", min=1),
        # 4./5. language models (Tables 5 and 6)
        "data": Param("str", "novels", "training text: the packaged novels, or a hub dataset (gpu)",
                      choices=("novels", "wikitext-103")),
        "corpus_fraction": Param("float", 1.0, "fraction of each training book used (smoke: a slice)", min=0.001, max=1.0),
        "lm_vocab": Param("int", 1024, "BPE vocabulary trained on the training split", min=258),
        "lm_hidden": Param("int", 128, "model width d", min=8),
        "lm_layers": Param("int", 2, "blocks", min=1),
        "lm_heads": Param("int", 4, "heads (d_k = d / heads)", min=1),
        "lm_seq": Param("int", 128, "training window in tokens", min=4),
        "lm_batch": Param("int", 8, "windows per step", min=1),
        "lm_steps": Param("int", 200, "optimizer steps per run (same for every model)", min=1),
        "lm_lr": Param("float", 3e-3, "peak learning rate (AdamW, warm-up 10%, linear decay)", min=1e-6, max=1.0),
        "lm_eval_windows": Param("int", 64, "validation windows for perplexity", min=1),
        "seeds": Param("list[int]", [0, 1], "seeds per model (data order and initialisation)", min=0, min_len=1),
        "variants": Param("list[str]", list(VARIANTS), "models to train (Table 5 and Table 6 rows)",
                          choices=tuple(VARIANTS), min_len=1),
        "gamma_schedule": Param("str", "paper", "decay schedule: §3.1's (paper) or eq. (8)'s default",
                                choices=("paper", "eq8")),
        "head_norm": Param("str", "groupnorm", "per-head norm: the paper's GroupNorm or torchscale's RMSNorm",
                           choices=("groupnorm", "rmsnorm")),
    },
    profiles={
        "smoke": {
            "forms_length": 9, "forms_chunks": [1, 4, 9],
            "decode_lengths": [16, 64], "decode_batch": 2, "decode_steps": 2, "cost_hidden": 32, "cost_layers": 1,
            "cost_heads": 2,
            "train_lengths": [32, 64], "train_hidden": 32, "train_heads": 2, "train_chunk": 16, "train_reps": 1,
            "corpus_fraction": 0.02, "lm_vocab": 300, "lm_hidden": 32, "lm_layers": 1, "lm_heads": 2, "lm_seq": 32,
            "lm_batch": 2, "lm_steps": 3, "lm_eval_windows": 2, "seeds": [0],
        },
        # One thread: on a shared 2-core machine, OpenMP threads spin at every barrier and a busy
        # neighbour turns a 30 ms decode step into 900 ms (measured); one thread keeps timings honest.
        "cpu": {"threads": 1},
        "gpu": {
            "decode_lengths": [1024, 2048, 4096, 8192], "decode_batch": 8, "cost_hidden": 2048, "cost_layers": 24,
            "cost_heads": 8,
            "train_lengths": [2048, 4096, 8192], "train_hidden": 2048, "train_heads": 8, "train_batch": 4,
            "train_chunk": 512, "train_reps": 5,
            "data": "wikitext-103", "lm_vocab": 32000, "lm_hidden": 2048, "lm_layers": 24, "lm_heads": 8,
            "lm_seq": 2048, "lm_batch": 8, "lm_steps": 20000, "lm_lr": 6e-4, "lm_eval_windows": 256,
            "seeds": [0], "variants": ["transformer", "retnet"],
        },
    },
    artifacts={
        "§2.1 eqs. (5)-(7)": "1. Forms agree",
        "Figure 6": "2. Inference cost",
        "Table 4": "3. Training cost",
        "Table 5": "4. Language modelling",
        "Table 6": "5. Ablations",
    },
)
