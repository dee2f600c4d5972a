"""Options shared by the commands that load a full Moshi (chat, run): model, backend, dtype, sampling."""

from __future__ import annotations

import argparse

from ..audio.conversation import Conversation
from ..hub import DEFAULT_REPO, LM_NAMES, MIMI_NAME, TOKENIZER_NAME
from ..models.codec import BACKENDS
from ..sampling import SamplingParams
from ..weights.common import DTYPES, parse_dtype


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Adds --model, --mimi-backend, --dtype, --seed and the sampling options to `p`."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default=DEFAULT_REPO,
        help=f"a Hugging Face repo (org/repo, downloaded once into the Hugging Face cache), a local folder "
        f"or an LM weights file. A folder holds the LM ({' | '.join(LM_NAMES)}), the text tokenizer "
        f"({TOKENIZER_NAME}), the Mimi codec ({MIMI_NAME}) and optionally config.json",
    )
    g.add_argument(
        "--mimi-backend", choices=BACKENDS, default=None,
        help="Mimi codec implementation (default: auto: mlx on a GPU; on a CPU rust when rustymimi is "
        "installed, else mlx)",
    )
    g.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="LM compute dtype (default: the checkpoint's, bf16 for published models)")
    g.add_argument("--adapter", default=None,
                   help="a fine-tune to apply: a `moshi-mlx finetune` checkpoint folder (RUN/checkpoints/"
                   "checkpoint_N), a moshi-finetune one, or a lora.safetensors (torch moshi's LoRA names)")

    s = p.add_argument_group("sampling (Kyutai's defaults; temperature 0 means greedy)")
    d = SamplingParams()
    s.add_argument("--seed", type=int, default=None,
                   help="seed of the sampler's random generator, for reproducible answers (default: random)")
    s.add_argument("--text-temp", type=float, default=d.text_temp, help="temperature of Moshi's text tokens")
    s.add_argument("--text-top-k", type=int, default=d.text_top_k,
                   help="sample text among the K most likely tokens (0: all)")
    s.add_argument("--text-top-p", type=float, default=d.text_top_p,
                   help="nucleus sampling of text: the smallest set of tokens with this probability mass "
                   "(0 or 1: off)")
    s.add_argument("--audio-temp", type=float, default=d.audio_temp, help="temperature of Moshi's audio codes")
    s.add_argument("--audio-top-k", type=int, default=d.audio_top_k,
                   help="sample audio among the K most likely codes (0: all)")
    s.add_argument("--audio-top-p", type=float, default=d.audio_top_p,
                   help="nucleus sampling of audio codes (0 or 1: off)")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The `SamplingParams` the parsed options ask for."""
    return SamplingParams(
        text_temp=args.text_temp, text_top_k=args.text_top_k, text_top_p=args.text_top_p,
        audio_temp=args.audio_temp, audio_top_k=args.audio_top_k, audio_top_p=args.audio_top_p,
        seed=args.seed,
    )


def load_conversation(args: argparse.Namespace) -> Conversation:
    """Loads the model the parsed options name, ready for `Conversation.step`."""
    sampling = sampling_params(args)  # bad values fail here, before any download
    return Conversation.from_pretrained(
        args.model, args.mimi_backend, parse_dtype(args.dtype), sampling, adapter=getattr(args, "adapter", None)
    )
