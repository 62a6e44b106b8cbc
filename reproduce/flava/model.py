"""FLAVA's model (Singh et al., CVPR 2022, arXiv 2112.04482, §3, Table A.1): Hugging Face's
``FlavaForPreTraining`` built from a small ``FlavaConfig`` (``FlavaSizes``), or the released checkpoint.

The objectives are computed from its modules in ``reproduce.flava.objectives``; the inputs are masked
by ``reproduce.flava.masking`` and tokenised by ``reproduce.flava.tokenisers``; Table 3's rows are
``reproduce.flava.ablation``.

Deviations from the paper:
* The image [CLS], [MASK], position embeddings and [CLS_M] start truncated-normal (std 0.02, BEiT),
  not at HF's zeros: a zero token through LayerNorm (eps 1e-12) has exploding gradients (``init_learned_tokens``).
* The contrastive projection is 768 wide (HF's code default and torchmultimodal), not Table A.1's 512.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class FlavaSizes:
    """Widths and depths of a FLAVA; the defaults are the paper's ViT-B/16 model (Table A.1)."""

    image_size: int = 224
    patch_size: int = 16
    hidden: int = 768
    heads: int = 12
    mlp: int = 3072
    image_layers: int = 12
    text_layers: int = 12
    multimodal_layers: int = 6
    projection_dim: int = 768  # HF code default and torchmultimodal; Table A.1 says 512
    codebook_size: int = 8192
    vocab_size: int = 30522
    max_text_len: int = 77

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FlavaSizes.{f.name} must be a positive int, not {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.grid < 2:
            raise ValueError(f"the patch grid must be at least 2x2, got {self.grid}x{self.grid}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


def config_overrides(sizes: FlavaSizes) -> dict[str, object]:
    """``FlavaConfig`` overrides (dotted keys into the sub-configs) that give a model of these sizes."""
    out: dict[str, object] = {"hidden_size": sizes.hidden, "projection_dim": sizes.projection_dim, "init_codebook": False}
    for sub, layers in (("image_config", sizes.image_layers), ("text_config", sizes.text_layers),
                        ("multimodal_config", sizes.multimodal_layers)):
        out.update({f"{sub}.hidden_size": sizes.hidden, f"{sub}.num_attention_heads": sizes.heads,
                    f"{sub}.intermediate_size": sizes.mlp, f"{sub}.num_hidden_layers": layers})
    out.update({"image_config.image_size": sizes.image_size, "image_config.patch_size": sizes.patch_size,
                "image_config.vocab_size": sizes.codebook_size, "text_config.vocab_size": sizes.vocab_size,
                "text_config.max_position_embeddings": sizes.max_text_len})
    return out


def build_config(sizes: FlavaSizes):
    """Hugging Face's default ``FlavaConfig`` with ``config_overrides(sizes)`` applied by ``reproduce.hf``.

    No DALL-E codebook is built (``init_codebook=False``): MIM/MMM labels come from our VQ.
    """
    from transformers import FlavaConfig

    from reproduce import hf

    config = FlavaConfig()
    hf.apply_overrides(config, config_overrides(sizes))
    return config


def build_model(sizes: FlavaSizes, seed: int):
    """A randomly initialised ``FlavaForPreTraining`` (same seed, same weights)."""
    from transformers import FlavaForPreTraining

    torch.manual_seed(seed)
    model = FlavaForPreTraining(build_config(sizes))
    init_learned_tokens(model)
    return model


def init_learned_tokens(model, std: float = 0.02) -> None:
    """Truncated-normal init (std 0.02, as BEiT and timm's ViT) of the learned tokens HF starts at zero:
    the image [CLS], [MASK] and position embeddings, and the multimodal [CLS_M].

    Deviation from HF's ``_init_weights`` (zeros): a zero token (cls + zero position) enters the first
    pre-norm LayerNorm as the zero vector, whose gradient scales as 1/sqrt(eps) with eps = 1e-12.
    Measured at our cpu sizes, one paired batch: gradient norm 1174 on the image [MASK] token,
    510 on the position embeddings, 112 on [CLS_M], 0.16 on the next largest weight. The global clip
    (1.0) then shrinks every other gradient ~1000x, into the range of AdamW's eps (1e-8), so the text
    and multimodal weights barely move (issue #15: ITM at ln 2 for 1500 updates).
    """
    image = model.flava.image_model.embeddings
    tokens = [image.cls_token, image.position_embeddings, model.flava.multimodal_model.cls_token]
    if image.mask_token is not None:
        tokens.append(image.mask_token)
    with torch.no_grad():
        for t in tokens:
            if std == 0:  # HF's zeros (tests compare with them)
                t.zero_()
            else:
                torch.nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


FLAVA_FULL = "facebook/flava-full"  # the released checkpoint (gpu profile, where the hub answers)


def load_flava_full(overrides: dict[str, object] | None = None, model_id: str = FLAVA_FULL):
    """``FlavaForPreTraining`` from ``model_id`` (``facebook/flava-full``, or a local folder) through
    ``reproduce.hf.load_pretrained``.

    Offline this raises ``reproduce.hub.HubError`` (kind "offline") within ~2 s (tested). Returns ``(model, report)``.
    """
    from reproduce import hf

    return hf.load_pretrained(model_id, "FlavaForPreTraining", overrides={"init_codebook": False, **(overrides or {})})
