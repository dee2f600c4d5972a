"""Moshi, Kyutai's full-duplex speech-to-speech dialogue model, natively on MLX.

The public API, re-exported from where each concept lives. The re-exports are lazy: a name's module
is imported on first access, so importing one building block (e.g. `moshi_mlx.modules.kv_cache`)
does not load the audio stack, the hub client or the tokenizer.
"""

from __future__ import annotations

import importlib

# Public name -> the module (relative to this package) that defines it.
_EXPORTS: dict[str, str] = {
    "GenerateOutput": ".api",
    "MoshiForCausalLM": ".api",
    "MoshiForConditionalGeneration": ".api",
    "Conversation": ".audio.conversation",
    "FrameResult": ".audio.conversation",
    "Word": ".audio.transcribe",
    "transcribe": ".audio.transcribe",
    "TranslatedFrame": ".audio.translate",
    "translate": ".audio.translate",
    "speak": ".audio.speak",
    "ConfigError": ".config",
    "LmConfig": ".config",
    "MimiConfig": ".config",
    "SeanetConfig": ".config",
    "TransformerConfig": ".config",
    "LmGen": ".generate",
    "generate_text": ".generate",
    "stream_text": ".generate",
    "DEFAULT_REPO": ".hub",
    "ModelFiles": ".hub",
    "resolve": ".hub",
    "Lm": ".models.lm",
    "LmOutput": ".models.lm",
    "LossOutput": ".models.loss",
    "Mimi": ".models.mimi",
    "RustMimi": ".models.codec",
    "SamplingParams": ".sampling",
    "audio_sampler": ".sampling",
    "make_sampler": ".sampling",
    "text_sampler": ".sampling",
    "Tokenizer": ".tokenizer",
    "TrainConfig": ".train.config",
    "finetune": ".train.finetune",
    "apply_lora": ".modules.lora",
    "fuse_lora": ".modules.lora",
    "load_adapters": ".weights.adapters",
    "save_adapters": ".weights.adapters",
    "WeightsError": ".weights",
    "load_lm": ".weights",
    "quantize_lm": ".weights",
    "save_lm": ".weights",
    "load_mimi": ".weights.mimi",
    "load_mimi_backend": ".weights.mimi",
}

__all__ = sorted(_EXPORTS)


def _installed_version() -> str:
    """pyproject's `version`, as installed (one source of truth); read on first access, because
    `importlib.metadata` alone costs more memory than the LM's imports."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlx-moshi")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> object:
    if name == "__version__":
        value = globals()[name] = _installed_version()
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
