"""`make_tiny_model`: a tiny random Moshi folder in Kyutai's repo layout, to try everything offline.

The folder (a few MB, built in seconds, no download, nothing beyond the base install):

    config.json                                     the LM config (Kyutai keys), naming the Mimi config
    model.safetensors                               a 2-layer random bf16 LM, Moshi's stream layout:
                                                    1 text + 8 Moshi + 8 user codebooks of 2048
                                                    entries, the 7B's delays
    tokenizer_spm_32k_3.model                       a small SentencePiece model (the LM's text vocabulary)
    tokenizer-e351c8d8-checkpoint125.safetensors    a random Mimi made informative (`tiny_mimi.py`),
                                                    in Kyutai's torch layout
    mimi_config.json                                that Mimi's architecture (Kyutai's format), named by
                                                    config.json's `mimi_config_name`

By default the Mimi is small (`small_mimi_config`), which only the MLX backend runs; with
`full_mimi=True` it has the published architecture (385 MB, about a minute to build on a CPU),
which rustymimi runs too, and no Mimi config file is written. The answers are noise: the folder
exercises every code path, not the quality of a model.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import mlx.core as mx

from ..config import LmConfig, MimiConfig
from ..hub import MIMI_NAME, TOKENIZER_NAME
from ..models.lm import Lm
from .mimi import save_mimi
from .save import save_lm
from .tiny_mimi import informative_mimi, small_mimi_config

MIMI_CONFIG_NAME = "mimi_config.json"

_CORPUS = [
    "Hello, I am Moshi, a speech model that listens and talks at the same time.",
    "How are you doing today? I am fine, thank you for asking.",
    "The weather is nice and the sun is shining over the city.",
    "Tell me a story about a cat who wanted to fly to the moon.",
]


def tiny_lm_config(text_card: int) -> dict:
    """Kyutai config keys of a 2-layer LM with Moshi's stream layout, instant on a CPU."""
    return dict(
        dim=64, text_card=text_card, existing_text_padding_id=3, n_q=16, dep_q=8, card=2048,
        num_heads=4, num_layers=2, hidden_scale=4.125, causal=True, context=250, max_period=10000,
        gating="silu", norm="rms_norm_f32", positional_embedding="rope", depformer_dim=64,
        depformer_dim_feedforward=int(4.125 * 64), depformer_num_heads=4, depformer_num_layers=1,
        depformer_multi_linear=True, depformer_weights_per_step=True, depformer_pos_emb="none",
        depformer_gating="silu", delays=[0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    )


def train_tokenizer(path: str | Path, vocab_size: int = 400) -> int:
    """Trains a small SentencePiece model to `path` (at most `vocab_size` pieces, all readable
    subwords, so random tokens print as words; ids 0-3 as Moshi's: unk, bos, eos, pad); returns
    its vocabulary size."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS), model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False,
        character_coverage=1.0, model_type="bpe", minloglevel=2, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
    )
    Path(path).write_bytes(model.getvalue())
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def new_folder(out_dir: str | Path) -> Path:
    """`out_dir` as a Path, after checking that it does not exist or is an empty folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: already exists and is not an empty folder; choose a new folder")
    return out_dir


def make_tiny_model(out_dir: str | Path, full_mimi: bool = False, seed: int = 0) -> Path:
    """Writes the tiny model folder `out_dir` (which must not exist or be empty); returns it.

    Nothing is left behind on failure: the folder is assembled beside `out_dir` and renamed."""
    out_dir = new_folder(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = train_tokenizer(tmp / TOKENIZER_NAME)
        extra = [tmp / TOKENIZER_NAME, tmp / MIMI_NAME]
        lm_config = tiny_lm_config(vocab)
        if full_mimi:
            mimi_cfg = MimiConfig.mimi_202407(num_codebooks=32)
        else:
            mimi_cfg = small_mimi_config()
            (tmp / MIMI_CONFIG_NAME).write_text(json.dumps(mimi_cfg.to_kyutai_json(), indent=2) + "\n")
            extra.append(tmp / MIMI_CONFIG_NAME)
            lm_config["mimi_config_name"] = MIMI_CONFIG_NAME
        save_mimi(informative_mimi(mimi_cfg, seed), tmp / MIMI_NAME)
        mx.random.seed(seed)
        lm = Lm(LmConfig.from_kyutai_json(lm_config))
        lm.set_dtype(mx.bfloat16)  # half the size; as fast as fp32 at this size
        mx.eval(lm.parameters())
        return save_lm(lm, out_dir, extra_files=extra)
