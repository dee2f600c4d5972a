"""transformers-style generate(): prompts, silence, waveforms; consistent with torch's forward."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import require

torch = require("torch")
require("moshi")

from gen_reference import GEN_CONFIGS, torch_and_ours  # noqa: E402

from moshi_mlx.api import FRAME_SIZE, MoshiForCausalLM, MoshiForConditionalGeneration  # noqa: E402

CONFIG = GEN_CONFIGS["moshi_7b_like"]  # delays [0, 0,1,1,1, 0,1,1,1], dep_q 4, ring of 8


class ToyCodec:
    """A deterministic stand-in for Mimi: codes from per-frame means, decode to constants."""

    def __init__(self, num_codebooks: int = 8, card: int = 40):
        self.num_codebooks, self.card = num_codebooks, card

    def encode(self, pcm: mx.array) -> mx.array:
        x = np.array(pcm)[:, 0]
        assert x.shape[-1] % FRAME_SIZE == 0
        means = x.reshape(x.shape[0], -1, FRAME_SIZE).mean(-1)  # (B, T)
        base = np.floor((means + 1) * 10).astype(np.int64)
        codes = (base[:, None] + 7 * np.arange(self.num_codebooks)[None, :, None] + 3) % self.card
        return mx.array(codes.astype(np.int32))

    def decode(self, codes: mx.array) -> mx.array:
        c = np.array(codes).astype(np.float32)
        return mx.array(np.repeat(c.mean(axis=1, keepdims=True) / self.card, FRAME_SIZE, axis=-1))


def random_prompt(rng, batch: int, frames: int) -> dict[str, np.ndarray]:
    n_user = CONFIG["n_q"] - CONFIG["dep_q"]
    return dict(
        input_ids=rng.integers(0, CONFIG["text_card"], size=(batch, frames)),
        moshi_audio_codes=rng.integers(0, CONFIG["card"], size=(batch, CONFIG["dep_q"], frames)),
        user_audio_codes=rng.integers(0, CONFIG["card"], size=(batch, n_user, frames)),
    )


@pytest.mark.parametrize("prompt_frames", [0, 6])
def test_greedy_generate_is_consistent_with_torch_forward(prompt_frames, tmp_path):
    """Every generated frame is torch `LMModel.forward`'s argmax given everything before it."""
    ref, ours = torch_and_ours(CONFIG, tmp_path, seed=41)
    rng = np.random.default_rng(7)
    prompt = random_prompt(rng, 2, prompt_frames) if prompt_frames else {}
    silence = rng.integers(0, CONFIG["card"], size=(4,))
    N = 24
    out = MoshiForConditionalGeneration(ours).generate(
        **prompt, max_new_tokens=N, do_sample=False, depth_decoder_do_sample=False, user_silence_codes=silence
    )
    B, T = (2 if prompt else 1), prompt_frames + N
    assert out.sequences.shape == (B, T) and out.audio_codes.shape == (B, CONFIG["dep_q"], T)
    assert out.audio_sequences is None
    text, audio = np.array(out.sequences), np.array(out.audio_codes)
    user = np.broadcast_to(silence[None, :, None], (B, 4, T)).copy()
    if prompt:
        assert np.array_equal(text[:, :prompt_frames], prompt["input_ids"])
        assert np.array_equal(audio[:, :, :prompt_frames], prompt["moshi_audio_codes"])
        user[:, :, :prompt_frames] = prompt["user_audio_codes"]
    codes = np.concatenate([text[:, None], audio, user], axis=1).astype(np.int64)
    from moshi.utils.compile import no_compile

    with no_compile(), torch.no_grad():
        ref_out = ref(torch.from_numpy(codes))
    text_pred = ref_out.text_logits[:, 0].argmax(-1).numpy()
    audio_pred = ref_out.logits.argmax(-1).numpy()
    mask = ref_out.mask.numpy()
    gen = slice(prompt_frames, T)
    assert np.array_equal(text[:, gen], text_pred[:, gen])
    checked = mask[:, :, gen]
    assert checked.sum() >= 0.9 * checked.size
    assert np.array_equal(audio[:, :, gen][checked], audio_pred[:, :, gen][checked])


def test_waveform_prompts_and_silence_use_the_codec(tmp_path):
    _, ours = torch_and_ours(CONFIG, tmp_path, seed=42)
    codec = ToyCodec()
    model = MoshiForConditionalGeneration(ours, codec)
    rng = np.random.default_rng(8)
    frames = 5
    # Ragged length: padded with zeros to whole frames, as transformers rounds up.
    user_wav = rng.uniform(-1, 1, size=(1, 1, frames * FRAME_SIZE - 300)).astype(np.float32)
    moshi_wav = rng.uniform(-1, 1, size=(1, 1, frames * FRAME_SIZE)).astype(np.float32)
    text = rng.integers(0, CONFIG["text_card"], size=(1, frames))
    by_wave = model.generate(
        input_ids=text, user_input_values=user_wav, moshi_input_values=moshi_wav, max_new_tokens=8, do_sample=False,
        depth_decoder_do_sample=False,
    )
    padded = np.pad(user_wav, ((0, 0), (0, 0), (0, 300)))
    user_codes = np.array(codec.encode(mx.array(padded)))[:, :4]
    moshi_codes = np.array(codec.encode(mx.array(moshi_wav)))[:, :4]
    silence = np.array(codec.encode(mx.zeros((1, 1, FRAME_SIZE))))[0, :4, 0]
    by_codes = MoshiForConditionalGeneration(ours).generate(
        input_ids=text, user_audio_codes=user_codes, moshi_audio_codes=moshi_codes, max_new_tokens=8,
        do_sample=False, depth_decoder_do_sample=False, user_silence_codes=silence,
    )
    assert np.array_equal(np.array(by_wave.sequences), np.array(by_codes.sequences))
    assert np.array_equal(np.array(by_wave.audio_codes), np.array(by_codes.audio_codes))
    assert by_wave.audio_sequences.shape == (1, 1, 13 * FRAME_SIZE)
    assert np.allclose(np.array(by_wave.audio_sequences), np.array(codec.decode(by_wave.audio_codes)))


def test_prompt_validation_errors(tmp_path):
    _, ours = torch_and_ours(CONFIG, tmp_path, seed=43)
    model = MoshiForConditionalGeneration(ours)
    p = random_prompt(np.random.default_rng(9), 1, 4)
    with pytest.raises(ValueError, match="differ in length"):
        model.generate(**{**p, "input_ids": p["input_ids"][:, :3]}, user_silence_codes=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="all three prompts"):
        model.generate(input_ids=p["input_ids"], user_silence_codes=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="attach a Mimi or pass user_silence_codes"):
        model.generate(**p)
    with pytest.raises(ValueError, match="needs a Mimi"):
        model.generate(input_ids=p["input_ids"], user_input_values=np.zeros((1, 1, 4 * FRAME_SIZE)),
                       moshi_audio_codes=p["moshi_audio_codes"])


def test_unconditional_inputs_and_seeded_sampling(tmp_path):
    _, ours = torch_and_ours(CONFIG, tmp_path, seed=44)
    model = MoshiForConditionalGeneration(ours, ToyCodec())
    uncond = model.get_unconditional_inputs(num_samples=2)
    assert uncond["input_ids"].shape == (2, 1) and int(uncond["input_ids"][0, 0]) == CONFIG["text_card"]
    assert uncond["user_audio_codes"].shape == (2, 4, 1) and uncond["moshi_audio_codes"].shape == (2, 4, 1)
    assert (np.array(uncond["moshi_audio_codes"]) == CONFIG["card"]).all()
    a = model.generate(**uncond, max_new_tokens=10, seed=3)
    b = model.generate(**uncond, max_new_tokens=10, seed=3)
    assert a.sequences.shape == (2, 11) and a.audio_sequences.shape == (2, 1, 11 * FRAME_SIZE)
    assert np.array_equal(np.array(a.audio_codes), np.array(b.audio_codes))
    assert np.array(a.audio_codes)[:, :, 1:].max() < CONFIG["card"]  # never the initial token


def test_causal_lm_wrapper(tmp_path):
    _, ours = torch_and_ours(CONFIG, tmp_path, seed=45)
    lm = MoshiForCausalLM(ours)
    out = lm.generate(input_ids=[[1, 2, 3]], max_new_tokens=5)
    assert out.shape == (1, 8) and np.array_equal(np.array(out[:, :3]), [[1, 2, 3]])
    with pytest.raises(ValueError, match="tokenizer"):
        lm.generate(prompt="hi")


def forward_argmax(ref, out, user: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch `LMModel.forward`'s text and audio argmax (and audio mask) for a generated sequence."""
    from moshi.utils.compile import no_compile

    text, audio = np.array(out.sequences), np.array(out.audio_codes)
    codes = np.concatenate([text[:, None], audio, user], axis=1).astype(np.int64)
    with no_compile(), torch.no_grad():
        ref_out = ref(torch.from_numpy(codes))
    return ref_out.text_logits[:, 0].argmax(-1).numpy(), ref_out.logits.argmax(-1).numpy(), ref_out.mask.numpy()


def test_unprefixed_parameters_drive_text_and_depth_decoder_ones_audio(tmp_path):
    """transformers' meanings: `do_sample`/`temperature`/`top_k` sample the text stream,
    `depth_decoder_*` the audio codebooks. Greedy on one side shows as argmax of the forward."""
    ref, ours = torch_and_ours(CONFIG, tmp_path, seed=46)
    model = MoshiForConditionalGeneration(ours)
    silence = np.array([5, 6, 7, 8])
    user = np.broadcast_to(silence[None, :, None], (1, 4, 29)).copy()
    hot = dict(temperature=3.0, top_k=0, depth_decoder_temperature=3.0, depth_decoder_top_k=0)

    greedy_text = model.generate(max_new_tokens=29, do_sample=False, seed=1, user_silence_codes=silence, **hot)
    text_pred, audio_pred, mask = forward_argmax(ref, greedy_text, user)
    assert np.array_equal(np.array(greedy_text.sequences), text_pred)  # text greedy
    audio = np.array(greedy_text.audio_codes)
    assert (audio[mask] != audio_pred[mask]).mean() > 0.3  # audio sampled (hot, unfiltered)

    greedy_audio = model.generate(max_new_tokens=29, depth_decoder_do_sample=False, seed=1,
                                  user_silence_codes=silence, **hot)
    text_pred, audio_pred, mask = forward_argmax(ref, greedy_audio, user)
    audio = np.array(greedy_audio.audio_codes)
    assert np.array_equal(audio[mask], audio_pred[mask])  # audio greedy
    assert (np.array(greedy_audio.sequences) != text_pred).mean() > 0.3  # text sampled


def test_sampler_parameters_reach_the_right_stream(tmp_path, monkeypatch):
    """A spy on the generator: which sampler settings drive text and audio, defaults included."""
    import moshi_mlx.api as api
    from moshi_mlx.sampling import AUDIO_DEFAULTS, TEXT_DEFAULTS, greedy

    _, ours = torch_and_ours(CONFIG, tmp_path, seed=47)
    seen = []

    class SpyGen(api.LmGen):
        def __init__(self, lm, text_sampler, audio_sampler, **kw):
            seen.append((text_sampler, audio_sampler))
            super().__init__(lm, text_sampler, audio_sampler, **kw)

    monkeypatch.setattr(api, "LmGen", SpyGen)
    settings = lambda s: "greedy" if s is greedy else (s.temp, s.top_k, s.top_p)  # noqa: E731
    model = MoshiForConditionalGeneration(ours)
    silence = [0, 0, 0, 0]
    model.generate(max_new_tokens=1, user_silence_codes=silence)
    model.generate(max_new_tokens=1, user_silence_codes=silence, temperature=0.5, top_k=7, top_p=0.9,
                   depth_decoder_temperature=0.6, depth_decoder_top_k=11, depth_decoder_top_p=0.8)
    model.generate(max_new_tokens=1, user_silence_codes=silence, do_sample=False)
    model.generate(max_new_tokens=1, user_silence_codes=silence, depth_decoder_do_sample=False)
    assert [tuple(map(settings, pair)) for pair in seen] == [
        ((TEXT_DEFAULTS["temp"], TEXT_DEFAULTS["top_k"], 1.0), (AUDIO_DEFAULTS["temp"], AUDIO_DEFAULTS["top_k"], 1.0)),
        ((0.5, 7, 0.9), (0.6, 11, 0.8)),
        ("greedy", (AUDIO_DEFAULTS["temp"], AUDIO_DEFAULTS["top_k"], 1.0)),
        ((TEXT_DEFAULTS["temp"], TEXT_DEFAULTS["top_k"], 1.0), "greedy"),
    ]
    assert (TEXT_DEFAULTS["temp"], TEXT_DEFAULTS["top_k"], AUDIO_DEFAULTS["temp"], AUDIO_DEFAULTS["top_k"]) == (
        0.7, 25, 0.8, 250)  # kmhf/hf-moshiko's generation config: top level 0.7/25, depth decoder 0.8/250


def test_causal_lm_samples_with_the_text_defaults(tmp_path):
    _, ours = torch_and_ours(CONFIG, tmp_path, seed=48)
    lm = MoshiForCausalLM(ours)
    greedy = {tuple(np.array(lm.generate(input_ids=[[1, 2, 3]], max_new_tokens=12, do_sample=False, seed=s))[0])
              for s in range(3)}
    sampled = {tuple(np.array(lm.generate(input_ids=[[1, 2, 3]], max_new_tokens=12, seed=s))[0]) for s in range(3)}
    assert len(greedy) == 1 and len(sampled) > 1  # do_sample defaults to True, as the published config says


def test_conversation_refuses_a_batch_instead_of_reading_row_0():
    from moshi_mlx.audio.conversation import Conversation
    from moshi_mlx.config import LmConfig
    from moshi_mlx.errors import InvalidArgument
    from moshi_mlx.generate import LmGen
    from moshi_mlx.models.lm import Lm

    lm = Lm(LmConfig.from_kyutai_json(CONFIG))
    with pytest.raises(InvalidArgument, match="batch_size 1, got 2"):
        Conversation(LmGen(lm, batch_size=2), ToyCodec())
    assert Conversation(LmGen(lm), ToyCodec()).frame_size == FRAME_SIZE == 1920  # Mimi's frame, from MimiConfig
