"""`moshi-mlx speak` and `speak()` with the tiny TTS model of `make-tiny --kind tts`: audio streams out
while the model runs, the wav is valid and as long as the frames decoded, and bad input is one line."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from moshi_mlx.audio.speak import TtsGen, check_tts, prepare_script, speak
from moshi_mlx.cli.speak import main as speak_main
from moshi_mlx.models.tts import load_voice
from moshi_mlx.weights.pretrained import load_pretrained
from moshi_mlx.weights.tiny_family import VOICE_FILE, make_tiny_tts

TEXT = 'Hello there. <break time="0.3s"/> Bye.'


@pytest.fixture(scope="module")
def tiny_tts(tmp_path_factory):
    return make_tiny_tts(tmp_path_factory.mktemp("tts") / "model")


def test_audio_streams_while_generating(tiny_tts):
    pretrained = load_pretrained(tiny_tts, "mlx")
    settings = check_tts(pretrained.lm)
    entries = prepare_script(pretrained.tokenizer, pretrained.lm, settings, [TEXT])
    gen = TtsGen(pretrained.lm, [[load_voice(tiny_tts / VOICE_FILE)]], seed=0)
    chunks, steps_at_chunk = [], []
    for chunk in gen.pcm(entries, pretrained.mimi):
        chunks.append(chunk)
        steps_at_chunk.append(gen.lm_gen.offset)
    end = gen.states[0].end_step
    assert end is not None
    total = gen.lm_gen.offset
    assert total == end + settings.delay_steps + gen.final_padding
    # the first 80 ms arrive right after the audio delay, long before the model is done
    assert steps_at_chunk[0] == settings.delay_steps + max(pretrained.lm.cfg.delays) + 1 < total
    assert all(c.shape == (1920,) for c in chunks)
    assert len(chunks) == total - max(pretrained.lm.cfg.delays) - settings.delay_steps
    assert [w for w, _ in gen.transcript] == ["Hello", "there.", "Bye."]
    # the API: same audio for the same seed
    again = np.concatenate(list(speak(TEXT, tiny_tts / VOICE_FILE, model=pretrained, seed=0)))
    np.testing.assert_array_equal(again, np.concatenate(chunks))


def test_cli_writes_a_wav(tiny_tts, tmp_path, capsys):
    out = tmp_path / "out.wav"
    speak_main([TEXT, str(out), "--model", str(tiny_tts), "--voice", str(tiny_tts / VOICE_FILE),
                "--mimi-backend", "mlx", "--seed", "0"])
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24_000 and w.getnchannels() == 1
        assert w.getnframes() > 0 and w.getnframes() % 1920 == 0
    assert "Hello@" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["Hi", "--voice", "missing.safetensors"], "missing.safetensors: voice file not found"),
    (["  ", "--voice", "VOICE"], "nothing to say: the text is empty"),
    (["Hi", "--voice", "VOICE", "--cfg-coef", "2.2"], "cfg_coef 2.2 is not one this model was distilled for"),
])
def test_cli_errors_are_one_line(tiny_tts, tmp_path, capsys, args, message):
    out = tmp_path / "out.wav"
    args = [str(tiny_tts / VOICE_FILE) if a == "VOICE" else a for a in args]
    with pytest.raises(SystemExit) as e:
        speak_main([args[0], str(out), "--model", str(tiny_tts), "--mimi-backend", "mlx", *args[1:]])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing written before the inputs are checked
