"""Options shared by the commands that load a full Moshi (chat, run)."""

from __future__ import annotations

import argparse

import mlx.core as mx

from ..audio.conversation import Conversation
from ..sampling import SamplingParams
from ..hub import DEFAULT_REPO

DTYPES = {"bf16": mx.bfloat16, "fp16": mx.float16, "fp32": mx.float32}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_REPO,
        help=f"Hugging Face repo, local folder or LM weights file (default {DEFAULT_REPO}); a folder "
        "holds model*.safetensors, tokenizer_spm_32k_3.model, the Mimi file and optionally config.json",
    )
    p.add_argument("--mimi-backend", choices=["rust", "mlx"], default="rust", help="Mimi implementation")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="LM compute dtype (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    defaults = SamplingParams()
    p.add_argument("--text-temp", type=float, default=defaults.text_temp)
    p.add_argument("--text-top-k", type=int, default=defaults.text_top_k)
    p.add_argument("--audio-temp", type=float, default=defaults.audio_temp)
    p.add_argument("--audio-top-k", type=int, default=defaults.audio_top_k)


def load_conversation(args: argparse.Namespace) -> Conversation:
    sampling = SamplingParams(args.text_temp, args.text_top_k, args.audio_temp, args.audio_top_k, args.seed)
    dtype = DTYPES[args.dtype] if args.dtype else None
    return Conversation.from_pretrained(args.model, args.mimi_backend, dtype, sampling)
