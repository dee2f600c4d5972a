"""Mimi in the HF transformers layout (`MimiModel`, the `audio_encoder.*` of an HF Moshi) <-> Kyutai's.

HF checkpoints are flat (`save_pretrained` writes the original layout; transformers 5 renames it to
its nested modules on load, and we accept those nested names too):
`encoder.layers.{n}.conv` / `.block.{j}.conv` (SEANet; Kyutai `encoder.model.{n}.conv.conv`),
`decoder.layers.{n}.conv` (Kyutai `decoder.model.{n}.conv.conv`, or `.convtr.convtr` for upsampling),
`{encoder,decoder}_transformer.layers.{i}` with separate q/k/v (RoPE halves, permuted as in `hf.py`),
`downsample.conv`, `upsample.conv`, and `quantizer.{semantic,acoustic}_residual_vector_quantizer`
(Kyutai `quantizer.rvq_first` / `rvq_rest`). Tensors keep their torch layout; the Kyutai state is
then read by `weights.mimi` like any Kyutai Mimi checkpoint.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import mlx.core as mx
import numpy as np

from ..config import ConfigError, MimiConfig, SeanetConfig, TransformerConfig
from .common import WeightsError
from .hf import _halves_to_pairs, _pairs_to_halves
from .mimi import mimi_key_table

Array = mx.array | np.ndarray

# transformers 5's nested module names -> the flat checkpoint names (its conversion mapping, reversed).
_NESTED = (
    (re.compile(r"^encoder\.encoder_seanet\.layers\."), "encoder.layers."),
    (re.compile(r"^encoder\.encoder_transformer\."), "encoder_transformer."),
    (re.compile(r"^encoder\.downsample\."), "downsample."),
    (re.compile(r"^decoder\.upsample\."), "upsample."),
    (re.compile(r"^decoder\.decoder_transformer\."), "decoder_transformer."),
    (re.compile(r"^decoder\.decoder_seanet\.layers\."), "decoder.layers."),
)
_LAYER = (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"), ("linear1", "mlp.fc1"),
          ("linear2", "mlp.fc2"), ("layer_scale_1", "self_attn_layer_scale"), ("layer_scale_2", "mlp_layer_scale"),
          ("self_attn.out_proj", "self_attn.o_proj"))


def hf_name(kyutai: str) -> str:
    """The HF (flat) name of a Kyutai torch Mimi key (published spelling); `in_proj_weight` maps to `q_proj`."""
    k = kyutai
    k = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", k)
    k = re.sub(r"^((?:encoder|decoder)\.layers\..*)\.(?:conv\.conv|convtr\.convtr)\.", r"\1.conv.", k)
    k = re.sub(r"^(encoder|decoder)_transformer\.transformer\.", r"\1_transformer.", k)
    for ours, hf in _LAYER:
        k = k.replace(f".{ours}.", f".{hf}.")
    k = k.replace(".self_attn.in_proj_weight", ".self_attn.q_proj.weight")
    k = k.replace("downsample.conv.conv.conv.", "downsample.conv.").replace("upsample.convtr.convtr.convtr.", "upsample.conv.")
    k = k.replace("quantizer.rvq_first.", "quantizer.semantic_residual_vector_quantizer.")
    k = k.replace("quantizer.rvq_rest.", "quantizer.acoustic_residual_vector_quantizer.")
    k = k.replace(".vq.layers.", ".layers.").replace("._codebook.embedding_sum", ".codebook.embed_sum")
    k = k.replace("._codebook.cluster_usage", ".codebook.cluster_usage").replace("._codebook._initialized", ".codebook.initialized")
    return k


def _kyutai_keys(cfg: MimiConfig) -> list[str]:
    names = []
    for key in mimi_key_table(cfg):
        key = key.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        names.append(key.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight"))
    return names


def kyutai_mimi_state(state: Mapping[str, Array], cfg: MimiConfig, source: str) -> dict[str, Array]:
    """An HF Mimi state dict (prefix already removed) -> Kyutai torch Mimi keys (published spelling)."""
    flat: dict[str, Array] = {}
    for key, value in state.items():
        for pattern, repl in _NESTED:
            key = pattern.sub(repl, key)
        flat[key] = value
    heads, kv = cfg.transformer.num_heads, cfg.transformer.num_kv_heads
    out: dict[str, Array] = {}
    used: set[str] = set()
    for kyutai in _kyutai_keys(cfg):
        hf = hf_name(kyutai)
        if kyutai.endswith(".self_attn.in_proj_weight"):
            prefix = hf[: -len("q_proj.weight")]
            parts = []
            for name, n in (("q", heads), ("k", kv), ("v", 0)):
                key = f"{prefix}{name}_proj.weight"
                if key not in flat:
                    raise WeightsError(f"{source}: missing key {'audio_encoder.' + key!r}")
                used.add(key)
                w = mx.array(np.asarray(flat[key], dtype=np.float32)) if isinstance(flat[key], np.ndarray) else flat[key]
                parts.append(_halves_to_pairs(w, n) if n else w)
            out[kyutai] = mx.concatenate(parts, axis=0)
            continue
        if hf not in flat:
            raise WeightsError(f"{source}: missing key {'audio_encoder.' + hf!r}")
        used.add(hf)
        out[kyutai] = flat[hf]
    unexpected = sorted(set(flat) - used)
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {'audio_encoder.' + unexpected[0]!r}")
    return out


def hf_mimi_state(kyutai_state: Mapping[str, Array], cfg: MimiConfig) -> dict[str, mx.array]:
    """A Kyutai torch Mimi state (published spelling, e.g. `mimi_torch_state`) -> HF flat names."""
    heads, kv = cfg.transformer.num_heads, cfg.transformer.num_kv_heads
    out: dict[str, mx.array] = {}
    for key, value in kyutai_state.items():
        value = mx.array(value) if isinstance(value, np.ndarray) else value
        hf = hf_name(key)
        if key.endswith(".self_attn.in_proj_weight"):
            d, dk = heads * cfg.transformer.head_dim, kv * cfg.transformer.head_dim
            prefix = hf[: -len("q_proj.weight")]
            out[f"{prefix}q_proj.weight"] = _pairs_to_halves(value[:d], heads)
            out[f"{prefix}k_proj.weight"] = _pairs_to_halves(value[d : d + dk], kv)
            out[f"{prefix}v_proj.weight"] = value[d + dk :]
        else:
            out[hf] = value
    return out


def mimi_config_from_hf(hf: Mapping[str, Any], num_codebooks: int = 8) -> MimiConfig:
    """Our `MimiConfig` of an HF `MimiConfig` dict (an HF Moshi's `audio_encoder_config`)."""
    def get(key: str, default: Any) -> Any:
        return hf.get(key, default)

    if get("use_conv_shortcut", False) or not get("use_causal_conv", True):
        raise ConfigError("HF Mimi config: only causal convolutions without conv shortcuts are supported")
    if get("hidden_act", "gelu") != "gelu" or get("attention_bias", False):
        raise ConfigError("HF Mimi config: only GELU feed-forwards without attention biases are supported")
    dim = get("hidden_size", 512)
    if get("upsample_groups", 512) != dim:
        raise ConfigError(f"HF Mimi config: upsample_groups={get('upsample_groups', 512)} must equal hidden_size={dim}")
    heads = get("num_attention_heads", 8)
    if (get("head_dim", None) or dim // heads) * heads != dim:
        raise ConfigError("HF Mimi config: head_dim must be hidden_size / num_attention_heads")
    rope = get("rope_parameters", None) or {"rope_theta": get("rope_theta", 10_000.0)}
    rate = get("_frame_rate", None) or get("frame_rate", None) or 12.5
    try:
        return MimiConfig(
            seanet=SeanetConfig(
                dimension=dim, channels=get("audio_channels", 1), n_filters=get("num_filters", 64),
                n_residual_layers=get("num_residual_layers", 1), ratios=list(get("upsampling_ratios", [8, 6, 5, 4])),
                kernel_size=get("kernel_size", 7), residual_kernel_size=get("residual_kernel_size", 3),
                last_kernel_size=get("last_kernel_size", 3), dilation_base=get("dilation_growth_rate", 2),
                compress=get("compress", 2), pad_mode=get("pad_mode", "constant"), true_skip=True,
            ),
            transformer=TransformerConfig(
                d_model=dim, num_heads=heads, num_layers=get("num_hidden_layers", 8),
                dim_feedforward=get("intermediate_size", 2048), causal=True, context=get("sliding_window", 250),
                positional_embedding="rope", max_period=float(rope.get("rope_theta", 10_000.0)), gating="none",
                norm="layer_norm", layer_scale=get("layer_scale_initial_scale", 0.01),
                kv_repeat=heads // (get("num_key_value_heads", None) or heads),
            ),
            sample_rate=get("sampling_rate", 24_000), frame_rate=rate,
            quantizer_dimension=get("codebook_dim", 256), quantizer_n_q=get("num_quantizers", 32),
            quantizer_bins=get("codebook_size", 2048), n_q_semantic=get("num_semantic_quantizers", 1),
            num_codebooks=num_codebooks,
        )
    except TypeError as e:
        raise ConfigError(f"HF Mimi config: {e}") from e


def hf_mimi_config(cfg: MimiConfig) -> dict[str, Any]:
    """The HF `MimiConfig` dict of our `cfg` (what an HF Moshi's `audio_encoder_config` holds)."""
    s, t = cfg.seanet, cfg.transformer
    if t.norm != "layer_norm" or t.gating != "none" or cfg.resample_stride != 2 or t.positional_embedding != "rope":
        raise ConfigError("this Mimi cannot be written in the HF layout (HF: LayerNorm, GELU, RoPE, 2x downsampling)")
    return dict(
        model_type="mimi", sampling_rate=cfg.sample_rate, frame_rate=cfg.frame_rate, audio_channels=s.channels,
        hidden_size=s.dimension, num_filters=s.n_filters, num_residual_layers=s.n_residual_layers,
        upsampling_ratios=list(s.ratios), kernel_size=s.kernel_size, last_kernel_size=s.last_kernel_size,
        residual_kernel_size=s.residual_kernel_size, dilation_growth_rate=s.dilation_base, use_causal_conv=True,
        pad_mode=s.pad_mode, compress=s.compress, trim_right_ratio=1.0, codebook_size=cfg.quantizer_bins,
        codebook_dim=cfg.quantizer_dimension, num_quantizers=cfg.quantizer_n_q, use_conv_shortcut=False,
        vector_quantization_hidden_dimension=cfg.quantizer_dimension, num_semantic_quantizers=cfg.n_q_semantic,
        upsample_groups=s.dimension, num_hidden_layers=t.num_layers, intermediate_size=t.dim_feedforward,
        num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim, hidden_act="gelu",
        max_position_embeddings=8000, norm_eps=1e-5, use_cache=False, use_streaming=False,
        rope_parameters={"rope_type": "default", "rope_theta": t.max_period}, sliding_window=t.context,
        layer_scale_initial_scale=t.layer_scale, attention_bias=False,
    )
