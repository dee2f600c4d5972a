"""The examples run end to end on tiny random models, load any layout with `load_lm`, and the
default `api_generate.py` answer is audible."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import require

EXAMPLES = Path(__file__).parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_lowers_the_loss():
    train_step = load_example("train_step")
    lm = train_step.tiny_model(seed=1)
    losses = train_step.train(lm, train_step.random_codes(lm, seed=2), steps=12)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    # The model was updated in place: its own loss on the batch is now low too.
    assert float(lm.loss(train_step.random_codes(lm, seed=2)).total) < 0.5 * losses[0]


def test_text_helium_streams_text(tmp_path):
    require("sentencepiece")
    helium = load_example("text_helium")
    tokenizer = helium.tiny_tokenizer(tmp_path)
    lm = helium.tiny_helium(tokenizer.vocab_size)
    out = io.StringIO()
    text = helium.run(lm, tokenizer, "Moshi is", 20, 0.0, 0, None, out)
    assert out.getvalue().startswith("Moshi is") and out.getvalue().endswith(text + "\n")
    ids = tokenizer.encode("Moshi is", bos=True)
    from moshi_mlx.generate import generate_text

    full = generate_text(lm, [ids], 20).tolist()[0][len(ids):]
    if tokenizer.eos_id in full:
        full = full[: full.index(tokenizer.eos_id)]
    assert text == tokenizer.decode(full)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from moshi_mlx.weights.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("examples") / "tiny-moshi")


def test_api_generate_default_answer_is_audible(tmp_path, capsys):
    """With no arguments: a tiny model built on the spot, and a wav that is not silence."""
    from moshi_mlx.audio.io import read_audio

    out = tmp_path / "answer.wav"
    load_example("api_generate").main(["--out", str(out), "--max-new-tokens", "10"])
    wave = read_audio(out)
    frames = -(-2 * 24000 // 1920) + 10  # the 2 s prompt in whole frames, then the answer
    assert wave.shape == (frames * 1920,)
    answer = wave[-10 * 1920 :]
    assert np.abs(answer).max() > 0.01 and answer.std() > 0.005, (np.abs(answer).max(), answer.std())
    assert "text:" in capsys.readouterr().out


def test_api_generate_and_text_helium_take_a_model_folder(tiny_folder, tmp_path, capsys):
    load_example("api_generate").main(["--model", str(tiny_folder), "--out", str(tmp_path / "a.wav"),
                                       "--max-new-tokens", "3", "--mimi-backend", "mlx"])
    assert (tmp_path / "a.wav").is_file()
    load_example("text_helium").main(["--model", str(tiny_folder), "--prompt", "Hello", "--max-new-tokens", "5"])
    assert capsys.readouterr().out.splitlines()[-1].startswith("Hello")


@pytest.mark.parametrize("layout", ["ours", "kyutai_mlx_bf16", "kyutai_mlx_q8", "kyutai_mlx_q4"])
def test_train_step_loads_every_layout(layout, tiny_folder, capsys):
    """The examples load with `moshi_mlx.load_lm`: our folders and Kyutai's MLX files (bf16, q8, q4)."""
    assets = Path(__file__).parent / "assets" / "kyutai_mlx"
    files = {"kyutai_mlx_bf16": "model.safetensors", "kyutai_mlx_q8": "model.q8.safetensors",
             "kyutai_mlx_q4": "model.q4.safetensors"}
    model = tiny_folder if layout == "ours" else assets / files[layout]
    load_example("train_step").main(["--model", str(model), "--steps", "3"])
    first, last = (float(x) for x in capsys.readouterr().out.splitlines()[-1].split()[1::2])
    assert math.isfinite(first) and math.isfinite(last) and last < first
