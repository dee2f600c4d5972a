"""End to end: fine-tune the tiny model on a scripted two-voice espeak-ng dialogue; the eval loss drops
clearly and greedy generation moves toward the script's words (slow: a few minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx.audio.resample import resample
from moshi_mlx.audio.wav import WavReader, WavWriter
from moshi_mlx.generate import LmGen
from moshi_mlx.sampling import make_sampler
from moshi_mlx.train.config import TrainConfig
from moshi_mlx.train.data import WindowDataset, mimi_identity
from moshi_mlx.train.finetune import finetune
from moshi_mlx.train.interleaver import Interleaver, tokenize_word
from moshi_mlx.train.loop import evaluate
from moshi_mlx.weights.pretrained import load_pretrained
from moshi_mlx.weights.tiny import make_tiny_model

pytestmark = pytest.mark.slow

SR = 24_000
MOSHI = ["Hello, I am Moshi.", "I am fine, thank you for asking.", "The sun is shining over the city."]
USER = ["How are you doing today?", "Tell me a story.", "The weather is nice."]


def speak(text: str, voice: str, tmp: Path) -> np.ndarray:
    """espeak-ng's rendering of `text` at 24 kHz mono."""
    out = tmp / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "170", "-w", str(out), text], check=True, capture_output=True)
    with WavReader(out) as r:
        pcm, rate = r.read(r.info.frames)[0], r.info.sample_rate
    return resample(pcm, rate, SR)


def dialogue(folder: Path, name: str, order: list[int], clips: dict) -> dict:
    """A stereo wav (left: Moshi, right: the user) of alternating turns, with word alignments spread
    over each utterance in proportion to the words' lengths."""
    left, right, words, t = [], [], [], 0.3
    for i in order:
        for side, text in (("moshi", MOSHI[i]), ("user", USER[(i + 1) % len(USER)])):
            pcm = clips[side, text]
            start = int(t * SR)
            (left if side == "moshi" else right).append((start, pcm))
            dur = len(pcm) / SR
            toks = text.split()
            total = sum(len(w) for w in toks)
            s = t + 0.05
            for w in toks:
                e = s + (dur - 0.1) * len(w) / total
                words.append([w, [round(s, 3), round(e, 3)], "SPEAKER_MAIN" if side == "moshi" else "SPEAKER_1"])
                s = e
            t += dur + 0.25
    n = int((t + 0.3) * SR)
    stereo = np.zeros((2, n), dtype=np.float32)
    for ch, parts in enumerate((left, right)):
        for start, pcm in parts:
            stereo[ch, start : start + len(pcm)] += pcm
    with WavWriter(folder / f"{name}.wav", SR, channels=2) as w:
        w.write(stereo)
    (folder / f"{name}.json").write_text(json.dumps({"alignments": words}))
    return {"path": f"{name}.wav", "duration": n / SR}


def greedy_text(lm, user: np.ndarray) -> list[int]:
    """Moshi's greedy text tokens while hearing the user's codes `[K, T]`."""
    gen = LmGen(lm, make_sampler(temp=0.0), make_sampler(temp=0.0))
    out = []
    for t in range(user.shape[1]):
        tokens = gen.step(mx.array(user[None, :, t]))
        if tokens is not None:
            out.append(int(tokens[0, 0]))
    return out


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_finetune_learns_a_scripted_dialogue(tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    data = tmp_path / "data"
    data.mkdir()
    clips = {("moshi", s): speak(s, "en-us", tmp_path) for s in MOSHI}
    clips |= {("user", s): speak(s, "en+f3", tmp_path) for s in USER}
    orders = [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1], [1, 0, 2]]
    train = [dialogue(data, f"d{i}", o, clips) for i, o in enumerate(orders)]
    (data / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in train))
    (data / "eval.jsonl").write_text(json.dumps(dialogue(data, "e0", [2, 1, 0], clips)) + "\n")

    cfg = TrainConfig(model=str(tiny), run_dir=str(tmp_path / "run"), duration_sec=4.0, batch_size=4, max_steps=120)
    cfg.data.train_data, cfg.data.eval_data = str(data / "train.jsonl"), str(data / "eval.jsonl")
    cfg.lora.rank, cfg.optim.lr, cfg.optim.pct_start = 32, 3e-3, 0.1
    cfg.gradient_checkpointing = False
    cfg.eval_freq = 120

    pre = load_pretrained(tiny)
    lcfg = pre.lm.cfg
    inter = Interleaver(pre.tokenizer, text_padding=lcfg.existing_text_padding_id,
                        end_of_text_padding=lcfg.existing_text_end_padding_id)  # fmt: skip
    eval_set = WindowDataset(data / "eval.jsonl", pre.mimi, inter, cfg.duration_sec, (8, 8), tmp_path / "run" / "codes",
                             mimi_identity(pre.files.mimi))  # fmt: skip
    before = evaluate(pre.lm, eval_set, cfg)
    user = np.concatenate([item[1 + lcfg.dep_q :] for item in eval_set.items], axis=1)
    user = np.where(user < 0, 0, user)
    text_before = greedy_text(pre.lm, user)

    result = finetune(cfg)
    after = result.evals[-1][1]
    print(f"eval loss {before:.3f} -> {after:.3f}; train loss {result.logs[0].loss:.3f} -> {result.logs[-1].loss:.3f}")
    assert after < 0.7 * before

    tuned = load_pretrained(tiny, adapter=result.checkpoints[-1])
    text_after = greedy_text(tuned.lm, user)
    script = {t for s in MOSHI for w in s.split() for t in tokenize_word(pre.tokenizer, w)}
    special = {lcfg.existing_text_padding_id, lcfg.existing_text_end_padding_id}
    hits_before = sum(t in script for t in text_before)
    hits_after = sum(t in script for t in text_after)
    pads_after = sum(t in special for t in text_after)
    print(f"script tokens {hits_before} -> {hits_after} of {len(text_after)}; PAD/EPAD after: {pads_after}")
    print("after:", pre.tokenizer.decode([t for t in text_after if t not in special]))
    assert hits_after > hits_before
    assert pads_after > len(text_after) // 3  # mostly silent text between words, as in the data
