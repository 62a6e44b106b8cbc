"""Table 3 of FLAVA (Singh et al., CVPR 2022, arXiv 2112.04482): the objective ablation's rows.

Each row (``AblationRow``) is a set of objectives (``reproduce.flava.objectives.Objectives``), the
sources it samples with their probabilities (Table A.2) and the evaluation domains the paper reports
for it; row 6 (``INIT_ROW``) starts its encoders from other rows' trained ones (``encoder_state``,
``initialise_from``).

Deviations from the paper:
* Table 3, row 6's unimodal initialisation (§3.2: DINO ViT-B/16 on ImageNet, text encoder pretrained
  with MLM on CCNews + BookCorpus) comes from our own MIM and MLM rows (same data, seed and budget),
  and the MIM/MLM heads come along with their encoders. No released pre-norm text encoder matches
  FLAVA's layers offline (the packaged MiniLM is a post-norm BERT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from reproduce.flava.objectives import Objectives


# Encoder parts a row can take from an earlier row (Table 3, row 6: unimodal initialisation). Each
# part is the encoder plus the head of its unimodal objective: both keep predicting the same targets
# (one VQ codebook and one WordPiece vocabulary for all rows), so the head carries over with the encoder.
INIT_PARTS: dict[str, tuple[str, ...]] = {
    "image": ("flava.image_model", "mim_head"),  # ViT image encoder + MIM head
    "text": ("flava.text_model", "mlm_head"),  # text encoder + MLM head
}


@dataclass(frozen=True)
class AblationRow:
    """One row of Table 3: its objectives, the sources it samples (probabilities sum to 1) and, for
    row 6, the rows whose trained encoders initialise it (``init``: part -> row name, same seed)."""

    name: str
    objectives: Objectives
    sources: dict[str, float]  # "paired" / "images" / "text" -> sampling probability
    domains: tuple[str, ...]  # evaluation domains the paper reports for the row
    init: dict[str, str] = field(default_factory=dict)  # "image" / "text" -> row whose trained part is copied

    def __post_init__(self) -> None:
        unknown = set(self.sources) - {"paired", "images", "text"}
        if unknown:
            raise ValueError(f"{self.name}: unknown sources {sorted(unknown)}")
        bad_parts = set(self.init) - set(INIT_PARTS)
        if bad_parts:
            raise ValueError(f"{self.name}: unknown init parts {sorted(bad_parts)}; known: {sorted(INIT_PARTS)}")
        if self.name in self.init.values():
            raise ValueError(f"{self.name}: a row cannot initialise from itself")
        if abs(sum(self.sources.values()) - 1.0) > 1e-9 or any(p < 0 for p in self.sources.values()):
            raise ValueError(f"{self.name}: source probabilities {self.sources} must be >= 0 and sum to 1")
        needs = {"paired": self.objectives.paired, "images": self.objectives.mim, "text": self.objectives.mlm}
        for source, p in self.sources.items():
            if p > 0 and not needs[source]:
                raise ValueError(f"{self.name}: source {source!r} is sampled but no objective uses it")


INIT_ROW = "FLAVA+init"  # Table 3, row 6


def table3_rows(paired: float = 0.70, images: float = 0.15, text: float = 0.15) -> dict[str, AblationRow]:
    """Table 3's six rows.

    Rows 1-4 train on PMD only (here: the unimodal images, scenes and emoji, for MIM; the unimodal
    text, novel sentences, for MLM; pairs for the rest); full FLAVA (row 5) adds unimodal images and text with Table A.2's sampling
    probabilities. Row 6 (``FLAVA+init``) is row 5 started from unimodally pretrained encoders: the
    paper takes a DINO ViT-B/16 and an MLM-pretrained text encoder; we take the image encoder of our
    MIM row and the text encoder of our MLM row, trained on the same data with the same seed.
    """
    all3 = ("vision", "language", "multimodal")
    everything = Objectives(mim=True, mlm=True, gc=True, mmm=True, itm=True)
    full_sources = {"paired": paired, "images": images, "text": text}
    return {
        "MIM": AblationRow("MIM", Objectives(mim=True), {"images": 1.0}, ("vision",)),
        "MLM": AblationRow("MLM", Objectives(mlm=True), {"text": 1.0}, ("language",)),
        "FLAVA_C": AblationRow("FLAVA_C", Objectives(gc=True), {"paired": 1.0}, all3),
        "FLAVA_MM": AblationRow("FLAVA_MM", Objectives(gc=True, mmm=True, itm=True), {"paired": 1.0}, all3),
        "FLAVA": AblationRow("FLAVA", everything, full_sources, all3),
        INIT_ROW: AblationRow(INIT_ROW, everything, full_sources, all3, init={"image": "MIM", "text": "MLM"}),
    }


def missing_init_sources(rows: dict[str, AblationRow]) -> dict[str, list[str]]:
    """Rows whose ``init`` names a row that is not among ``rows``: row -> the missing row names."""
    out = {name: sorted(set(row.init.values()) - set(rows)) for name, row in rows.items()}
    return {name: missing for name, missing in out.items() if missing}


def encoder_state(model, part: str) -> dict[str, dict[str, Tensor]]:
    """CPU copies of the state of one ``INIT_PARTS`` part: submodule path -> its ``state_dict``."""
    return {path: {k: v.detach().cpu().clone() for k, v in model.get_submodule(path).state_dict().items()}
            for path in INIT_PARTS[part]}


def initialise_from(model, states: dict[str, dict[str, dict[str, Tensor]]]) -> None:
    """Load parts saved by ``encoder_state`` (part -> state) into ``model`` (Table 3, row 6's init).

    Every other module keeps its own initialisation (the multimodal encoder is "always random", §3.2).
    """
    for part, state in states.items():
        if part not in INIT_PARTS or set(state) != set(INIT_PARTS[part]):
            raise ValueError(f"state for part {part!r} must hold exactly {INIT_PARTS.get(part)}, got {sorted(state)}")
        for path, sub in state.items():
            model.get_submodule(path).load_state_dict(sub, strict=True)
