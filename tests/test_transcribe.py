"""`transcribe` vs torch moshi's `run_inference` STT pipeline on espeak-ng speech, same tiny random STT
model (Kyutai's torch layout, our small Mimi): the same words, and the same token stream (which dates
them); output formats; one-line errors for a wrong model type."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from conftest import require, unavailable

from moshi_mlx.audio.transcribe import (
    SKIPPED, Transcriber, Word, format_words, padded_frames, transcribe, turn_ends,
)
from moshi_mlx.cli.transcribe import main
from moshi_mlx.errors import InvalidArgument
from moshi_mlx.hub import MIMI_NAME, TOKENIZER_NAME
from moshi_mlx.weights.pretrained import load_pretrained
from moshi_mlx.weights.tiny_family import make_tiny_stt

torch = require("torch")
require("moshi")

METADATA = ("model_type", "stt_config", "mimi_config_name")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        unavailable("espeak-ng", "espeak-ng is not installed")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello, this is a test of speech recognition."], check=True)
    return path


@pytest.fixture(scope="module")
def stt_folder(tmp_path_factory):
    """The tiny STT folder, its LM replaced by a random torch `LMModel` saved as Kyutai publishes it."""
    from moshi.models.loaders import get_moshi_lm
    from safetensors.torch import save_file

    folder = make_tiny_stt(tmp_path_factory.mktemp("stt") / "model")
    config = json.loads((folder / "config.json").read_text())
    torch.manual_seed(0)
    kwargs = {k: v for k, v in copy.deepcopy(config).items() if k not in METADATA}
    model = get_moshi_lm(None, lm_kwargs=kwargs, device="cpu", dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1]))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def torch_pipeline(folder, pcm: np.ndarray) -> tuple[str, list[int]]:
    """torch moshi's `run_inference` for an STT model, greedy: (printed text, text token of every step)."""
    import io

    import sentencepiece
    from moshi.models.loaders import get_mimi, get_moshi_lm
    from moshi.client_utils import RawPrinter
    from moshi.run_inference import InferenceState

    config = json.loads((folder / "config.json").read_text())
    mimi_config = json.loads((folder / config["mimi_config_name"]).read_text())
    mimi = get_mimi(folder / MIMI_NAME, mimi_config, num_codebooks=config["n_q"])
    kwargs = {k: v for k, v in config.items() if k not in METADATA}
    lm = get_moshi_lm(folder / "model.safetensors", lm_kwargs=kwargs, device="cpu", dtype=torch.float32)
    tokens: list[int] = []
    info = SimpleNamespace(model_type="stt", stt_config=config["stt_config"])
    state = InferenceState(info, mimi, sentencepiece.SentencePieceProcessor(str(folder / TOKENIZER_NAME)), lm,
                           batch_size=1, cfg_coef=1.0, device="cpu", use_sampling=False,
                           on_text_hook=lambda t: tokens.append(int(t[0])))
    out = io.StringIO()
    state.printer = RawPrinter(stream=out, err_stream=io.StringIO())  # what it prints when not on a terminal
    with torch.no_grad():
        state.run(torch.tensor(pcm)[None, None])
    return out.getvalue(), tokens


def test_words_and_timing_match_torch_run_inference(stt_folder, speech):
    from moshi_mlx.audio.io import read_audio

    pcm = read_audio(speech)
    text, torch_tokens = torch_pipeline(stt_folder, pcm)
    pretrained = load_pretrained(stt_folder, mimi_backend="mlx", dtype=mx.float32)
    words = list(transcribe(pcm, pretrained))
    assert [w.text for w in words] == text.split()
    assert len(words) >= 3  # the random model writes words, so the comparison says something
    # The token stream that dates the words: torch's hook sees every step (the doubled first frame too).
    transcriber = Transcriber(pretrained.lm, pretrained.mimi, pretrained.tokenizer)
    ours = [t for _, t in transcriber.tokens(padded_frames(pcm, transcriber.prefix, transcriber.delay))]
    assert ours == torch_tokens[1:]
    assert len(transcriber.turn_probability) == len(ours)  # P(end of turn) per step (head 2, checked in test_family_lmgen)
    assert any(t not in SKIPPED for t in ours)
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(0 <= w.start <= w.end <= len(pcm) / 24000 for w in words)


def test_turn_ends_are_rising_edges():
    probs = [(0.0, 0.1), (0.08, 0.7), (0.16, 0.9), (0.24, 0.2), (0.32, 0.6)]
    assert turn_ends(probs) == [0.08, 0.32]


def test_formats():
    words = [Word("Hello", 0.5, 0.9), Word("world.", 1.0, 1.4), Word("Again", 3.0, 3.2)]
    assert format_words(words, "text") == "Hello world. Again\n"
    assert format_words(words, "text", timestamps=True).startswith("Hello [0.50-0.90] world. [1.00-1.40]")
    srt = format_words(words, "srt")
    assert srt.splitlines()[:3] == ["1", "00:00:00,500 --> 00:00:01,400", "Hello world."]
    assert "2\n00:00:03,000 --> 00:00:03,200\nAgain" in srt  # a pause over 1 s starts a new cue
    assert format_words(words, "vtt").startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.400\nHello world.\n")
    data = json.loads(format_words(words, "json"))
    assert data["text"] == "Hello world. Again" and data["words"][1] == {"text": "world.", "start": 1.0, "end": 1.4}


def test_cli_writes_subtitles_and_refuses_other_models(stt_folder, speech, tmp_path, capsys):
    out = tmp_path / "speech.srt"
    main([str(speech), "--model", str(stt_folder), "--format", "srt", "-o", str(out)])
    assert out.read_text().startswith("1\n00:")
    main([str(speech), "--model", str(stt_folder), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["words"] and isinstance(data["end_of_turn"], list)  # the tiny STT has Kyutai's 4 extra heads
    moshi = tmp_path / "moshi"
    moshi.mkdir()
    for f in stt_folder.iterdir():
        shutil.copy(f, moshi / f.name)
    config = json.loads((moshi / "config.json").read_text())
    (moshi / "config.json").write_text(json.dumps(dict(config, model_type="hibiki")))
    with pytest.raises(SystemExit):
        main([str(speech), "--model", str(moshi)])
    assert "this is a hibiki model, not a speech-to-text one; use `moshi-mlx translate`" in capsys.readouterr().err
    with pytest.raises(InvalidArgument, match="not a speech-to-text one"):
        list(transcribe(np.zeros(24000, np.float32), load_pretrained(moshi, mimi_backend="mlx")))


def test_make_tiny_builds_an_stt_model(tmp_path, capsys):
    from moshi_mlx.cli.make_tiny import main as make_tiny

    make_tiny([str(tmp_path / "stt"), "--kind", "stt"])
    lm = load_pretrained(tmp_path / "stt", mimi_backend="mlx").lm
    assert lm.cfg.raw["model_type"] == "stt" and lm.cfg.dep_q == 0 and lm.cfg.extra_heads_num_heads == 4
    with pytest.raises(SystemExit):
        make_tiny([str(tmp_path / "x"), "--kind", "stt", "--full-mimi"])
    assert "--full-mimi is for --kind moshi" in capsys.readouterr().err
