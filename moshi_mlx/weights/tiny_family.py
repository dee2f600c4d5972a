"""Tiny random members of the Moshi family, in Kyutai's repo layout, to try each task offline.

`make_tiny_stt`: a speech-to-text model like Kyutai STT (`model_type: "stt"`, 32 audio codebooks in,
no depformer, end-of-speech extra heads, `stt_config` padding), with the same small tokenizer and
Mimi as `make_tiny_model`. The words it writes are noise; the folder exercises every code path.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlx.core as mx

from ..config import LmConfig
from ..hub import MIMI_NAME, TOKENIZER_NAME
from ..models.lm import Lm
from .mimi import save_mimi
from .save import save_lm
from .tiny import MIMI_CONFIG_NAME, train_tokenizer
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
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: already exists and is not an empty folder; choose a new folder")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = train_tokenizer(tmp / TOKENIZER_NAME)
        mimi_cfg = small_mimi_config(num_codebooks=32)
        (tmp / MIMI_CONFIG_NAME).write_text(json.dumps(mimi_cfg.to_kyutai_json(), indent=2) + "\n")
        save_mimi(informative_mimi(mimi_cfg, seed), tmp / MIMI_NAME)
        config = dict(tiny_stt_config(vocab), mimi_config_name=MIMI_CONFIG_NAME)
        mx.random.seed(seed)
        lm = Lm(LmConfig.from_kyutai_json(config))
        lm.set_dtype(mx.bfloat16)
        mx.eval(lm.parameters())
        return save_lm(lm, out_dir, extra_files=[tmp / TOKENIZER_NAME, tmp / MIMI_NAME, tmp / MIMI_CONFIG_NAME])
