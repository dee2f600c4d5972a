"""`load_pretrained`: everything a conversation needs from one source (LM, Mimi, tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from ..hub import DEFAULT_REPO, ModelFiles, resolve
from ..models.codec import BackendError, MimiLike
from ..models.lm import Lm
from ..tokenizer import Tokenizer
from .adapters import apply_adapter
from .load import load_lm
from .hf import is_hf_config
from .hf_folder import hf_mimi
from .mimi import load_mimi, load_mimi_backend


@dataclass
class Pretrained:
    """A loaded model: the LM, a Mimi backend and the text tokenizer, with the files they came from."""

    lm: Lm
    mimi: MimiLike
    tokenizer: Tokenizer
    files: ModelFiles


def load_pretrained(
    source: str | Path = DEFAULT_REPO,
    mimi_backend: str | None = None,
    dtype: mx.Dtype | None = None,
    adapter: str | Path | None = None,
) -> Pretrained:
    """Loads the LM, Mimi and tokenizer of `source` ("org/repo", a folder or an LM weights file).

    Args:
        source: where the model is (see `moshi_mlx.hub.resolve`).
        mimi_backend: ``"mlx"`` or ``"rust"``; default: `moshi_mlx.models.codec.default_backend()`
            (``"mlx"`` for a Mimi that is not the published architecture, see `load_mimi_backend`).
        dtype: LM compute dtype; default: the checkpoint's.
        adapter: a fine-tune's checkpoint folder or adapter file (`moshi_mlx.weights.adapters`),
            applied to the LM.
    """
    files = resolve(source)
    tokenizer = Tokenizer(files.tokenizer)  # the quickest file to check: a bad one fails before the big ones load
    lm = load_lm(source, dtype=dtype, files=files)
    if adapter is not None:
        apply_adapter(lm, adapter)
    cfg = lm.cfg
    num_codebooks = max(cfg.dep_q, cfg.n_q - cfg.dep_q)
    raw = files.config_dict()
    if is_hf_config(raw):  # the Mimi is inside the HF checkpoint; rustymimi reads Kyutai's files only
        if mimi_backend == "rust":
            raise BackendError(f"{files.lm}: rustymimi cannot read the HF layout's Mimi; use --mimi-backend mlx "
                               "or convert the folder first (moshi-mlx convert)")
        mimi = load_mimi(*hf_mimi(files.lm, raw, str(files.lm), num_codebooks))
    else:
        mimi = load_mimi_backend(files.mimi, mimi_backend, num_codebooks, files.mimi_config(num_codebooks))
    return Pretrained(lm, mimi, tokenizer, files)
