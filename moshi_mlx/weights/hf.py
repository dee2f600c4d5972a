"""The HF transformers Moshi layout (`MoshiForConditionalGeneration.save_pretrained`) <-> ours.

An HF folder holds `config.json` (`model_type: "moshi"`, with `depth_decoder_config` and
`audio_encoder_config`) and `model.safetensors` with three parts:
- the temporal transformer: `decoder.model.*` (`embed_tokens`, `layers.{l}.self_attn.{q,k,v,o}_proj.linear`,
  `mlp.fc1/fc2`, `input_layernorm`, `post_attention_layernorm`, `norm`), `decoder.lm_head`, and the
  audio embeddings `embed_tokens.{i}` (Moshi's 8 then the user's 8);
- the depformer: `depth_decoder.*`, every per-codebook weight one stacked `[K, out, in]` tensor
  (`input_projections`, `lm_heads`, each layer's q/k/v/o and fc1/fc2);
- Mimi: `audio_encoder.*` (mapped by `hf_mimi.py`).
HF's attention applies RoPE to the two halves of each head (`rotate_half`) where Kyutai rotates
interleaved pairs, so the rows of q and k are permuted within each head (`_halves_to_pairs`);
q·k is unchanged. The HF layout can only express Moshi's shape (`check_hf_compatible`): two audio
streams of `dep_q` codebooks, acoustic delay 1, a per-codebook gated depformer without positions.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import mlx.core as mx
from mlx.utils import tree_flatten

from ..config import ConfigError, LmConfig
from ..hub import is_hf_moshi_config
from ..models.lm import Lm
from .common import WeightsError

MIMI_PREFIX = "audio_encoder."
# HF `hidden_act` values with the same function in our gated feed-forward.
_ACTS = ("silu", "gelu", "relu", "sigmoid", "tanh")
_EPS_NORM = {1e-8: "rms_norm_f32", 1e-5: "rms_norm"}


is_hf_config = is_hf_moshi_config


def is_hf_layout(keys: list[str]) -> bool:
    """True for key sets of the HF transformers Moshi layout."""
    return any(k.startswith(("decoder.model.", "depth_decoder.")) for k in keys)


# --------------------------------------------------------------------------------------------------
# Config


def moshi_delays(num_codebooks: int) -> list[int]:
    """HF's fixed delay pattern: text 0, then per audio stream 0 for the first codebook, 1 for the rest."""
    stream = [0] + [1] * (num_codebooks - 1)
    return [0] + stream + stream


def _dim_feedforward(hidden: int) -> int:
    """A Kyutai `dim_feedforward` whose gated hidden width (2/3 of it) is `hidden`."""
    return (3 * hidden + 1) // 2


def _get(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"HF Moshi config: missing key {where}{key!r}")
    return cfg[key]


def _act(value: Any, where: str) -> str:
    if value not in _ACTS:
        raise ConfigError(f"HF Moshi config: {where}hidden_act={value!r} is not supported (supported: {', '.join(_ACTS)})")
    return value


def _heads(cfg: Mapping[str, Any], where: str) -> tuple[int, int, int]:
    dim, heads = _get(cfg, "hidden_size", where), _get(cfg, "num_attention_heads", where)
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or dim // heads
    if head_dim * heads != dim:
        raise ConfigError(f"HF Moshi config: {where}head_dim={head_dim} is not hidden_size / num_attention_heads")
    if heads % kv:
        raise ConfigError(f"HF Moshi config: {where}num_attention_heads is not a multiple of num_key_value_heads")
    return dim, heads, heads // kv


def kyutai_config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The Kyutai `config.json` dict of the LM an HF Moshi `config.json` describes."""
    depth = hf.get("depth_decoder_config")
    if not isinstance(depth, dict):
        raise ConfigError("HF Moshi config: missing section 'depth_decoder_config'")
    dim, heads, kv_repeat = _heads(hf, "")
    ddim, dheads, dkv_repeat = _heads(depth, "depth_decoder_config.")
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10_000.0)}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"HF Moshi config: rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
    eps = float(hf.get("rms_norm_eps", 1e-8))
    if eps not in _EPS_NORM or float(depth.get("rms_norm_eps", 1e-8)) != eps:
        raise ConfigError(f"HF Moshi config: rms_norm_eps={eps} is not supported (1e-8 or 1e-5, the same in both decoders)")
    K = _get(hf, "num_codebooks", "")
    if depth.get("num_codebooks", K) != K:
        raise ConfigError("HF Moshi config: depth_decoder_config.num_codebooks differs from num_codebooks")
    dff, dep_dff = _get(hf, "ffn_dim", ""), _get(depth, "ffn_dim", "depth_decoder_config.")
    hidden_scale = _dim_feedforward(dff // 2) / dim
    if int(hidden_scale * dim) != _dim_feedforward(dff // 2):
        raise ConfigError(f"HF Moshi config: ffn_dim={dff} cannot be expressed as a hidden_scale of {dim}")
    card = hf.get("audio_vocab_size") or (hf.get("audio_encoder_config") or {}).get("codebook_size", 2048)
    return dict(
        dim=dim, text_card=_get(hf, "vocab_size", ""), existing_text_padding_id=3, n_q=2 * K, dep_q=K, card=card,
        num_heads=heads, num_layers=_get(hf, "num_hidden_layers", ""), hidden_scale=hidden_scale, kv_repeat=kv_repeat,
        causal=True, context=hf.get("sliding_window"), max_period=float(rope.get("rope_theta", 10_000.0)),
        gating=_act(hf.get("hidden_act", "silu"), ""), norm=_EPS_NORM[eps], positional_embedding="rope",
        depformer_dim=ddim, depformer_dim_feedforward=_dim_feedforward(dep_dff // 2), depformer_num_heads=dheads,
        depformer_num_layers=_get(depth, "num_hidden_layers", "depth_decoder_config."), depformer_kv_repeat=dkv_repeat,
        depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
        depformer_gating=_act(depth.get("hidden_act", "silu"), "depth_decoder_config."), delays=moshi_delays(K),
    )


def lm_config_from_hf(hf: Mapping[str, Any]) -> LmConfig:
    """`LmConfig` of an HF Moshi `config.json` dict (its `raw` is the equivalent Kyutai config)."""
    return LmConfig.from_kyutai_json(kyutai_config_from_hf(hf))


def check_hf_compatible(cfg: LmConfig) -> None:
    """Raises a one-line `ConfigError` naming what of `cfg` the HF Moshi layout cannot express."""
    t, d = cfg.transformer, cfg.depformer
    problems = [
        (cfg.dep_q == 0 or d is None, "it has no depformer"),
        (cfg.n_q != 2 * cfg.dep_q, f"n_q={cfg.n_q} is not 2 x dep_q={cfg.dep_q}"),
        (cfg.delays != moshi_delays(cfg.dep_q), f"delays {cfg.delays} are not Moshi's {moshi_delays(cfg.dep_q)}"),
        (t.positional_embedding != "rope", f"positional_embedding={t.positional_embedding!r} (HF: rope)"),
        (not t.norm.startswith("rms_norm"), f"norm={t.norm!r} (HF: rms_norm)"),
        (t.gating not in _ACTS, f"gating={t.gating!r} (HF: a gated feed-forward)"),
        (t.layer_scale is not None, "it uses layer scale"),
        (not t.causal, "it is not causal"),
        (cfg.bias_proj, "its output projections have biases"),
        (cfg.text_card_out not in (None, cfg.text_card), f"text_card_out={cfg.text_card_out} differs from text_card"),
    ]
    if d is not None:
        problems += [
            (not cfg.depformer_multi_linear, "depformer_multi_linear is false"),
            (d.weights_per_step != cfg.dep_q or d.num_weight_sets != cfg.dep_q,
             "the depformer does not have one weight set per codebook"),
            (cfg.depformer_low_rank_embeddings is not None, "the depformer has low-rank embeddings"),
            (d.positional_embedding != "none", f"depformer positional embedding {d.positional_embedding!r} (HF: none)"),
            (d.gating not in _ACTS or d.norm != t.norm or d.layer_scale is not None or not d.causal,
             "the depformer's layers differ from the HF depth decoder's"),
            (isinstance(d.dim_feedforward, list), "the depformer has per-codebook feed-forward widths"),
        ]
    if cfg.extra_heads_num_heads:
        problems.append((True, "it has extra heads"))
    for bad, why in problems:
        if bad:
            raise ConfigError(f"this LM cannot be expressed in the HF transformers Moshi layout: {why}")


def hf_lm_config(cfg: LmConfig) -> dict[str, Any]:
    """The LM part of an HF Moshi `config.json` (the caller adds `audio_encoder_config`)."""
    check_hf_compatible(cfg)
    t, d = cfg.transformer, cfg.depformer
    assert d is not None
    eps = t.norm_eps
    depth = dict(
        model_type="moshi_depth", vocab_size=cfg.text_card, hidden_size=d.d_model, input_size=t.d_model,
        num_hidden_layers=d.num_layers, num_attention_heads=d.num_heads, num_key_value_heads=d.num_kv_heads,
        audio_vocab_size=cfg.card, max_position_embeddings=cfg.dep_q + 1, hidden_act=d.gating, head_dim=d.head_dim,
        sliding_window=max(8, cfg.dep_q), ffn_dim=2 * d.ffn_hidden(), rms_norm_eps=eps, num_codebooks=cfg.dep_q,
    )
    return dict(
        architectures=["MoshiForConditionalGeneration"], model_type="moshi", vocab_size=cfg.text_card,
        hidden_size=t.d_model, num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads, audio_vocab_size=cfg.card, head_dim=t.head_dim,
        max_position_embeddings=t.context or 3000, sliding_window=t.context or 3000,
        rope_parameters={"rope_type": "default", "rope_theta": t.max_period}, hidden_act=t.gating,
        ffn_dim=2 * t.ffn_hidden(), rms_norm_eps=eps, num_codebooks=cfg.dep_q, tie_word_embeddings=False,
        depth_decoder_config=depth,
    )


# --------------------------------------------------------------------------------------------------
# Weights


def _pairs_to_halves(w: mx.array, heads: int) -> mx.array:
    """Rows of a q/k projection, per head: interleaved RoPE pairs (Kyutai) -> halves (HF)."""
    out, cin = w.shape
    return w.reshape(heads, out // heads // 2, 2, cin).transpose(0, 2, 1, 3).reshape(out, cin)


def _halves_to_pairs(w: mx.array, heads: int) -> mx.array:
    """Inverse of `_pairs_to_halves`."""
    out, cin = w.shape
    return w.reshape(heads, 2, out // heads // 2, cin).transpose(0, 2, 1, 3).reshape(out, cin)


def _renames(cfg: LmConfig) -> dict[str, str]:
    """Our key -> HF key, for the tensors that only change name."""
    table = {"text_emb.weight": "decoder.model.embed_tokens.weight", "out_norm.weight": "decoder.model.norm.weight",
             "text_linear.weight": "decoder.lm_head.weight",
             "depformer_text_emb.weight": "depth_decoder.text_embed_tokens.weight"}
    table.update({f"emb.{i}.weight": f"embed_tokens.{i}.weight" for i in range(cfg.n_q)})
    table.update({f"depformer_emb.{i}.weight": f"depth_decoder.embed_tokens.{i}.weight" for i in range(cfg.dep_q - 1)})
    for side, hf, n in (("transformer", "decoder.model", cfg.transformer.num_layers),
                        ("depformer", "depth_decoder", cfg.depformer.num_layers)):
        for layer in range(n):
            o, h = f"{side}.layers.{layer}", f"{hf}.layers.{layer}"
            table[f"{o}.norm1.weight"] = f"{h}.input_layernorm.weight"
            table[f"{o}.norm2.weight"] = f"{h}.post_attention_layernorm.weight"
            if side == "transformer":
                table[f"{o}.self_attn.out_projs.0.weight"] = f"{h}.self_attn.o_proj.linear.weight"
                table[f"{o}.gating.linear_in.weight"] = f"{h}.mlp.fc1.weight"
                table[f"{o}.gating.linear_out.weight"] = f"{h}.mlp.fc2.weight"
    return table


def _stacks(cfg: LmConfig) -> dict[str, str]:
    """HF stacked `[K, ...]` key -> our key pattern with `{k}` for the codebook."""
    table = {"depth_decoder.input_projections.weight": "depformer_in.{k}.weight",
             "depth_decoder.lm_heads.weight": "linears.{k}.weight"}
    for layer in range(cfg.depformer.num_layers):
        h, o = f"depth_decoder.layers.{layer}", f"depformer.layers.{layer}"
        table[f"{h}.self_attn.o_proj.linear.weight"] = f"{o}.self_attn.out_projs.{{k}}.weight"
        table[f"{h}.mlp.fc1.weight"] = f"{o}.gating.{{k}}.linear_in.weight"
        table[f"{h}.mlp.fc2.weight"] = f"{o}.gating.{{k}}.linear_out.weight"
    return table


def _qkv(cfg: LmConfig) -> list[tuple[str, str, int | None, int, int]]:
    """(our fused in_proj key, HF attention prefix, codebook or None, heads, kv heads) of every attention."""
    out = []
    t, d = cfg.transformer, cfg.depformer
    for layer in range(t.num_layers):
        out.append((f"transformer.layers.{layer}.self_attn.in_projs.0.weight",
                    f"decoder.model.layers.{layer}.self_attn", None, t.num_heads, t.num_kv_heads))
    for layer in range(d.num_layers):
        for k in range(cfg.dep_q):
            out.append((f"depformer.layers.{layer}.self_attn.in_projs.{k}.weight",
                        f"depth_decoder.layers.{layer}.self_attn", k, d.num_heads, d.num_kv_heads))
    return out


def convert_hf(
    state: Mapping[str, mx.array], cfg: LmConfig, source: str = "checkpoint"
) -> tuple[dict[str, mx.array], dict[str, str], Callable[[str], str]]:
    """Maps the LM part of an HF Moshi state dict to our names (`audio_encoder.*` is ignored here).

    Returns the weights, our key -> HF key, and a function naming a missing key of ours in HF
    spelling. Shapes are checked later against the model (`strict_load`).
    """
    try:
        check_hf_compatible(cfg)
    except ConfigError as e:
        raise WeightsError(f"{source}: HF transformers Moshi layout, but the config does not fit it ({e})") from e
    lm_state = {k: v for k, v in state.items() if not k.startswith(MIMI_PREFIX)}
    used: set[str] = set()
    hf_of: dict[str, str] = {}

    def take(key: str, ndim: int) -> mx.array:
        if key not in lm_state:
            raise WeightsError(f"{source}: missing key {key!r}")
        value = lm_state[key]
        if value.ndim != ndim:
            raise WeightsError(f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {ndim} dimensions")
        used.add(key)
        return value

    out: dict[str, mx.array] = {}
    origin: dict[str, str] = {}
    for ours, hf in _renames(cfg).items():
        hf_of[ours] = hf
        if hf in lm_state:
            out[ours], origin[ours] = take(hf, lm_state[hf].ndim), hf
    for hf, pattern in _stacks(cfg).items():
        stacked = take(hf, 3)
        if stacked.shape[0] != cfg.dep_q:
            raise WeightsError(f"{source}: key {hf!r} has shape {tuple(stacked.shape)}, expected {cfg.dep_q} stacked matrices")
        for k in range(cfg.dep_q):
            out[pattern.format(k=k)], origin[pattern.format(k=k)] = stacked[k], hf
    for ours, prefix, k, heads, kv_heads in _qkv(cfg):
        ndim = 2 if k is None else 3
        q, kk, v = (take(f"{prefix}.{n}_proj.linear.weight", ndim) for n in "qkv")
        if k is None:
            q, kk = _halves_to_pairs(q, heads), _halves_to_pairs(kk, kv_heads)
        else:
            q, kk, v = q[k], kk[k], v[k]
        out[ours], origin[ours] = mx.concatenate([q, kk, v], axis=0), f"{prefix}.q_proj.linear.weight"
        hf_of[ours] = origin[ours]
    unexpected = sorted(set(lm_state) - used)
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {unexpected[0]!r}")
    return out, origin, lambda key: hf_of.get(key, key)


def hf_lm_state(model: Lm) -> dict[str, mx.array]:
    """`model`'s weights in HF Moshi names (the inverse of `convert_hf`); the model must not be quantized."""
    cfg = model.cfg
    check_hf_compatible(cfg)
    ours = dict(tree_flatten(model.parameters()))
    if any(k.endswith(".scales") for k in ours):
        raise ConfigError("a quantized LM cannot be written in the HF layout; convert from an unquantized checkpoint")
    state = {hf: ours[o] for o, hf in _renames(cfg).items()}
    for hf, pattern in _stacks(cfg).items():
        state[hf] = mx.stack([ours[pattern.format(k=k)] for k in range(cfg.dep_q)])
    depth_qkv: dict[str, list[list[mx.array]]] = {}
    for key, prefix, k, heads, kv_heads in _qkv(cfg):
        w = ours[key]
        nq = heads * w.shape[0] // (heads + 2 * kv_heads)
        nk = (w.shape[0] - nq) // 2
        q, kk, v = w[:nq], w[nq : nq + nk], w[nq + nk :]
        if k is None:
            state[f"{prefix}.q_proj.linear.weight"] = _pairs_to_halves(q, heads)
            state[f"{prefix}.k_proj.linear.weight"] = _pairs_to_halves(kk, kv_heads)
            state[f"{prefix}.v_proj.linear.weight"] = v
        else:
            depth_qkv.setdefault(prefix, [[], [], []])
            for part, x in zip(depth_qkv[prefix], (q, kk, v)):
                part.append(x)
    for prefix, parts in depth_qkv.items():
        for name, part in zip("qkv", parts):
            state[f"{prefix}.{name}_proj.linear.weight"] = mx.stack(part)
    return state
