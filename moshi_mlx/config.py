"""Configuration dataclasses for the Moshi language model and the Mimi codec.

Field names follow Kyutai's checkpoint-native `config.json` keys. Unknown keys and
values this implementation cannot honour raise `ConfigError` instead of being ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MoshiError

CONFIG_DIR = Path(__file__).parent / "configs"

# Named presets are data files shipped with the package.
PRESETS: dict[str, str] = {
    "moshi_7b": "moshi_7b_202409.json",
    "moshiko": "moshi_7b_202409.json",
    "moshika": "moshi_7b_202409.json",
}

NORMS = ("layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32")
POSITIONAL_EMBEDDINGS = ("rope", "none", "sin")
ACTIVATIONS = ("none", "silu", "gelu", "relu", "sigmoid", "tanh", "elu", "leaky_relu", "mish", "softsign")

# Keys of a Kyutai config.json that describe files and front-end settings, not the network.
_METADATA_KEYS = frozenset({
    "moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
    "lm_gen_config", "tts_config", "stt_config", "model_id", "quantization",
})


class ConfigError(MoshiError, ValueError):
    """A configuration key or value that this implementation does not support."""


@dataclass
class TransformerConfig:
    """A stack of pre-norm transformer layers (torch `StreamingTransformer` kwargs)."""

    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int | list[int]
    causal: bool = True
    context: int | None = None
    positional_embedding: str = "rope"
    max_period: float = 10_000.0
    gating: str = "none"
    norm: str = "layer_norm"
    layer_scale: float | None = None
    kv_repeat: int = 1
    weights_per_step: int = 0
    weights_per_step_schedule: list[int] | None = None
    cross_attention: bool = False  # a cross-attention block after self-attention (conditioned models)

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.kv_repeat:
            raise ConfigError(f"num_heads {self.num_heads} is not divisible by kv_repeat {self.kv_repeat}")
        if self.norm not in NORMS:
            raise ConfigError(f"unsupported norm {self.norm!r} (supported: {', '.join(NORMS)})")
        if self.positional_embedding not in POSITIONAL_EMBEDDINGS:
            raise ConfigError(
                f"unsupported positional_embedding {self.positional_embedding!r} "
                f"(supported: {', '.join(POSITIONAL_EMBEDDINGS)})"
            )
        if self.gating not in ACTIVATIONS:
            raise ConfigError(f"unsupported gating {self.gating!r} (supported: {', '.join(ACTIVATIONS)})")
        if self.context is not None and self.context < 1:
            raise ConfigError(f"context must be >= 1 or null, got {self.context}")
        if self.weights_per_step and self.gating == "none":
            raise ConfigError("weights_per_step requires a gated feed-forward (gating != 'none')")
        sched = self.weights_per_step_schedule
        if sched is not None:
            if len(sched) != self.weights_per_step:
                raise ConfigError(
                    f"weights_per_step_schedule has {len(sched)} entries, expected {self.weights_per_step}"
                )
            if min(sched) < 0:
                raise ConfigError("weights_per_step_schedule entries must be >= 0")
        if isinstance(self.dim_feedforward, list):
            if self.gating == "none":
                raise ConfigError("a list dim_feedforward requires a gated feed-forward")
            if len(self.dim_feedforward) != self.num_weight_sets:
                raise ConfigError(
                    f"dim_feedforward lists {len(self.dim_feedforward)} sizes, expected {self.num_weight_sets}"
                )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads // self.kv_repeat

    @property
    def num_weight_sets(self) -> int:
        """How many distinct per-step weight sets the attention and feed-forward hold."""
        if not self.weights_per_step:
            return 1
        if self.weights_per_step_schedule is not None:
            return max(self.weights_per_step_schedule) + 1
        return self.weights_per_step

    @property
    def norm_eps(self) -> float:
        return 1e-8 if self.norm.endswith("_f32") else 1e-5

    def ffn_hidden(self, weight_set: int = 0) -> int:
        """Hidden width of the feed-forward for one weight set (torch `ActivationGating` rule)."""
        dff = self.dim_feedforward
        if isinstance(dff, list):
            dff = dff[weight_set]
        if self.gating == "none":
            return dff
        if dff == 4 * self.d_model:
            return (21 * self.d_model) // 8
        return (2 * dff) // 3

    def step_weight_index(self, step: int) -> int:
        """Weight set used at depth position `step`."""
        if self.weights_per_step_schedule is not None:
            return self.weights_per_step_schedule[step]
        return step if self.weights_per_step else 0


@dataclass
class LmConfig:
    """The Moshi/Helium language model: temporal transformer, embeddings, heads and depformer."""

    transformer: TransformerConfig
    depformer: TransformerConfig | None
    text_card: int
    card: int
    n_q: int
    dep_q: int
    delays: list[int]
    text_card_out: int | None = None
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0
    bias_proj: bool = False
    depformer_multi_linear: bool = False
    depformer_low_rank_embeddings: int | None = None
    # TTS: a text token may carry a second (lookahead) stream, `(second + 1) * (text_card + 1) + first`.
    demux_second_stream: bool = False
    extra_heads_num_heads: int = 0
    extra_heads_dim: int = 6
    # Conditioning (torch `condition_provider` / `fuser` config dicts; see models/conditioners.py).
    conditioners: dict[str, Any] | None = None
    fuser: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.delays) != self.n_q + 1:
            raise ConfigError(f"delays has {len(self.delays)} entries, expected n_q + 1 = {self.n_q + 1}")
        if min(self.delays) < 0:
            raise ConfigError("delays must be >= 0")
        if self.dep_q > self.n_q:
            raise ConfigError(f"dep_q {self.dep_q} exceeds n_q {self.n_q}")
        if self.dep_q > 0 and self.depformer is None:
            raise ConfigError("dep_q > 0 needs a depformer configuration")
        _check_conditioning(self)

    # Special token ids (torch `LMModel` properties).
    @property
    def text_initial_token_id(self) -> int:
        return self.text_card

    @property
    def initial_token_id(self) -> int:
        return self.card

    zero_token_id = -1
    ungenerated_token_id = -2

    @property
    def num_codebooks(self) -> int:
        """Streams in the model input: 1 text + n_q audio."""
        return self.n_q + 1

    @property
    def text_out_vocab(self) -> int:
        return self.text_card if self.text_card_out is None else self.text_card_out

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def num_depformer_in(self) -> int:
        """How many `depformer_in` projections exist."""
        if not self.depformer_multi_linear or self.depformer is None:
            return 1
        if self.depformer.weights_per_step_schedule is not None:
            return max(self.depformer.weights_per_step_schedule) + 1
        return self.dep_q

    def depformer_in_index(self, k: int) -> int:
        if not self.depformer_multi_linear or self.depformer is None:
            return 0
        if self.depformer.weights_per_step_schedule is not None:
            return self.depformer.weights_per_step_schedule[k]
        return k

    @classmethod
    def from_kyutai_json(cls, cfg: dict[str, Any]) -> "LmConfig":
        """Builds the config from a Kyutai `config.json` dict (torch `LMModel` kwargs)."""
        return _lm_config_from_kyutai(cfg)

    @classmethod
    def from_preset(cls, name: str) -> "LmConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
        return cls.from_file(CONFIG_DIR / PRESETS[name])

    @classmethod
    def from_file(cls, path: str | Path) -> "LmConfig":
        data = read_config(path)
        try:
            return cls.from_kyutai_json(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e


def _check_conditioning(cfg: LmConfig) -> None:
    """The fuser names only conditioners that exist, and cross-attention exactly when a condition is `cross`."""
    names = set(cfg.conditioners or {})
    for name, spec in (cfg.conditioners or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in ("lut", "tensor") or not isinstance(spec.get(kind), dict):
            raise ConfigError(f"conditioner {name!r} needs a type 'lut' or 'tensor' and its settings under that key")
    fuser = cfg.fuser or {}
    for method in ("sum", "cross", "prepend"):
        for name in fuser.get(method) or []:
            if name not in names:
                raise ConfigError(f"fuser {method!r} names {name!r}, which is not among the conditioners")
    if bool(fuser.get("cross")) != cfg.transformer.cross_attention:
        raise ConfigError("cross_attention must be true exactly when the fuser has 'cross' conditions")
    if names and cfg.fuser is None:
        raise ConfigError("conditioners without a fuser: nothing says how they reach the model")


def read_config(path: str | Path) -> dict[str, Any]:
    """Reads a `config.json` as a dict, with a one-line error naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a JSON object")
    return data


def _take(cfg: dict[str, Any], key: str, default: Any = ..., types: tuple = ()) -> Any:
    if key in cfg:
        value = cfg.pop(key)
    elif default is ...:
        raise ConfigError(f"missing config key {key!r}")
    else:
        value = default
    if types and value is not None and not isinstance(value, types):
        raise ConfigError(f"config key {key!r} has type {type(value).__name__}, expected {types[0].__name__}")
    return value


_UNSUPPORTED_IF_SET: dict[str, Any] = {
    # key: the only value we accept (the torch default)
    "norm_emb": False,
    "quantize": False,
    "lora": False,
    "depformer_norm": None,
}


def _lm_config_from_kyutai(raw: dict[str, Any]) -> LmConfig:
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    cfg = {k: v for k, v in raw.items() if k not in _METADATA_KEYS}
    cfg.pop("depformer_causal", None)  # deprecated in torch moshi, ignored there too
    for key, accepted in _UNSUPPORTED_IF_SET.items():
        if key in cfg:
            value = cfg.pop(key)
            if value != accepted and not (accepted is None and value in ({}, [])):
                raise ConfigError(f"config key {key!r}={value!r} is not supported by moshi_mlx yet")
    for key in ("lora_rank", "lora_scaling", "gradient_checkpointing"):
        cfg.pop(key, None)

    num = (int,)
    real = (int, float)
    dim = _take(cfg, "dim", 128, num)
    hidden_scale = _take(cfg, "hidden_scale", 4, real)
    n_q = _take(cfg, "n_q", 8, num)
    dep_q = _take(cfg, "dep_q", 8, num)
    card = _take(cfg, "card", 1024, num)
    text_card = _take(cfg, "text_card", 32000, num)
    delays = _take(cfg, "delays", [0], (list,))

    shared = dict(
        causal=_take(cfg, "causal", True, (bool,)),
        max_period=float(_take(cfg, "max_period", 10_000, real)),
        gating=_take(cfg, "gating", "none", (str,)),
        norm=_take(cfg, "norm", "layer_norm", (str,)),
        layer_scale=_take(cfg, "layer_scale", None, real),
        kv_repeat=_take(cfg, "kv_repeat", 1, num),
        positional_embedding=_take(cfg, "positional_embedding", "sin", (str,)),
    )
    num_heads = _take(cfg, "num_heads", 8, num)
    num_layers = _take(cfg, "num_layers", 6, num)
    context = _take(cfg, "context", None, num)
    if _take(cfg, "conv_layout", False, (bool,)):
        raise ConfigError("config key 'conv_layout'=True is not supported by moshi_mlx yet")

    dep_dim = _take(cfg, "depformer_dim", 256, num)
    dep_dff = _take(cfg, "depformer_dim_feedforward", None, (int, list))
    dep_multi = _take(cfg, "depformer_multi_linear", False, (bool,))
    dep_wps = _take(cfg, "depformer_weights_per_step", False, (bool,))
    dep_sched = _take(cfg, "depformer_weights_per_step_schedule", None, (list,))
    dep_low_rank = _take(cfg, "depformer_low_rank_embeddings", None, num)
    dep_pos = _take(cfg, "depformer_pos_emb", "sin", (str,))
    # torch forces the depformer's context to None: its KV state lives for one frame only.
    _take(cfg, "depformer_context", None, num)
    dep_over = {}
    for key in ("num_heads", "num_layers", "max_period", "gating", "layer_scale", "kv_repeat"):
        if f"depformer_{key}" in cfg:
            dep_over[key] = cfg.pop(f"depformer_{key}")
    if "depformer_max_period" in dep_over or "max_period" in dep_over:
        dep_over["max_period"] = float(dep_over.get("max_period", shared["max_period"]))

    lm_kwargs = dict(
        text_card_out=_take(cfg, "text_card_out", None, num),
        existing_text_padding_id=_take(cfg, "existing_text_padding_id", 3, num),
        existing_text_end_padding_id=_take(cfg, "existing_text_end_padding_id", 0, num),
        bias_proj=_take(cfg, "bias_proj", False, (bool,)),
        demux_second_stream=any([_take(cfg, "demux_second_stream", False, (bool,)),  # both spellings, as torch
                                  _take(cfg, "demux_second_text_stream", False, (bool,))]),
        extra_heads_num_heads=_take(cfg, "extra_heads_num_heads", 0, num),
        extra_heads_dim=_take(cfg, "extra_heads_dim", 6, num),
        conditioners=_take(cfg, "conditioners", None, (dict,)) or None,
        fuser=_take(cfg, "fuser", None, (dict,)),
    )
    cross_attention = _take(cfg, "cross_attention", False, (bool,))
    leftover = [k for k in cfg if k.startswith("depformer_")]
    if cfg:
        key = leftover[0] if leftover else sorted(cfg)[0]
        raise ConfigError(f"unexpected config key {key!r}")

    transformer = TransformerConfig(
        d_model=dim,
        num_heads=num_heads,
        num_layers=num_layers,
        dim_feedforward=int(hidden_scale * dim),
        context=context,
        cross_attention=cross_attention,
        **shared,
    )
    depformer = None
    if dep_q > 0:
        dep_kwargs = {**shared, **dep_over}
        dep_kwargs["positional_embedding"] = dep_pos
        depformer = TransformerConfig(
            d_model=dep_dim,
            num_heads=dep_kwargs.pop("num_heads", num_heads),
            num_layers=dep_kwargs.pop("num_layers", num_layers),
            dim_feedforward=dep_dff if dep_dff is not None else int(hidden_scale * dep_dim),
            context=None,
            weights_per_step=dep_q if dep_wps else 0,
            weights_per_step_schedule=dep_sched,
            **dep_kwargs,
        )
        if dep_sched is not None and not dep_wps:
            raise ConfigError("depformer_weights_per_step_schedule needs depformer_weights_per_step=true")
    return LmConfig(
        transformer=transformer,
        depformer=depformer,
        text_card=text_card,
        card=card,
        n_q=n_q,
        dep_q=dep_q,
        delays=list(delays),
        depformer_multi_linear=dep_multi,
        depformer_low_rank_embeddings=dep_low_rank,
        raw=dict(raw),
        **lm_kwargs,
    )


# --- Mimi ---


@dataclass
class SeanetConfig:
    """The SEANet convolutional encoder/decoder of Mimi (torch `SEANetEncoder` kwargs)."""

    dimension: int = 512
    channels: int = 1
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: list[int] = field(default_factory=lambda: [8, 6, 5, 4])
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    pad_mode: str = "constant"
    true_skip: bool = True

    def __post_init__(self) -> None:
        if self.pad_mode not in ("constant", "replicate"):
            raise ConfigError(f"unsupported pad_mode {self.pad_mode!r} (supported: constant, replicate)")
        if not self.true_skip:
            raise ConfigError("true_skip=False (conv shortcut) is not supported")

    @property
    def hop_length(self) -> int:
        """Input samples per encoder frame."""
        hop = 1
        for r in self.ratios:
            hop *= r
        return hop


@dataclass
class MimiConfig:
    """The Mimi codec: SEANet, two transformers, 2x resampling and a split residual VQ."""

    seanet: SeanetConfig
    transformer: TransformerConfig
    sample_rate: int = 24_000
    frame_rate: float = 12.5
    quantizer_dimension: int = 256
    quantizer_n_q: int = 32
    quantizer_bins: int = 2048
    n_q_semantic: int = 1
    num_codebooks: int = 8

    def __post_init__(self) -> None:
        if not self.n_q_semantic <= self.num_codebooks <= self.quantizer_n_q:
            raise ConfigError(
                f"num_codebooks must be in [{self.n_q_semantic}, {self.quantizer_n_q}], got {self.num_codebooks}"
            )
        if self.transformer.d_model != self.seanet.dimension:
            raise ConfigError("the Mimi transformers' d_model must equal the SEANet dimension")
        if self.frame_size * self.frame_rate != self.sample_rate:
            raise ConfigError(f"sample_rate / frame_rate = {self.sample_rate / self.frame_rate} is not an integer")
        if self.frame_size % self.seanet.hop_length:
            raise ConfigError("the frame size must be a multiple of the SEANet hop length")

    @property
    def frame_size(self) -> int:
        """Samples per codec frame (1920 at 24 kHz / 12.5 Hz)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def resample_stride(self) -> int:
        """Encoder frames per codec frame (2: 25 Hz -> 12.5 Hz)."""
        return self.frame_size // self.seanet.hop_length

    @classmethod
    def mimi_202407(cls, num_codebooks: int = 8) -> "MimiConfig":
        """The published Mimi (`tokenizer-e351c8d8-checkpoint125.safetensors`)."""
        return cls(
            seanet=SeanetConfig(),
            transformer=TransformerConfig(
                d_model=512,
                num_heads=8,
                num_layers=8,
                dim_feedforward=2048,
                causal=True,
                context=250,
                positional_embedding="rope",
                max_period=10_000.0,
                gating="none",
                norm="layer_norm",
                layer_scale=0.01,
            ),
            num_codebooks=num_codebooks,
        )

    @classmethod
    def from_kyutai_json(cls, cfg: dict[str, Any], num_codebooks: int = 8) -> "MimiConfig":
        """Builds the config from Kyutai's Mimi config dict (the file a `config.json` names by
        `mimi_config_name`: `sample_rate`, `channels`, `frame_rate`, `seanet`, `quantizer`, `transformer`)."""
        return _mimi_config_from_kyutai(cfg, num_codebooks)

    def to_kyutai_json(self) -> dict[str, Any]:
        """Kyutai's Mimi config dict for this config (what torch moshi's `get_mimi` takes)."""
        s, t, d = self.seanet, self.transformer, self.seanet.dimension
        seanet = dict(
            channels=s.channels, dimension=d, causal=True, n_filters=s.n_filters,
            n_residual_layers=s.n_residual_layers, activation="ELU", compress=s.compress,
            dilation_base=s.dilation_base, disable_norm_outer_blocks=0, kernel_size=s.kernel_size,
            residual_kernel_size=s.residual_kernel_size, last_kernel_size=s.last_kernel_size, norm="none",
            pad_mode=s.pad_mode, ratios=list(s.ratios), true_skip=s.true_skip,
        )
        transformer = dict(
            d_model=t.d_model, num_heads=t.num_heads, num_layers=t.num_layers, causal=t.causal,
            layer_scale=t.layer_scale, context=t.context, conv_layout=True, max_period=t.max_period,
            gating=t.gating, norm=t.norm, positional_embedding=t.positional_embedding,
            dim_feedforward=t.dim_feedforward, input_dimension=d, output_dimensions=[d],
        )
        quantizer = dict(
            dimension=self.quantizer_dimension, n_q=self.quantizer_n_q, bins=self.quantizer_bins,
            input_dimension=d, output_dimension=d,
        )
        return dict(sample_rate=self.sample_rate, channels=s.channels, frame_rate=self.frame_rate,
                    seanet=seanet, quantizer=quantizer, transformer=transformer)


def _section(cfg: dict[str, Any], name: str, fixed: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The keys `fields` of `cfg[name]`; keys in `fixed` must have that value; anything else raises."""
    part = cfg.get(name)
    if not isinstance(part, dict):
        raise ConfigError(f"Mimi config: missing section {name!r}")
    out = {}
    for key, value in part.items():
        if key in fixed:
            if value != fixed[key]:
                raise ConfigError(f"Mimi config: {name}.{key}={value!r} is not supported (only {fixed[key]!r})")
        elif key in fields:
            out[key] = value
        else:
            raise ConfigError(f"Mimi config: unexpected key {name}.{key!r}")
    return out


def _mimi_config_from_kyutai(cfg: dict[str, Any], num_codebooks: int) -> MimiConfig:
    unknown = sorted(set(cfg) - {"sample_rate", "channels", "frame_rate", "seanet", "quantizer", "transformer"})
    if unknown:
        raise ConfigError(f"Mimi config: unexpected key {unknown[0]!r}")
    seanet_fields = tuple(SeanetConfig.__dataclass_fields__)
    raw_seanet = cfg.get("seanet") if isinstance(cfg.get("seanet"), dict) else {}
    dim = raw_seanet.get("dimension", 512)
    seanet = _section(
        cfg, "seanet", {"causal": True, "activation": "ELU", "norm": "none", "disable_norm_outer_blocks": 0},
        seanet_fields,
    )
    transformer = _section(
        cfg, "transformer", {"conv_layout": True, "input_dimension": dim, "output_dimensions": [dim]},
        ("d_model", "num_heads", "num_layers", "causal", "layer_scale", "context", "max_period", "gating",
         "norm", "positional_embedding", "dim_feedforward", "kv_repeat"),
    )
    quantizer = _section(
        cfg, "quantizer", {"input_dimension": dim, "output_dimension": dim}, ("dimension", "n_q", "bins")
    )
    if cfg.get("channels", seanet.get("channels", 1)) != seanet.get("channels", 1):
        raise ConfigError("Mimi config: channels differs from seanet.channels")
    try:
        return MimiConfig(
            seanet=SeanetConfig(**seanet),
            transformer=TransformerConfig(**transformer),
            sample_rate=cfg.get("sample_rate", 24_000),
            frame_rate=cfg.get("frame_rate", 12.5),
            quantizer_dimension=quantizer.get("dimension", 256),
            quantizer_n_q=quantizer.get("n_q", 32),
            quantizer_bins=quantizer.get("bins", 2048),
            num_codebooks=num_codebooks,
        )
    except TypeError as e:  # a required key is missing
        raise ConfigError(f"Mimi config: {e}") from e
