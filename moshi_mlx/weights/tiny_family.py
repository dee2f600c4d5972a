"""Tiny random members of the Moshi family, in Kyutai's repo layout, to try each task offline.

`make_tiny_stt`: a speech-to-text model like Kyutai STT (`model_type: "stt"`, 32 audio codebooks in,
no depformer, end-of-speech extra heads, `stt_config` padding), with the same small tokenizer and
Mimi as `make_tiny_model`. The words it writes are noise; the folder exercises every code path.
`make_tiny_tts`: a text-to-speech model like Kyutai TTS (`model_type: "tts"`), with a voice file;
`make_tiny_hibiki`: a Hibiki-like translation model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

import mlx.core as mx

from ..config import LmConfig
from ..hub import MIMI_NAME, TOKENIZER_NAME
from ..models.lm import Lm
from .mimi import save_mimi
from .save import save_lm
from .tiny import MIMI_CONFIG_NAME, new_folder, train_tokenizer
from .tiny_mimi import informative_mimi, small_mimi_config

STT_CONFIG = {"audio_silence_prefix_seconds": 1.0, "audio_delay_seconds": 0.5}


def tiny_stt_config(text_card: int) -> dict:
    """Kyutai config keys of a 2-layer STT model (Kyutai STT's stream layout and settings, tiny widths)."""
    return dict(
        dim=64, text_card=text_card, existing_text_padding_id=3, n_q=32, dep_q=0, card=2048, num_heads=4,
        num_layers=2, hidden_scale=4.125, causal=True, context=250, max_period=10000, gating="silu",
        norm="rms_norm_f32", positional_embedding="rope", delays=[0] * 33, extra_heads_num_heads=4,
        extra_heads_dim=6, model_type="stt", stt_config=dict(STT_CONFIG),
    )


def make_tiny_stt(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes the tiny STT folder `out_dir` (which must not exist or be empty); returns it."""
    return _write_tiny(out_dir, seed, 32, tiny_stt_config)

TTS_CONFIG = {"audio_delay": 1.28, "second_stream_ahead": 2}
VOICE_FILE = "voice.safetensors"


def tiny_tts_config(text_card: int, speaker_dim: int = 32) -> dict:
    """Kyutai config keys of a 2-layer TTS model like kyutai/tts-1.6b-en_fr (every codebook generated, the
    demuxed lookahead text stream, low-rank depformer embeddings, a cross-attended speaker embedding,
    summed `control`/`cfg` conditions of a CFG-distilled model), tiny widths and 8 codebooks."""
    lut = {"type": "lut", "lut": {"n_bins": 1, "dim": 16, "tokenizer": "noop", "possible_values": ["ok"]}}
    cfg_values = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
    return dict(
        dim=64, text_card=text_card, existing_text_padding_id=3, n_q=8, dep_q=8, card=2048, num_heads=4,
        num_layers=2, hidden_scale=4.125, causal=True, context=500, max_period=10000, gating="silu",
        norm="rms_norm_f32", positional_embedding="rope", depformer_dim=64, depformer_num_heads=4,
        depformer_num_layers=2, depformer_dim_feedforward=128, depformer_multi_linear=True,
        depformer_pos_emb="none", depformer_weights_per_step=True, depformer_low_rank_embeddings=32,
        demux_second_stream=True, delays=[0, 0] + [2] * 7, cross_attention=True,
        conditioners={
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": speaker_dim}},
            "control": lut,
            "cfg": {"type": "lut", "lut": {"n_bins": len(cfg_values), "dim": 16, "tokenizer": "noop",
                                           "possible_values": cfg_values}},
        },
        fuser={"sum": ["control", "cfg"], "cross": ["speaker_wavs"], "cross_attention_pos_emb": True,
               "cross_attention_pos_emb_scale": 1.0},
        model_type="tts", tts_config=dict(TTS_CONFIG),
    )


def make_tiny_tts(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes the tiny TTS folder `out_dir` (which must not exist or be empty), with a random voice
    embedding `voice.safetensors` in kyutai/tts-voices' format; returns the folder."""

    def voice(tmp: Path, config: dict) -> list[Path]:
        dim = config["conditioners"]["speaker_wavs"]["tensor"]["dim"]
        mx.save_safetensors(str(tmp / VOICE_FILE), {"speaker_wavs": mx.random.normal((1, dim, 40))})
        return [tmp / VOICE_FILE]

    return _write_tiny(out_dir, seed, 8, tiny_tts_config, voice)


def make_tiny_hibiki(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes a tiny Hibiki-like folder (`model_type: "hibiki"`: the tiny Moshi's streams, conditioned on
    a `description` LUT summed into every step, `lm_gen_config.cfg_coef` 3) for `translate`; returns it."""
    from .tiny import tiny_lm_config

    quality = ["very_bad", "bad", "neutral", "good", "very_good"]
    lut = {"type": "lut", "lut": {"n_bins": 5, "dim": 16, "tokenizer": "noop", "possible_values": quality}}

    def config_of(vocab: int) -> dict:
        return dict(tiny_lm_config(vocab), model_type="hibiki", conditioners={"description": lut},
                    fuser={"sum": ["description"]}, lm_gen_config={"cfg_coef": 3.0})

    return _write_tiny(out_dir, seed, small_mimi_config().num_codebooks, config_of)


def _write_tiny(
    out_dir: str | Path, seed: int, num_codebooks: int, config_of: Callable[[int], dict],
    extra: Callable[[Path, dict], list[Path]] | None = None,
) -> Path:
    """Writes a tiny family folder: the small tokenizer and Mimi (`num_codebooks`), and a bf16 LM of
    `config_of(text_vocab)`; `extra(tmp, config)` writes more files and returns them. Returns the folder."""
    out_dir = new_folder(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = train_tokenizer(tmp / TOKENIZER_NAME)
        mimi_cfg = small_mimi_config(num_codebooks=num_codebooks)
        (tmp / MIMI_CONFIG_NAME).write_text(json.dumps(mimi_cfg.to_kyutai_json(), indent=2) + "\n")
        save_mimi(informative_mimi(mimi_cfg, seed), tmp / MIMI_NAME)
        config = dict(config_of(vocab), mimi_config_name=MIMI_CONFIG_NAME)
        mx.random.seed(seed)
        files = [tmp / TOKENIZER_NAME, tmp / MIMI_NAME, tmp / MIMI_CONFIG_NAME]
        if extra is not None:
            files += extra(tmp, config)
        lm = Lm(LmConfig.from_kyutai_json(config))
        lm.set_dtype(mx.bfloat16)
        mx.eval(lm.parameters())
        return save_lm(lm, out_dir, extra_files=files)
