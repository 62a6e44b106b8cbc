"""Parameters of notebooks/02_flava.ipynb (FLAVA, Singh et al., CVPR 2022)."""

from reproduce.config import Param, PaperSpec

TABLE3_ROWS = ("MIM", "MLM", "FLAVA_C", "FLAVA_MM", "FLAVA", "FLAVA+init")  # = reproduce.flava.model.table3_rows() (tested)
# Row 6 starts from the trained encoders of other rows of the same seed (= the rows' ``init``, tested)
INIT_SOURCES = {"FLAVA+init": ("MIM", "MLM")}
PAIRS_SOURCES = ("scenes", "pmd")
ITM_NEGATIVES = ("sampled", "mined")  # = reproduce.flava.model.ITM_NEGATIVES (tested)
PMD_DATASET = "facebook/pmd"  # = reproduce.data.pmd.PMD_DATASET (tested)


def _init_rows_have_their_sources(values) -> str | None:
    """Row 6 needs the MIM and MLM rows of the same run: refuse ``rows`` without them before any work."""
    rows = values["rows"]
    for row, sources in INIT_SOURCES.items():
        missing = [s for s in sources if s not in rows]
        if row in rows and missing:
            return (f"parameter 'rows': row '{row}' starts from the trained encoders of rows {list(sources)}, "
                    f"but {missing} are not in rows {rows}; add them, e.g. rows={[*missing, *rows]}")
    return None

SPEC = PaperSpec(
    name="flava",
    plots="reproduce.flava.plots",
    sections="reproduce.flava.sections",
    notebook="02_flava.ipynb",
    title="FLAVA: A Foundational Language And Vision Alignment Model (Singh et al., 2022)",
    description="a tiny FLAVA with all five objectives, the Table 3 objective ablation, zero-shot retrieval, the HF path",
    params={
        # model (Table A.1: ViT-B/16 encoders, 6-layer multimodal encoder)
        "image_size": Param("int", 224, "image side in pixels (paper: 224)", min=16, max=1024),
        "patch_size": Param("int", 16, "ViT patch side (paper: 16)", min=2, max=64),
        "hidden": Param("int", 768, "width of all three encoders (paper: 768)", min=8, max=4096),
        "heads": Param("int", 12, "attention heads (paper: 12)", min=1, max=64),
        "mlp": Param("int", 3072, "MLP width (paper: 3072)", min=8, max=16384),
        "image_layers": Param("int", 12, "image encoder layers (paper: 12)", min=1, max=48),
        "text_layers": Param("int", 12, "text encoder layers (paper: 12)", min=1, max=48),
        "multimodal_layers": Param("int", 6, "multimodal encoder layers (paper: 6)", min=1, max=48),
        "projection_dim": Param("int", 768, "contrastive projection width (HF code: 768; Table A.1: 512)", min=4, max=4096),
        "codebook_size": Param("int", 8192, "image tokens of the VQ tokenizer (paper's dVAE: 8192)", min=2, max=16384),
        "vocab_size": Param("int", 8000, "WordPiece vocabulary learnt on our text (paper's BERT: 30,522)", min=64, max=50_000),
        "max_text_len": Param("int", 32, "text tokens (paper: 77; our captions are <= 20 tokens)", min=8, max=512),
        # data
        "n_pairs": Param("int", 100_000, "pretraining image-caption pairs, generated or streamed (paper's PMD: 70M)", min=16),
        "n_images": Param("int", 20_000, "unimodal images besides the emoji (paper: ImageNet-1k)", min=16),
        "n_text": Param("int", 20_000, "unimodal sentences from the novels (paper: CCNews + BookCorpus)", min=16),
        "emoji_prob": Param("float", 0.2, "probability that a scene object is an emoji", min=0.0, max=1.0),
        "pairs_source": Param("str", "scenes", "pretraining image-caption pairs: generated scenes (offline) or PMD "
                              "subsets streamed from the Hugging Face hub", choices=PAIRS_SOURCES),
        "pmd_dataset": Param("str", PMD_DATASET, "hub dataset of pairs_source='pmd': PMD, or any hub dataset "
                             "with an image column and a caption column"),
        "pmd_subsets": Param("list[str]", ["coco", "localized_narratives"], "configs of pmd_dataset to stream, "
                             "n_pairs shared equally ([] = its default config)"),
        # pretraining (Table A.2)
        "rows": Param("list[str]", list(TABLE3_ROWS), "Table 3 rows to train (FLAVA+init needs MIM and MLM)",
                       choices=TABLE3_ROWS, min_len=1),
        "seeds": Param("list[int]", [0, 1, 2], "seeds per Table 3 row", min=0, min_len=1),
        "steps": Param("int", 20_000, "optimizer updates per row, the same for every row (paper: 150K PMD updates)", min=1),
        "batch_size": Param("int", 256, "batch size (paper: 8,192)", min=2),
        "lr": Param("float", 1e-3, "peak learning rate (paper: 1e-3)", min=1e-7, max=1.0),
        "warmup": Param("int", 2000, "linear warmup updates before the cosine decay (paper: 10,000)", min=0),
        "weight_decay": Param("float", 0.1, "AdamW weight decay (paper: 0.1)", min=0.0, max=1.0),
        "p_paired": Param("float", 0.70, "full FLAVA: probability of a paired batch (Table A.2: 0.70)", min=0.0, max=1.0),
        "p_images": Param("float", 0.15, "full FLAVA: probability of an image-only batch (0.15)", min=0.0, max=1.0),
        "p_text": Param("float", 0.15, "full FLAVA: probability of a text-only batch (0.15)", min=0.0, max=1.0),
        "itm_negative_prob": Param("float", 0.5, "share of ITM pairs that are unmatched", min=0.0, max=1.0),
        "itm_hard_fraction": Param("float", 0.5, "share of ITM negatives that are one-attribute swaps (else in-batch)", min=0.0, max=1.0),
        "itm_negatives": Param("str", "mined", "ITM negatives: 'mined' from the GC similarities of the batch (ALBEF; "
                               "itm_negative_prob and itm_hard_fraction unused), or 'sampled' by the sampler "
                               "(itm_negative_prob, itm_hard_fraction)", choices=ITM_NEGATIVES),
        # evaluation
        "n_probe": Param("int", 2000, "examples per linear-probe split (train and test each)", min=20),
        "finetune_steps": Param("int", 150, "language tasks: fine-tuning updates of the text encoder per task (batch 32)", min=1),
        "finetune_lr": Param("float", 5e-4, "language tasks: fine-tuning peak learning rate", min=1e-7, max=1.0),
        "n_retrieval": Param("int", 1000, "held-out image-caption pairs for zero-shot retrieval (paper: 1K/5K)", min=10),
        "try_flava_full": Param("bool", True, "load facebook/flava-full where the hub answers (HF path section)"),
    },
    profiles={
        "smoke": {
            "image_size": 32, "patch_size": 8, "hidden": 32, "heads": 2, "mlp": 64, "image_layers": 1, "text_layers": 1,
            "multimodal_layers": 1, "projection_dim": 16, "codebook_size": 16, "vocab_size": 300, "max_text_len": 24,
            "n_pairs": 256, "n_images": 128, "n_text": 256, "emoji_prob": 0.1,
            "seeds": [0], "steps": 4, "batch_size": 16, "warmup": 1, "n_probe": 60, "n_retrieval": 40, "finetune_steps": 5,
            "try_flava_full": False, "threads": 1,
        },
        "cpu": {
            "image_size": 32, "patch_size": 8, "hidden": 64, "heads": 2, "mlp": 256, "image_layers": 2, "text_layers": 2,
            "multimodal_layers": 1, "projection_dim": 64, "codebook_size": 128, "vocab_size": 1000, "max_text_len": 24,
            "n_pairs": 10_000, "n_images": 4000, "n_text": 10_000, "emoji_prob": 0.1,
            "seeds": [0, 1, 2], "steps": 600, "batch_size": 32, "warmup": 60, "n_probe": 600, "n_retrieval": 300,
            "try_flava_full": False,
            "threads": 1,  # measured: 2 threads on 2 cores shared with other jobs ran 10-20x slower (OpenMP spinning)
        },
        "gpu": {  # ViT-B/16 sizes (Table A.1); pairs streamed from PMD subsets on the hub
            "pairs_source": "pmd",
            "n_pairs": 30_000, "n_images": 10_000,  # 224 px uint8: 4.5 GB + 1.5 GB in memory
            "codebook_size": 1024,  # k-means with 8,192 centroids on 768-d patches is too slow to fit once per run
        },
    },
    artifacts={
        "§3.1 objectives": "1b. The Hugging Face path",
        "Table 3, controls": "2. Table 3: objective ablation",
        "Table 3, rows 3-4": "2. Table 3: objective ablation",
        "Table 3, row 6": "2. Table 3: objective ablation",
    },
    checks=(_init_rows_have_their_sources,),
)
