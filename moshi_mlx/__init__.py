"""Moshi, Kyutai's full-duplex speech-to-speech dialogue model, natively on MLX.

The public API, re-exported from where each concept lives.
"""

from .api import GenerateOutput, MoshiForCausalLM, MoshiForConditionalGeneration
from .audio.conversation import Conversation, FrameResult
from .config import ConfigError, LmConfig, MimiConfig, SeanetConfig, TransformerConfig
from .generate import LmGen
from .generate import generate_text, stream_text
from .hub import DEFAULT_REPO, ModelFiles, resolve
from .models.lm import Lm, LmOutput
from .models.loss import LossOutput
from .models.mimi import Mimi
from .models.codec import RustMimi
from .sampling import SamplingParams, audio_sampler, make_sampler, text_sampler
from .tokenizer import Tokenizer
from .weights import WeightsError, load_lm, quantize_lm, save_lm
from .weights.mimi import load_mimi, load_mimi_backend

__version__ = "0.1.0"

__all__ = [
    "Conversation", "ConfigError", "DEFAULT_REPO", "FrameResult", "GenerateOutput", "Lm", "LmConfig",
    "LmGen", "LmOutput", "LossOutput", "Mimi", "MimiConfig", "ModelFiles", "MoshiForCausalLM",
    "MoshiForConditionalGeneration", "RustMimi", "SamplingParams", "SeanetConfig", "Tokenizer",
    "TransformerConfig", "WeightsError", "audio_sampler", "generate_text", "load_lm", "load_mimi",
    "load_mimi_backend", "make_sampler", "quantize_lm", "resolve", "save_lm", "stream_text", "text_sampler",
]
