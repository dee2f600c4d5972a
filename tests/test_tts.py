"""Kyutai TTS vs torch moshi's `TTSModel.generate`: a random torch LM built by Kyutai's loader from the
published tts-1.6b-en_fr config's shape scaled down (every codebook generated, demuxed lookahead text
stream with `second_stream_ahead` 2, low-rank depformer embeddings with a schedule, cross-attention
to a speaker embedding, summed `control`/`cfg` LUTs, CFG-distilled), saved in Kyutai's layout and
loaded by us. Its text projection favours `new_word` and `pad`, so both branches of the word state
machine are taken. Greedy, the same script and voice file: the same entries, sampled and fed text
tokens, frames, word timings and end step as torch, for >= 100 steps, batch 1, and batch 2 with a
padding bonus, and with 5 of the 8 codebooks generated (torch `n_q`)."""

from __future__ import annotations


import mlx.core as mx
import numpy as np
import pytest
from conftest import require

from moshi_mlx.audio.speak import TtsGen, check_tts, voice_path
from moshi_mlx.errors import InvalidArgument
from moshi_mlx.models.tts import TokenIds, TtsSettings, load_voice, script_to_entries
from moshi_mlx.tokenizer import Tokenizer
from moshi_mlx.weights import load_lm
from moshi_mlx.weights.tiny import train_tokenizer

torch = require("torch")
require("moshi")

SPEAKER_DIM = 24
SCRIPT = "Hello there: this is a (tiny) test of the speech model, with a pause <break time=\"0.4s\"/> and then some more words. It ends here, now."


def tts_config(text_card: int) -> dict:
    """tts-1.6b-en_fr's config keys and settings at tiny widths (2 layers, 8 codebooks, 0.32 s audio delay)."""
    return dict(
        dim=64, text_card=text_card, existing_text_padding_id=3, n_q=8, dep_q=8, card=64, num_heads=4,
        num_layers=2, hidden_scale=4.125, causal=True, context=500, max_period=10000, gating="silu",
        norm="rms_norm_f32", positional_embedding="rope", depformer_dim=32, depformer_num_heads=2,
        depformer_num_layers=2, depformer_dim_feedforward=64, depformer_multi_linear=True,
        depformer_pos_emb="none", depformer_weights_per_step=True, depformer_low_rank_embeddings=16,
        depformer_weights_per_step_schedule=[0, 1, 2, 3, 3, 3, 3, 3], demux_second_stream=True,
        delays=[0, 0] + [2] * 7, cross_attention=True,
        conditioners={
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": SPEAKER_DIM}},
            "control": {"type": "lut", "lut": {"n_bins": 2, "dim": 8, "tokenizer": "noop",
                                               "possible_values": ["ok", "bad"]}},
            "cfg": {"type": "lut", "lut": {"n_bins": 4, "dim": 8, "tokenizer": "noop",
                                           "possible_values": ["1.0", "1.5", "2.0", "3.0"]}},
        },
        fuser={"sum": ["control", "cfg"], "cross": ["speaker_wavs"], "cross_attention_pos_emb": True,
               "cross_attention_pos_emb_scale": 1.0},
        model_type="tts", model_id={"sig": "0123abcd", "epoch": 7},
        tts_config={"audio_delay": 0.32, "second_stream_ahead": 2},
    )


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    from safetensors.torch import save_file
    from test_conditioners import build_torch, save_folder

    root = tmp_path_factory.mktemp("tts")
    vocab = train_tokenizer(root / "tok.model")
    config = tts_config(vocab)
    model = build_torch({k: v for k, v in config.items() if k != "model_id"})
    with torch.no_grad():  # new_word (0) sampled at about a third of the steps (measured)
        model.text_linear.weight[0] *= 12.0
    folder = save_folder(model, config, root / "model")
    voices = []
    for i in range(2):
        emb = torch.randn(1, SPEAKER_DIM, 6 + i, generator=torch.Generator().manual_seed(i))
        voices.append(root / f"voice{i}.0123abcd@7.safetensors")
        save_file({"speaker_wavs": emb}, str(voices[-1]))
    return model, load_lm(folder, dtype=mx.float32), config, root / "tok.model", voices


def torch_tts(model, config, tok_path, voices, scripts, steps, padding_bonus=0.0, n_q=8):
    import sentencepiece
    from moshi.models.tts import StateMachine, TokenIds as TorchIds, TTSModel

    ids = TorchIds(config["text_card"] + 1)
    tts = TTSModel(lm=model, mimi=None, tokenizer=sentencepiece.SentencePieceProcessor(str(tok_path)),
                   voice_suffix="", voice_repo="", machine=StateMachine(ids, second_stream_ahead=2, max_padding=8,
                                                                        initial_padding=2),
                   delay_steps=4, n_q=n_q, max_gen_length=steps, padding_bonus=padding_bonus)
    tts.mimi = type("M", (), {"frame_rate": 12.5})()
    entries = [tts.prepare_script([s], padding_between=1) for s in scripts]
    attrs = [tts.make_condition_attributes([v], cfg_coef=2.0) for v in voices]
    return entries, tts.generate(entries, attrs, use_sampling=False)


def branches_taken(machine, entries, sampled: list[int]) -> tuple[int, int]:
    """At the steps where the machine's answer depends on the sampled token: how often it got a pad
    (any token but new_word) and how often new_word."""
    state, counts = machine.new_state(entries), [0, 0]
    for step, token in enumerate(sampled):
        (pad, pad_state), (word, word_state) = machine.choices(step, state)
        if pad != word:
            counts[token == 0] += 1
        state = word_state if token == 0 else pad_state
    return counts[0], counts[1]


@pytest.mark.parametrize("batch,bonus,n_q", [(1, 0.0, 8), (2, 0.6, 8), (1, 0.0, 5)])
def test_tts_tokens_match_torch(tts, batch, bonus, n_q):
    model, lm, config, tok_path, voices = tts
    scripts = [SCRIPT, SCRIPT.replace("Hello there", "Good morning")][:batch]
    torch_entries, result = torch_tts(model, config, tok_path, voices[:batch], scripts, steps=300, padding_bonus=bonus,
                                      n_q=n_q)

    settings = check_tts(lm)
    tok = Tokenizer(tok_path)
    entries = [script_to_entries(tok, TokenIds(config["text_card"] + 1), [s], True, 1) for s in scripts]
    for ours, theirs in zip(entries, torch_entries):
        assert [(e.tokens, e.text, e.padding) for e in ours] == [(e.tokens, e.text, e.padding) for e in theirs]

    gen = TtsGen(lm, [[load_voice(v)] for v in voices[:batch]], cfg_coef=2.0, temp=0.0, max_steps=300,
                 padding_bonus=bonus, n_q=n_q)
    steps = list(gen.steps(entries))
    assert 100 <= len(steps) < 300  # ended by the script's end, delay_steps + final_padding after it
    for b in range(batch):
        logged = [(s.sampled[b], s.fed[b]) for s in steps]
        assert logged == [tuple(x) for x in result.logged_text_tokens[b]]
        assert min(branches_taken(gen.machine, entries[b], [t for t, _ in logged])) >= 5
        assert gen.states[b].transcript == result.all_transcripts[b]
        assert gen.states[b].consumption_times == result.all_consumption_times[b]
        assert gen.states[b].end_step == result.end_steps[b] is not None
    frames = [np.array(s.frame) for s in steps if s.frame is not None]
    assert len(frames) == len(result.frames)
    np.testing.assert_array_equal(np.stack(frames), np.stack([f[:, :, 0].numpy() for f in result.frames]))
    assert settings.delay_steps == 4


def test_voice_errors(tts, tmp_path):
    _, lm, *_ = tts
    settings = check_tts(lm)
    with pytest.raises(InvalidArgument, match="voice file not found"):
        voice_path(tmp_path / "missing.safetensors", settings)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidArgument, match="cannot read the voice file"):
        load_voice(bad)
    assert TtsSettings.from_config(lm.cfg.raw).voice_suffix == ".0123abcd@7.safetensors"
    with pytest.raises(InvalidArgument, match="not one this model was distilled for"):
        TtsGen(lm, [[load_voice(tts[4][0])]], cfg_coef=2.5)
