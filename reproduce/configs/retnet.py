"""Parameters of the RetNet notebook (Sun et al., 2023, arXiv:2307.08621) and its three profiles.

smoke: every code path on tiny sizes (numbers meaningless). cpu: the honest small-scale run on a
2-core CPU with two single-threaded workers: decode cost up to 4096 tokens, training cost up to
4096 tokens (5 interleaved timing rounds), and 9 small LMs (3 Table 5 rows, 5 Table 6 rows and the
no-mixer control; d 128, 2 layers, 128-token windows, 1000 steps) x 3 seeds on the packaged
novels (five train, one validates), after a learning-rate sweep of every row on a seed of its own
(lm_sweep_seed, disjoint from seeds). gpu: the paper's 1.3B shape (Table 2: hidden 2048, 24 layers;
§3.1: d_k 256, so 8 heads) on a hub dataset.

Wall time of the cpu profile on 2 idle cores (estimate, issue #26): the record at 91d4c20 took 22.7
min with 33 LM runs (27 reported + 6 sweep runs not reused); each 1000-step run takes ~65 s on one
core, so the LMs were ~18 min of it and the other sections ~5 min. Now 27 reported runs + 28 sweep
runs (Transformer 3, RetNet 3, Linear Transformer 4, five ablations and the control 3 each) = 55
runs: ~30 min of LMs in two workers, ~35 min in all (budget 45 min).

Budget (calibrated on main at 188ab36, issue #16; 1 thread): at 200 steps with a 20-step warm-up no
model used its context (the no-mixer control, 97.6 PPL, beat RetNet, 139.8, and the Transformer,
198.7, whose loss sat on the unigram plateau for steps 20-60); at 1000 steps with a 100-step warm-up
the mixers beat the control (Transformer 37.9, RetNet 50.9, control 63.2 at lr 3e-3). Hence 1000
steps with a fixed 100-step warm-up.

Learning-rate grids: calibrated with this code (torchscale init), seed 0, 1000 steps, validation
PPL on 512 windows: Transformer 43.7 / 36.3 / 71.4 at 1e-3 / 3e-3 / 1e-2; RetNet 53.9 / 46.4 /
42.9 / 41.8 at 1e-3 / 3e-3 / 1e-2 / 3e-2 (control 59.4 and "- GroupNorm" 40.6 at 3e-3); the former
"linear attention" row (RetNet with gamma = 1, no gate; dropped) 64.4 / 61.3 / 65.2 at 3e-3 / 1e-2 /
3e-2. Each grid spans its row's best rate with a step of ~3x on either side (RetNet's best, 3e-2,
was at the edge of the calibration, hence 1e-1). The Table 6 rows and the control share one grid,
3e-3 / 1e-2 / 3e-2: RetNet's neighbourhood and below it, where "- GroupNorm" and the control were
measured. The Linear Transformer (elu + 1 feature maps) was never calibrated: its grid is wider,
1e-3 to 3e-2. (That calibration used seed 0, a reported seed; the sweeps of the record now run on
lm_sweep_seed.)
"""

from reproduce.config import Param, PaperSpec

# The Table 5/6 rows and the control, declared once (reproduce.retnet.baselines builds the models from it):
# name -> (table, label, learning-rate grid, RetNetConfig overrides; None = not a RetNet: the Transformer
# (transformers' LLaMA) or the Linear Transformer (reproduce.retnet.baselines)). Every row sweeps its own
# learning rate over the grid named here (parameter lm_lrs_<grid>) on the sweep seed, disjoint from the
# reported seeds; the Table 6 rows and the control share one grid around RetNet's calibrated rate.
# Plain data: this module imports no torch.
VARIANTS: dict[str, tuple[str, str, str, dict | None]] = {
    "transformer": ("Table 5", "Transformer", "transformer", None),
    "retnet": ("Table 5", "RetNet", "retnet", {}),
    # Katharopoulos et al. (2020): elu + 1 feature maps, a positive normaliser, 12 d^2 per block. (The
    # former "linear attention" row, RetNet with gamma = 1 and no gate, was an ablation of RetNet, not
    # this baseline; it is dropped: "- gamma decay" and "- swish gate" test its two parts one at a time.)
    "linear_transformer": ("Table 5", "Linear Transformer", "linear_transformer", None),
    "no_gate": ("Table 6", "− swish gate", "ablations", {"use_gate": False}),
    "no_groupnorm": ("Table 6", "− GroupNorm", "ablations", {"head_norm": "none"}),
    "no_decay": ("Table 6", "− γ decay", "ablations", {"decay": "none"}),
    "single_decay": ("Table 6", "− multi-scale decay", "ablations", {"decay": "single"}),
    "small_heads": ("Table 6", "reduce head dimension", "ablations", {"num_heads": 2}),  # num_heads: a factor on the shape's heads
    # The control: RetNet with retention's output projection zeroed and frozen (embeddings + FFN only).
    # A mixer row that does not beat it has not learnt to use its context.
    "no_mixer": ("Control", "no mixer (embeddings + FFN)", "ablations", {"zero_mixer": True}),
}
LR_GRIDS = tuple(dict.fromkeys(grid for _, _, grid, _ in VARIANTS.values()))  # parameters lm_lrs_<grid>

def _micro_batch_divides(v) -> str | None:
    micro = v["lm_micro_batch"]
    if micro and (micro > v["lm_batch"] or v["lm_batch"] % micro):
        return f"lm_micro_batch={micro} must divide lm_batch={v['lm_batch']} (or be 0: the whole batch)"
    return None


def _warmup_within_steps(v) -> str | None:
    if v["lm_warmup"] > v["lm_steps"]:
        return f"lm_warmup={v['lm_warmup']} exceeds lm_steps={v['lm_steps']}; lower lm_warmup"
    return None


def _heads_divide(v) -> str | None:
    """Every head gets an even key dim (the rotation pairs dimensions); "reduce head dimension" doubles the heads."""
    shapes = [("cost_hidden", "cost_heads", 1), ("train_hidden", "train_heads", 1), ("lm_hidden", "lm_heads", 1)]
    if "small_heads" in v["variants"]:
        shapes.append(("lm_hidden", "lm_heads", VARIANTS["small_heads"][3]["num_heads"]))
    for width, heads, factor in shapes:
        h = v[heads] * factor
        if v[width] % h or (v[width] // h) % 2:
            what = f"{heads}={v[heads]}" + (f" x {factor} (variant small_heads)" if factor != 1 else "")
            return f"{width}={v[width]} must be a multiple of 2 x {what}: each head needs an even key dim"
    return None


def _sweep_seed_disjoint(v) -> str | None:
    if v["lm_sweep_seed"] in v["seeds"]:
        return (f"lm_sweep_seed={v['lm_sweep_seed']} is one of seeds={v['seeds']}: the learning rate is chosen on a "
                "seed the record does not report (design.md); pick another lm_sweep_seed")
    return None


def _fraction_is_for_novels(v) -> str | None:
    if v["data"] != "novels" and v["corpus_fraction"] != 1.0:
        return f"corpus_fraction slices the packaged novels only; with data={v['data']!r} leave it at 1.0"
    return None


def hub_datasets(values) -> list[dict]:
    """The hub datasets a run reads (``python -m reproduce run`` opens each before the notebook starts)."""
    if values["data"] == "novels":
        return []
    return [{"param": "wikitext_dataset", "id": values["wikitext_dataset"], "config": values["wikitext_config"] or None,
             "split": split, "columns": [values["wikitext_text_column"]],
             "alternative": "use data='novels' (profile=cpu), which reads the packaged novels"}
            for split in (values["wikitext_train_split"], values["wikitext_valid_split"])]


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
        "train_reps": Param("int", 5, "timed steps per point (design.md: >= 5 repetitions for a timing)", min=1),
        # 4./5. language models (Tables 5 and 6)
        "data": Param("str", "novels", "training text: the packaged novels, or a hub dataset in WikiText's layout (gpu)",
                      choices=("novels", "wikitext-103")),
        # data='wikitext-103': where the text comes from (a hub id or a local parquet folder in the hub layout)
        "wikitext_dataset": Param("str", "Salesforce/wikitext", "hub dataset id (or local folder) of data='wikitext-103'"),
        "wikitext_config": Param("str", "wikitext-103-raw-v1", "its config ('' for none)"),
        "wikitext_train_split": Param("str", "train", "its split streamed whole for training"),
        "wikitext_valid_split": Param("str", "validation", "its split that validates (reported PPL, lr choice)"),
        "wikitext_text_column": Param("str", "text", "its text column"),
        "tokenizer_rows": Param("int", 200_000, "non-empty training rows the BPE tokenizer is trained on (hub data)",
                                min=1),
        "corpus_fraction": Param("float", 1.0, "fraction of each training book used (smoke: a slice)", min=0.001, max=1.0),
        "lm_vocab": Param("int", 1024, "BPE vocabulary trained on the training split", min=258),
        "lm_hidden": Param("int", 128, "model width d", min=8),
        "lm_layers": Param("int", 2, "blocks", min=1),
        "lm_heads": Param("int", 4, "heads (d_k = d / heads)", min=1),
        "lm_seq": Param("int", 128, "training window in tokens", min=4),
        "lm_batch": Param("int", 8, "windows per step", min=1),
        "lm_micro_batch": Param("int", 0, "windows per forward/backward on each process, accumulated to lm_batch "
                                "(0: its whole share)", min=0, state=False),
        "lm_checkpointing": Param("bool", False, "activation checkpointing per block (recompute in backward)", state=False),
        "lm_checkpoint_every": Param("int", 0, "steps between training checkpoints for resume (0: none)", min=0),
        "lm_steps": Param("int", 1000, "optimizer steps per run (same for every model)", min=1),
        "lm_warmup": Param("int", 100, "linear warm-up steps (then linear decay to 0)", min=0),
        # One short lr sweep per row, on lm_sweep_seed (disjoint from seeds) and the selection windows
        # (disjoint from the reported ones); a grid of one rate trains at it without a sweep. Each grid
        # spans its rows' best calibrated rate with a step of ~3x (module docstring).
        "lm_lrs_transformer": Param("list[float]", [1e-3, 3e-3, 1e-2], "peak lrs swept for the Transformer (AdamW)",
                                    min=1e-6, max=1.0, min_len=1),
        "lm_lrs_retnet": Param("list[float]", [1e-2, 3e-2, 1e-1], "peak lrs swept for RetNet",
                               min=1e-6, max=1.0, min_len=1),
        "lm_lrs_linear_transformer": Param("list[float]", [1e-3, 3e-3, 1e-2, 3e-2],
                                           "peak lrs swept for the Linear Transformer (uncalibrated: a wider grid)",
                                           min=1e-6, max=1.0, min_len=1),
        "lm_lrs_ablations": Param("list[float]", [3e-3, 1e-2, 3e-2],
                                  "peak lrs swept for each Table 6 row and the no-mixer control, each on its own",
                                  min=1e-6, max=1.0, min_len=1),
        "lm_sweep_seed": Param("int", 1000, "seed of the lr sweep's runs (never one of seeds)", min=0),
        "lm_eval_windows": Param("int", 512, "validation windows for the reported perplexity", min=1),
        "lm_select_windows": Param("int", 256, "further validation windows (disjoint) that choose the lr", min=1),
        "lm_workers": Param("int", 1, "single-threaded worker processes training LMs side by side (1: in process)",
                            min=1, max=16),
        "seeds": Param("list[int]", [0, 1, 2], "seeds per model (data order and initialisation)", min=0, min_len=1),
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
            "lm_batch": 2, "lm_steps": 3, "lm_warmup": 1, "lm_lrs_transformer": [1e-2], "lm_lrs_retnet": [3e-3, 1e-2],
            "lm_lrs_linear_transformer": [1e-2], "lm_lrs_ablations": [1e-2], "lm_eval_windows": 2,
            "lm_select_windows": 2, "seeds": [0],
        },
        # One thread: on a shared 2-core machine, OpenMP threads spin at every barrier and a busy
        # neighbour turns a 30 ms decode step into 900 ms (measured); one thread keeps timings honest.
        # The LMs train in two single-threaded workers (one per core), after the timed sections.
        "cpu": {"threads": 1, "lm_workers": 2},
        "gpu": {
            "decode_lengths": [1024, 2048, 4096, 8192], "decode_batch": 8, "cost_hidden": 2048, "cost_layers": 24,
            "cost_heads": 8,
            "train_lengths": [2048, 4096, 8192], "train_hidden": 2048, "train_heads": 8, "train_batch": 4,
            "train_chunk": 512, "train_reps": 5,
            "data": "wikitext-103", "lm_vocab": 32000, "lm_hidden": 2048, "lm_layers": 24, "lm_heads": 8,
            "lm_seq": 2048, "lm_batch": 8, "lm_micro_batch": 4, "lm_checkpointing": True, "lm_checkpoint_every": 1000,
            "lm_steps": 20000, "lm_warmup": 2000, "lm_lrs_transformer": [6e-4],
            "lm_lrs_retnet": [6e-4], "lm_lrs_linear_transformer": [6e-4], "lm_lrs_ablations": [6e-4],
            # WikiText-103's validation split is ~0.25M tokens: 80 + 16 windows of 2048 (0.2M) fit in it
            "lm_eval_windows": 80, "lm_select_windows": 16,
            "seeds": [0], "variants": ["transformer", "retnet", "no_mixer"],
        },
    },
    checks=(_micro_batch_divides, _warmup_within_steps, _heads_divide, _sweep_seed_disjoint, _fraction_is_for_novels),
    hub_datasets=hub_datasets,
    artifacts={
        "§2.1 eqs. (5)-(7)": "1. Forms agree",
        "Figure 6": "2. Inference cost",
        "Table 4": "3. Training cost",
        "Table 5": "4. Language modelling",
        "Table 6": "5. Ablations",
    },
)
