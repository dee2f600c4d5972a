"""The examples' core functions run end to end on tiny random models."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

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
