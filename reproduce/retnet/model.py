"""The RetNet decoder LM (§2.3) as a Hugging Face model — Sun et al., 2023, arXiv:2307.08621.

``RetNetConfig``/``RetNetForCausalLM`` subclass transformers' ``PreTrainedConfig``/``PreTrainedModel``:
``save_pretrained``/``from_pretrained`` round-trip, and ``generate()`` decodes with the recurrent
state of eq. (6) as its cache (``RetNetCache``: O(1) memory per step). Shape notation as in
:mod:`reproduce.retnet.retention`.

Deviations from the paper (each also marked ``Deviation:`` where it is implemented):
- the decayed key sum ``z`` is kept in the recurrent state (K numbers per head, next to K x V) so
  that the §2.2 normalisers are exact in every form (torchscale 0.3.0 drops the score normaliser
  in its recurrent form, so its forms agree only after the head norm);
- "one gamma for all heads" (Table 6) does not say which gamma; we use 1 - 1/128, the geometric
  midpoint of §3.1's range [1 - 1/32, 1 - 1/512];
- linear layers have no bias (as in torchscale); the paper does not say;
- the vocabulary size of the paper's models is not given; the default (50,257) is GPT-2's;
- initialisation (the paper gives none) follows torchscale 0.3.0 (see ``_init_weights``).

Reference code read for facts (not copied): torchscale 0.3.0 ``component/multiscale_retention.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as hf_init
from transformers.utils import ModelOutput

from .retention import (MODES, Mode, MultiScaleRetention, RetentionConfig, RetentionState, RetNetBlock, check_retention,
                        decay_rates)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
_BASE_CONFIG_KEYS = {f.name for f in dataclasses.fields(PreTrainedConfig)} | {
    "model_type",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
}


@strict
class RetNetConfig(PreTrainedConfig):
    """RetNet hyper-parameters; defaults are the paper's 1.3B model (Table 2, §3.1).

    1.3B: hidden 2048, 24 layers, d_k = 256 per head (so 8 heads), value dim 2d, FFN 2d (§2.3 keeps
    12 d^2 parameters per block, like a Transformer). Each Table 6 ablation is one switch:
    ``use_gate=False`` (- swish gate), ``head_norm="none"`` (- GroupNorm), ``decay="none"`` (- gamma
    decay), ``decay="single"`` (- multi-scale decay), more heads at the same width (reduced head dim).
    Unknown keys and inconsistent values raise an error naming them.
    """

    model_type = "retnet"

    vocab_size: int = 50257  # not stated in the paper; a GPT-2-sized vocabulary
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_heads: int = 8  # d_k = hidden_size / num_heads = 256 (§3.1)
    value_factor: int = 2  # value dim = 2 d (§2.3)
    ffn_factor: int = 2  # FFN intermediate = 2 d (§2.3)
    decay: str = "paper"
    use_gate: bool = True
    head_norm: str = "groupnorm"
    normalize_retention: bool = True  # the §2.2 score normalisers
    use_rotation: bool = True
    rotation_base: float = 10000.0
    norm_eps: float = 1e-6
    forward_mode: str = "parallel"  # form used by forward() when no state is asked for
    chunk_size: int = 512
    initializer_range: float = 0.02  # unused by our init (torchscale's, see _init_weights); kept for HF tools
    zero_mixer: bool = False  # the no-mixer control: retention's out_proj zeroed and frozen (embeddings + FFN only)
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        unknown = sorted(set(kwargs) - _BASE_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"RetNetConfig: unknown key(s) {unknown}; known: {sorted(self.__dataclass_fields__)}")
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: refuse values that cannot build a RetNet."""
        if self.forward_mode not in ("parallel", "chunkwise"):
            raise ValueError(f"RetNetConfig.forward_mode={self.forward_mode!r} is not allowed: parallel or chunkwise")
        for name in ("vocab_size", "num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"RetNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        check_retention(self, "RetNetConfig")

    @property
    def key_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def value_dim(self) -> int:
        return self.key_dim * self.value_factor

    @property
    def retention(self) -> RetentionConfig:
        """The fields multi-scale retention and the block read, as a :class:`RetentionConfig`."""
        return RetentionConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RetentionConfig)})


# ---------------------------------------------------------------------------------------------
# The recurrent state as generate()'s cache
# ---------------------------------------------------------------------------------------------
class RetNetCache:
    """Per-layer :class:`RetentionState` s plus the number of tokens seen: generate()'s cache.

    Its size is fixed (``H x K x (V + 1)`` numbers per layer and sequence) whatever the length:
    decoding is O(1) memory per step. The cache owns its states: a recurrent step without autograd
    updates them in place (no state-sized allocation per step), so a state read out of it before a step
    changes with the step. ``get_seq_length()`` returns the tokens seen, which drive the
    positions of the rotation.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, num_layers: int):
        self.layers: list[RetentionState | None] = [None] * num_layers
        self.seen_tokens = 0

    @property
    def is_linear(self) -> list[bool]:  # generate() asks: every layer is a fixed-size (linear) state
        return [True] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.layers if s is not None)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.layers = [s.index_select(beam_idx) if s is not None else None for s in self.layers]


# ---------------------------------------------------------------------------------------------
# The decoder language model
# ---------------------------------------------------------------------------------------------
@dataclass
class RetNetOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: RetNetCache | None = None


class RetNetPreTrainedModel(PreTrainedModel):
    config_class = RetNetConfig
    config: RetNetConfig
    base_model_prefix = "model"
    _no_split_modules = ["RetNetBlock"]
    supports_gradient_checkpointing = True  # RetNetModel checkpoints block by block (gradient_checkpointing_enable)

    def _init_weights(self, module):
        """torchscale 0.3.0's initialisation (the paper states none); wheel ``torchscale-0.3.0``, files:

        - ``component/multiscale_retention.py`` l. 69-74 (``reset_parameters``): q/k/v/g projections
          ``xavier_uniform_(gain=2 ** -2.5)``, ``out_proj`` ``xavier_uniform_`` (gain 1; GitHub HEAD,
          ff7c1f2 of 2023-11-24, later changed it to gain 2 ** -1: not the version we follow);
        - ``architecture/retnet.py`` l. 214 ``embed_scale = 1.0 if args.no_scale_embedding else sqrt(d)``
          with ``architecture/config.py`` l. 224 ``no_scale_embedding`` default True: no scaling;
          the token embedding is built by the caller; torchscale's own example
          (``examples/fairseq/models/retnet.py`` ``build_embedding``) uses fairseq's ``Embedding``,
          normal with std d^-1/2 (Deviation: that example's architecture turns the sqrt(d) scale
          on; we keep the library default, no scale); the output projection is tied to it (ours);
        - the FFN (``component/gate_linear_unit.py`` ``reset_parameters``) keeps ``nn.Linear``'s own
          init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norms start at weight 1, bias 0.

        With the per-head GroupNorm output at unit scale, this keeps the retention branch's output
        (xavier out_proj) on the scale of the residual stream (embeddings of std d^-1/2), so no Table 6
        row wins by initial scale alone. A frozen ``out_proj`` (the no-mixer control: ``zero_mixer``, which
        ``MultiScaleRetention`` reads) stays zero.
        """
        if isinstance(module, MultiScaleRetention):  # visited after its Linear children: overrides their init
            for proj in (module.q_proj, module.k_proj, module.v_proj, module.g_proj):
                if proj is not None:
                    hf_init.xavier_uniform_(proj.weight, gain=2**-2.5)
            if module.out_proj.weight.requires_grad:
                hf_init.xavier_uniform_(module.out_proj.weight)
            else:  # frozen by MultiScaleRetention (the no-mixer control): back to zero after its Linear's init
                hf_init.zeros_(module.out_proj.weight)
            # gamma is a non-persistent buffer: rebuild it from the config
            hf_init.copy_(module.gamma, decay_rates(self.config.num_heads, self.config.decay, torch.float64))
        elif isinstance(module, nn.Embedding):
            hf_init.normal_(module.weight, mean=0.0, std=module.embedding_dim**-0.5)
        elif isinstance(module, nn.Linear):
            if module is getattr(self, "lm_head", None) and self.config.tie_word_embeddings:
                return  # tied to the embedding, initialised there
            hf_init.kaiming_uniform_(module.weight, a=math.sqrt(5))  # nn.Linear's default: U(+-1/sqrt(fan_in))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                hf_init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            if module.weight is not None:
                hf_init.ones_(module.weight)
            if module.bias is not None:
                hf_init.zeros_(module.bias)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is a RetNetCache, created by forward() itself


class RetNetModel(RetNetPreTrainedModel):
    """Embedding, L RetNet blocks, final LayerNorm."""

    def __init__(self, config: RetNetConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(RetNetBlock(config.retention) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.gradient_checkpointing = False  # set by gradient_checkpointing_enable(): recompute blocks in backward
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids: Tensor, mode: Mode, cache: RetNetCache | None) -> Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, D)
        offset = cache.seen_tokens if cache is not None else 0
        # a RetNetCache owns its states: without autograd, a recurrent step updates them in place
        in_place = cache is not None and not torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            state = cache.layers[i] if cache is not None else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # only the block's input is kept; its activations are recomputed in the backward pass
                x, state = self._gradient_checkpointing_func(layer.__call__, x, mode, state, offset)
            else:
                x, state = layer(x, mode, state, offset, in_place)
            if cache is not None:
                cache.layers[i] = state
        if cache is not None:
            cache.seen_tokens += input_ids.shape[1]
        return self.norm(x)


class RetNetForCausalLM(RetNetPreTrainedModel, GenerationMixin):
    """RetNet decoder LM; ``generate()`` decodes with the recurrent state (eq. 6) as its cache."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: RetNetConfig):
        super().__init__(config)
        self.model = RetNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor,
        cache: RetNetCache | None = None,
        use_cache: bool | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        mode: Mode | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> RetNetOutput:
        """Logits for ``input_ids`` (B, T).

        ``mode`` picks the form: ``parallel`` (no state), ``chunkwise`` or ``recurrent`` (both return
        the state). With a cache (or ``use_cache=True``) the default is chunkwise, which continues
        from the cache's state — for a prompt (prefill) or a single token (one recurrent step).
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("RetNetForCausalLM does not support padding (attention_mask has zeros); batch equal lengths")
        use_cache = bool(use_cache) or cache is not None
        if mode is None:
            mode = "chunkwise" if use_cache else self.config.forward_mode
        if mode not in MODES:
            raise ValueError(f"unknown retention mode {mode!r}; expected one of {MODES}")
        if mode == "parallel" and use_cache:
            raise ValueError("the parallel form keeps no state; use mode='chunkwise' or 'recurrent' with a cache")
        if mode != "parallel" and cache is None:
            cache = RetNetCache(self.config.num_hidden_layers)
        hidden = self.model(input_ids, mode, cache)
        logits = self.lm_head(hidden)  # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return RetNetOutput(loss=loss, logits=logits, cache=cache if use_cache else None)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
